"""Where an eval's items come from: sources read by URI scheme, and rows mapped to `EvalItem`s.

* `load_items(spec, resolver)` reads every split's source through a `SourceResolver` and maps rows to
  `EvalItem`s (row errors name the split and the row). Which schemes are allowed is the resolver's
  decision: the API allows `builtin://` suites and uploaded file ids only (`project_resolver`), the CLI
  also allows local paths.
* `read_builtin(uri)` generates a built-in suite (`builtin://<suite>[?seed=N&size=M]`) deterministically.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from contracts.errors import InvalidRequest
from evals.items import EvalItem
from evals.jsonl import decode_text, json_lines
from evals.spec import EvalSpec


# ------------------------------------------------------------------------------------------- sources
class SourceResolver:
    """Reads a source URI into bytes. Subclasses decide which URIs are allowed (and raise InvalidRequest
    with the given `param` for the others)."""

    def read(self, uri: str, *, param: str) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class CallableResolver(SourceResolver):
    """A resolver from a function per URI scheme (`builtin`, `file`, `path`...), chosen by `scheme_of`."""

    readers: dict[str, Callable[[str], bytes]]
    allowed_description: str = "builtin://<suite>"
    cache: dict[str, bytes] = field(default_factory=dict)

    def read(self, uri: str, *, param: str) -> bytes:
        if uri in self.cache:
            return self.cache[uri]
        reader = self.readers.get(scheme_of(uri))
        if reader is None:
            raise InvalidRequest(f"Source {uri!r} cannot be read here; allowed: {self.allowed_description}.",
                                 code="invalid_eval_spec", param=param)
        data = reader(uri)
        self.cache[uri] = data
        return data


def scheme_of(uri: str) -> str:
    """`builtin` for builtin://..., `file_id` for ftaas file ids (file-...), `file` for file://, else `path`."""
    if uri.startswith("builtin://"):
        return "builtin"
    if uri.startswith("file-") and "/" not in uri:
        return "file_id"
    if uri.startswith("file://"):
        return "file"
    if "://" in uri:
        return uri.split("://", 1)[0]
    return "path"


def read_builtin(uri: str) -> bytes:
    """`builtin://<suite>[?seed=N&size=M]` -> the suite's JSONL, generated deterministically."""
    from urllib.parse import parse_qs, urlsplit

    from evals.builtin import generate_suite
    from evals.items import dump_suite

    try:
        parts = urlsplit(uri)
    except ValueError as exc:  # e.g. "builtin://[x": an unclosed IPv6 bracket
        raise InvalidRequest(f"{uri!r} is not a valid suite URI ({exc})", code="invalid_eval_spec",
                             param="source.uri") from None
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"seed", "size"})
    if unknown:
        raise InvalidRequest(f"{uri}: unknown parameter(s) {', '.join(unknown)} (seed, size)",
                             code="invalid_eval_spec", param="source.uri")
    try:
        seed = int(query.get("seed", ["0"])[0])
        size = int(query["size"][0]) if "size" in query else None
    except ValueError:
        raise InvalidRequest(f"{uri}: seed and size must be integers", code="invalid_eval_spec",
                             param="source.uri") from None
    return dump_suite(generate_suite(parts.netloc + parts.path, seed=seed, size=size))


def project_resolver(read_project_file: Callable[[str], bytes | None]) -> CallableResolver:
    """The sources a project's request may name: built-in suites and the project's own files (never a
    server path). `read_project_file(file_id)` is the file's bytes, None when the project has no such file
    (db.files.content_reader gives one)."""

    def read_file(file_id: str) -> bytes:
        data = read_project_file(file_id)
        if data is None:
            raise InvalidRequest(f"No such file in this project: {file_id}.", code="file_not_found",
                                 param="source.uri")
        return data

    return CallableResolver({"builtin": read_builtin, "file_id": read_file},
                            allowed_description="builtin://<suite>[?seed=N&size=M] or an uploaded file id")


# ---------------------------------------------------------------------------------------- row reading
def read_rows(data: bytes, fmt: str, *, where: str) -> list[tuple[int, dict[str, Any]]]:
    """(line, row) for each row of a csv, jsonl or json (array of objects) source. Errors name the line.

    The line is where a person finds the row: a jsonl line, the line a CSV record ends on, the position
    in a json array."""
    text = decode_text(data, code="invalid_eval_source", where=where)
    if fmt == "csv":
        rows = []
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            for row in reader:
                rows.append((reader.line_num, dict(row)))
        except csv.Error as exc:
            raise InvalidRequest(f"{where}: not valid CSV ({exc})", code="invalid_eval_source", param=where) from None
        if reader.fieldnames is None:
            raise InvalidRequest(f"{where}: the CSV has no header row", code="invalid_eval_source", param=where)
        return rows
    if fmt == "jsonl":
        return list(json_lines(text, code="invalid_eval_source", where=where))
    if fmt == "json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{where}: not valid JSON (line {exc.lineno}: {exc.msg})",
                                 code="invalid_eval_source", param=where) from None
        if not isinstance(value, list) or not all(isinstance(row, dict) for row in value):
            raise InvalidRequest(f"{where}: a json source must be an array of objects", code="invalid_eval_source",
                                 param=where)
        return list(enumerate(value, start=1))
    raise InvalidRequest(f"{where}: the {fmt!r} source format is not supported here (csv, jsonl, json)",
                         code="invalid_eval_source", param=where)


def _cell(row: Mapping[str, Any], name: str | None, *, where: str) -> str | None:
    """An optional field of a row (None: no such column named, or no value)."""
    if name is None:
        return None
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, dict | list):
        raise InvalidRequest(f"{where}: field {name!r} must be text", code="invalid_eval_source", param=where)
    return str(value)


def _required_cell(row: Mapping[str, Any], name: str, *, where: str) -> str:
    """A required field of a row: present and not blank."""
    value = _cell(row, name, where=where)
    if value is None or not value.strip():
        raise InvalidRequest(f"{where}: field {name!r} is missing or empty", code="invalid_eval_source", param=where)
    return value


def _source_rows(source: Mapping[str, Any], resolver: SourceResolver, *, where: str) -> list[tuple[int, dict]]:
    data = resolver.read(source["uri"], param=f"{where}.source.uri")
    expected = source.get("sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise InvalidRequest(f"{where}: the source's SHA-256 is {hashlib.sha256(data).hexdigest()}, not the "
                             f"{expected} the spec pins", code="invalid_eval_source", param=f"{where}.source.sha256")
    numbered = read_rows(data, source["format"], where=f"{where}.source")
    selector = source.get("row_filter")
    if selector:
        wanted = str(selector["equals"])
        numbered = [(n, row) for n, row in numbered if str(row.get(selector["field"])) == wanted]
    return numbered


def load_items(spec: EvalSpec, resolver: SourceResolver) -> tuple[list[EvalItem], list[EvalItem]]:
    """Every split's items, and every control's items (variant and counts_toward `control`).

    Rows that carry a `dataset` field (suite files hold several datasets) are kept only for the dataset of
    that id. Item ids come from an `id` field, then the dataset's `fact_key_field`, then the row number;
    fact keys (which link the variants of one fact) from a `fact_key` field, then `fact_key_field`;
    a date-shifted item's trained answer is the reference of the same fact in the dataset's memorization
    split unless the row carries `trained_answer`.
    """
    # Long on purpose: datasets, splits and controls read in one pass that links their fact keys.
    items: list[EvalItem] = []
    for d_index, dataset in enumerate(spec.datasets):
        trained: dict[str, str] = {}
        pending: list[EvalItem] = []
        for s_index, split in enumerate(dataset["splits"]):
            where = f"spec.datasets.{d_index}.splits.{s_index}"
            rows = _source_rows(split["source"], resolver, where=where)
            rows = [(n, row) for n, row in rows if row.get("dataset") in (None, dataset["id"])]
            if not rows:
                raise InvalidRequest(f"{where}: the source has no rows for split {dataset['id']}/{split['id']}",
                                     code="invalid_eval_source", param=f"{where}.source")
            seen: set[str] = set()
            for number, row in rows:
                at = f"{where}: line {number}"
                key = _cell(row, dataset.get("fact_key_field"), where=at)
                item_id = _cell(row, "id", where=at) or key or str(number)
                if item_id in seen:
                    raise InvalidRequest(f"{at}: duplicate item id {item_id!r}", code="invalid_eval_source", param=at)
                seen.add(item_id)
                # A suite row's own answer type wins (one split may mix numbers and words); a CSV source's
                # rows have none and take the split's.
                answer_type = row.get("answer_type") or split.get("answer_type") or "short_text"
                item = EvalItem(
                    dataset_id=dataset["id"], setting=dataset["setting"], split_id=split["id"],
                    variant=split["variant"], counts_toward=split["counts_toward"], item_id=item_id,
                    prompt=_required_cell(row, split["prompt_field"], where=at),
                    reference=_required_cell(row, split["reference_field"], where=at),
                    reference_before=_cell(row, split.get("reference_before_field"), where=at),
                    context=_cell(row, split.get("context_field"), where=at),
                    fact_key=_cell(row, "fact_key", where=at) or key or item_id,
                    answer_type=str(answer_type),
                    trained_answer=_cell(row, "trained_answer", where=at))
                if split["role"] == "train_and_eval" and item.fact_key:
                    trained[item.fact_key] = item.reference
                pending.append(item)
        for item in pending:
            if item.variant == "date_shifted" and item.trained_answer is None and item.fact_key in trained:
                item = EvalItem(**{**item.as_dict(), "trained_answer": trained[item.fact_key]})
            items.append(item)
    controls: list[EvalItem] = []
    for c_index, control in enumerate(spec.controls):
        where = f"spec.controls.{c_index}"
        rows = _source_rows(control["source"], resolver, where=where)
        if control.get("max_items"):
            rows = rows[:control["max_items"]]
        for number, row in rows:
            at = f"{where}: line {number}"
            item_id = _cell(row, "id", where=at) or str(number)
            controls.append(EvalItem(
                dataset_id=control["id"], setting="new_knowledge", split_id=control["id"], variant="control",
                counts_toward="control", item_id=item_id,
                prompt=_required_cell(row, control["prompt_field"], where=at),
                reference=_required_cell(row, control["reference_field"], where=at),
                fact_key=item_id, answer_type=str(row.get("answer_type") or "short_text")))
    return items, controls


# --------------------------------------------------------------------------------------- suite specs
