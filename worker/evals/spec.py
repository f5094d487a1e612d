"""Eval specs: validated, versioned, and resolved into items.

An eval spec is JSON that follows `schemas/eval_spec.schema.json` (a copy of the project's reference schema,
`urn:ftservice:knowledge-eval-spec:v1`). It names datasets and their splits, where each split's rows come
from, which scorer judges each split, the decoding settings used for base and tuned model alike, and how
the headline numbers are aggregated.

* `validate_spec(document)` checks the schema and the cross-references the schema cannot express (scorer
  names, headline selectors, unique ids, scorer configurations) and raises `InvalidRequest` whose `param`
  is the dotted path of the field at fault (`spec.datasets.0.splits.1.scorer`).
* `spec_sha256(document)` is the spec's version: SHA-256 of its canonical JSON. Reports carry it.
* `load_items(spec, resolver)` reads every split's source through a `SourceResolver` and maps rows to
  `EvalItem`s (row errors name the split and the row). Sources are resolved by URI scheme; which schemes
  are allowed is the resolver's decision: the API allows `builtin://` suites and uploaded file ids only,
  the CLI also allows local paths.
* `suite_spec(...)` builds a complete spec for built-in or uploaded suite files, so that a caller can ask
  for "the fictional_people suite" without writing a spec.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from ftaas.errors import InvalidRequest
from worker.evals.items import EvalItem, parse_suite
from worker.evals.jsonl import decode_text, json_lines

SPEC_VERSION = "1.0"
MAX_NAME = 128
MAX_NEW_TOKENS = 4096
#: Decoding used when a suite spec is built for the caller (FineTuneBench: temperature 0, seed 42).
DEFAULT_GENERATION = {"temperature": 0, "max_new_tokens": 32, "seed": 42, "system_prompt": None,
                      "chat_template": "model_default"}
#: The normalisation used by the default scorers of suite specs.
DEFAULT_NORMALIZE = ["lowercase", "strip", "strip_punctuation", "collapse_whitespace", "numeric_canonical"]


@cache
def _schema(name: str) -> dict[str, Any]:
    return json.loads(resources.files("worker.evals").joinpath("schemas", name).read_text())


def spec_schema() -> dict[str, Any]:
    return _schema("eval_spec.schema.json")


def report_schema() -> dict[str, Any]:
    return _schema("eval_report.schema.json")


def _path(parts: Sequence[Any], prefix: str) -> str:
    return ".".join([prefix, *(str(p) for p in parts)]) if parts else prefix


def _schema_errors(document: Any, schema: dict[str, Any], prefix: str, code: str) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    validator = Draft202012Validator(schema)
    error = best_match(validator.iter_errors(document))
    if error is None:
        return
    # `best_match` prefers the most specific error; report where it is and what was wrong.
    where = _path(list(error.absolute_path), prefix)
    raise InvalidRequest(f"Invalid {prefix} at '{where}': {error.message}", code=code, param=where)


def validate_report(report: Mapping[str, Any]) -> None:
    """A report this code wrote must follow the report schema; a failure here is a bug, not user error."""
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(report_schema()).iter_errors(report), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        raise AssertionError(f"report does not follow its schema at {list(first.absolute_path)}: {first.message}")


def spec_sha256(document: Mapping[str, Any]) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class EvalSpec:
    """A validated spec document and its version."""

    document: dict[str, Any]
    sha256: str

    @property
    def name(self) -> str:
        return self.document["name"]

    @property
    def generation(self) -> dict[str, Any]:
        return self.document["generation"]

    @property
    def scorers(self) -> dict[str, Any]:
        return self.document["scorers"]

    @property
    def datasets(self) -> list[dict[str, Any]]:
        return self.document["datasets"]

    @property
    def controls(self) -> list[dict[str, Any]]:
        return self.document.get("controls") or []

    @property
    def baseline(self) -> dict[str, Any]:
        return self.document["baseline"]

    def headline(self, kind: str) -> dict[str, str]:
        return self.document["aggregation"]["headline"][kind]

    def confidence_level(self) -> float | None:
        interval = self.document["aggregation"].get("confidence_interval") or {"method": "wilson", "level": 0.95}
        return None if interval["method"] == "none" else float(interval["level"])

    def split_ids(self) -> set[tuple[str, str]]:
        return {(d["id"], s["id"]) for d in self.datasets for s in d["splits"]}


def validate_spec(document: Any, *, prefix: str = "spec") -> EvalSpec:
    """Schema plus cross-reference checks. `InvalidRequest.param` is the dotted path at fault."""
    code = "invalid_eval_spec"
    if not isinstance(document, dict):
        raise InvalidRequest("The eval spec must be a JSON object.", code=code, param=prefix)
    _schema_errors(document, spec_schema(), prefix, code)
    if len(document["name"]) > MAX_NAME:
        raise InvalidRequest(f"The spec name is {len(document['name'])} characters; at most {MAX_NAME}.", code=code,
                             param=f"{prefix}.name")
    generation = document["generation"]
    # The limits of the serving engine that answers (serving.schemas): refused here, not mid-run.
    for key, top in (("temperature", 2.0), ("max_new_tokens", MAX_NEW_TOKENS)):
        if key in generation and generation[key] > top:
            raise InvalidRequest(f"generation.{key} is {generation[key]}; at most {top}.", code=code,
                                 param=f"{prefix}.generation.{key}")
    if generation.get("chat_template", "model_default") != "model_default":
        raise InvalidRequest("Only the model's own chat template ('model_default') is supported.", code=code,
                             param=f"{prefix}.generation.chat_template")
    interval = document["aggregation"].get("confidence_interval")
    if interval and interval["method"] == "bootstrap":
        raise InvalidRequest("Bootstrap intervals are not implemented; use 'wilson' or 'none'.", code=code,
                             param=f"{prefix}.aggregation.confidence_interval.method")
    scorers = document["scorers"]
    dataset_ids: set[str] = set()
    for d_index, dataset in enumerate(document["datasets"]):
        where = f"{prefix}.datasets.{d_index}"
        if dataset["id"] in dataset_ids:
            raise InvalidRequest(f"Dataset id {dataset['id']!r} is used twice.", code=code, param=f"{where}.id")
        dataset_ids.add(dataset["id"])
        split_ids: set[str] = set()
        for s_index, split in enumerate(dataset["splits"]):
            at = f"{where}.splits.{s_index}"
            if split["id"] in split_ids:
                raise InvalidRequest(f"Split id {split['id']!r} is used twice in dataset {dataset['id']!r}.",
                                     code=code, param=f"{at}.id")
            split_ids.add(split["id"])
            if split["scorer"] not in scorers:
                raise InvalidRequest(f"Split {dataset['id']}/{split['id']} names scorer {split['scorer']!r}, which "
                                     f"'scorers' does not define (defined: {', '.join(sorted(scorers))}).",
                                     code=code, param=f"{at}.scorer")
    control_ids: set[str] = set()
    for c_index, control in enumerate(document.get("controls") or []):
        at = f"{prefix}.controls.{c_index}"
        if control["id"] in control_ids:
            raise InvalidRequest(f"Control id {control['id']!r} is used twice.", code=code, param=f"{at}.id")
        control_ids.add(control["id"])
        if control["scorer"] not in scorers:
            raise InvalidRequest(f"Control {control['id']!r} names scorer {control['scorer']!r}, which 'scorers' "
                                 "does not define.", code=code, param=f"{at}.scorer")
    splits = {(d["id"], s["id"]) for d in document["datasets"] for s in d["splits"]}
    for kind in ("memorization", "generalization"):
        for dataset_id, split_id in document["aggregation"]["headline"][kind].items():
            if (dataset_id, split_id) not in splits:
                raise InvalidRequest(f"The {kind} headline names {dataset_id}/{split_id}, which is not a split of "
                                     "this spec.", code=code, param=f"{prefix}.aggregation.headline.{kind}.{dataset_id}")
    from worker.evals.scoring import build_scorers

    try:
        # Configuration errors only: the judge client is not needed to check a configuration.
        build_scorers(scorers, judge=_ConfigOnlyJudge())
    except InvalidRequest as exc:
        exc.param = f"{prefix}.{exc.param}" if exc.param else f"{prefix}.scorers"
        raise
    return EvalSpec(document, spec_sha256(document))


class _ConfigOnlyJudge:
    """Stands in for a judge client while a configuration is checked; never called."""

    def complete(self, *args: Any, **kwargs: Any) -> str:  # pragma: no cover - never called
        raise AssertionError("configuration checks do not call the judge")

    def complete_many(self, *args: Any, **kwargs: Any) -> list[str]:  # pragma: no cover
        raise AssertionError("configuration checks do not call the judge")


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

    from worker.evals.builtin import generate_suite
    from worker.evals.items import dump_suite

    parts = urlsplit(uri)
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


def project_resolver(db: Any, store: Any, project_id: str, *, include_expired: bool = False) -> CallableResolver:
    """The sources a project's request may name: built-in suites and the project's own files (never a
    server path). `include_expired` lets work already accepted read files that expired since."""
    from db import files

    def read_file(file_id: str) -> bytes:
        with db.read() as session:
            row = files.get(session, project_id, file_id, include_expired=include_expired)
        if row is None:
            raise InvalidRequest(f"No such file in this project: {file_id}.", code="file_not_found",
                                 param="source.uri")
        return store.get_bytes(row.storage_key, sha256=row.sha256)

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


def _cell(row: Mapping[str, Any], name: str | None, *, where: str, required: bool) -> str | None:
    if name is None:
        return None
    value = row.get(name)
    if value is None or (isinstance(value, str) and not value.strip() and required):
        if required:
            raise InvalidRequest(f"{where}: field {name!r} is missing or empty", code="invalid_eval_source",
                                 param=where)
        return None
    if isinstance(value, dict | list):
        raise InvalidRequest(f"{where}: field {name!r} must be text", code="invalid_eval_source", param=where)
    return str(value)


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
                key = _cell(row, dataset.get("fact_key_field"), where=at, required=False)
                item_id = _cell(row, "id", where=at, required=False) or key or str(number)
                if item_id in seen:
                    raise InvalidRequest(f"{at}: duplicate item id {item_id!r}", code="invalid_eval_source", param=at)
                seen.add(item_id)
                # A suite row's own answer type wins (one split may mix numbers and words); a CSV source's
                # rows have none and take the split's.
                answer_type = row.get("answer_type") or split.get("answer_type") or "short_text"
                item = EvalItem(
                    dataset_id=dataset["id"], setting=dataset["setting"], split_id=split["id"],
                    variant=split["variant"], counts_toward=split["counts_toward"], item_id=item_id,
                    prompt=_cell(row, split["prompt_field"], where=at, required=True),  # type: ignore[arg-type]
                    reference=_cell(row, split["reference_field"], where=at, required=True),  # type: ignore[arg-type]
                    reference_before=_cell(row, split.get("reference_before_field"), where=at, required=False),
                    context=_cell(row, split.get("context_field"), where=at, required=False),
                    fact_key=_cell(row, "fact_key", where=at, required=False) or key or item_id,
                    answer_type=str(answer_type),
                    trained_answer=_cell(row, "trained_answer", where=at, required=False))
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
            item_id = _cell(row, "id", where=at, required=False) or str(number)
            controls.append(EvalItem(
                dataset_id=control["id"], setting="new_knowledge", split_id=control["id"], variant="control",
                counts_toward="control", item_id=item_id,
                prompt=_cell(row, control["prompt_field"], where=at, required=True),  # type: ignore[arg-type]
                reference=_cell(row, control["reference_field"], where=at, required=True),  # type: ignore[arg-type]
                fact_key=item_id, answer_type=str(row.get("answer_type") or "short_text")))
    return items, controls


# --------------------------------------------------------------------------------------- suite specs
def default_scorers(judge_model: str | None = None) -> dict[str, Any]:
    """The scorers a suite spec uses: exact match, Yes/No labels, abstention, and for free text either the
    LLM judge (when a judge model is named) or whole-word containment."""
    scorers: dict[str, Any] = {
        "exact": {"type": "exact_match", "normalize": DEFAULT_NORMALIZE},
        "yesno": {"type": "label_match", "labels": ["Yes", "No"],
                  "normalize": ["lowercase", "strip", "strip_punctuation"]},
        "abstain": {"type": "abstention", "abstain_tokens": ["None"],
                    "normalize": ["lowercase", "strip", "strip_punctuation", "collapse_whitespace"]},
        "contains": {"type": "contains", "normalize": DEFAULT_NORMALIZE},
    }
    if judge_model:
        scorers["judge"] = {"type": "llm_judge", "judge_model": judge_model, "judge_prompt_id": "ftaas.short_answer.v1",
                            "verdict_map": {"Correct": True, "Incorrect": False}, "judge_temperature": 0,
                            "fallback": "exact"}
    return scorers


def _scorer_for(answer_types: set[str], *, judge: bool) -> str:
    """The scorer of a split holding items of these answer types."""
    if answer_types == {"yes_no"}:
        return "yesno"
    if answer_types == {"abstain"}:
        return "abstain"
    if "free_text" in answer_types:
        return "judge" if judge else "contains"
    # Short answers go to the judge when one is asked for (as FineTuneBench scored them); a split of numbers
    # alone never does. Mixed splits are scored by exact match, which also accepts a plain "Yes" or "None".
    return "judge" if judge and "short_text" in answer_types else "exact"


def suite_spec(sources: Sequence[tuple[str, Sequence[EvalItem]]], *, name: str = "suites",
               generation: Mapping[str, Any] | None = None, judge_model: str | None = None,
               description: str | None = None) -> dict[str, Any]:
    """A complete spec over suite files: `sources` pairs each suite URI with its parsed items.

    Datasets and splits follow the items; each split reads its rows from the suite URI filtered on `split`
    (and on `dataset` by `load_items`' convention). Control items become controls. Headlines: per dataset,
    the first memorization split and the first generalization split.
    """
    datasets: dict[str, dict[str, Any]] = {}
    controls: list[dict[str, Any]] = []
    memorization: dict[str, str] = {}
    generalization: dict[str, str] = {}
    answer_types: dict[tuple[str, str], set[str]] = {}
    for uri, items in sources:
        for item in items:
            if item.counts_toward == "control":
                if not any(c["id"] == item.split_id for c in controls):
                    controls.append({"id": item.split_id, "description": "forgetting probes, never trained on",
                                     "source": {"uri": uri, "format": "jsonl",
                                                "row_filter": {"field": "split", "equals": item.split_id}},
                                     "prompt_field": "prompt", "reference_field": "reference",
                                     "scorer": _scorer_for({item.answer_type}, judge=bool(judge_model))})
                continue
            dataset = datasets.setdefault(item.dataset_id, {"id": item.dataset_id, "setting": item.setting,
                                                            "fact_key_field": "fact_key", "splits": []})
            types = answer_types.setdefault((item.dataset_id, item.split_id), set())
            types.add(item.answer_type)
            if any(s["id"] == item.split_id for s in dataset["splits"]):
                continue
            split: dict[str, Any] = {
                "id": item.split_id,
                "role": "train_and_eval" if item.counts_toward == "memorization" else "eval_only",
                "variant": item.variant,
                "source": {"uri": uri, "format": "jsonl", "row_filter": {"field": "split", "equals": item.split_id}},
                "prompt_field": "prompt", "reference_field": "reference", "context_field": "context",
                "expected_behavior": "abstain" if item.answer_type == "abstain" else "answer",
                "scorer": "",  # chosen below, once every item of the split was seen
                "counts_toward": item.counts_toward,
            }
            if item.reference_before is not None:
                split["reference_before_field"] = "reference_before"
            dataset["splits"].append(split)
            if item.counts_toward == "memorization":
                memorization.setdefault(item.dataset_id, item.split_id)
            elif item.counts_toward == "generalization":
                generalization.setdefault(item.dataset_id, item.split_id)
    if not datasets:
        raise InvalidRequest("The suites hold no dataset items (only controls); add a suite with questions.",
                             code="invalid_eval_spec", param="suites")
    for dataset in datasets.values():
        for split in dataset["splits"]:
            types = answer_types[(dataset["id"], split["id"])]
            split["scorer"] = _scorer_for(types, judge=bool(judge_model))
            if len(types) == 1:  # else each item keeps its own (load_items reads it from the row)
                split["answer_type"] = next(iter(types))
    headline = {"memorization": memorization or {}, "generalization": generalization or {}}
    for kind in ("memorization", "generalization"):
        if not headline[kind]:
            # The schema needs at least one selector: fall back to the first split of the first dataset.
            first = next(iter(datasets.values()))
            headline[kind] = {first["id"]: first["splits"][0]["id"]}
    document: dict[str, Any] = {
        "spec_version": SPEC_VERSION,
        "name": name,
        "description": description or "Generated by ftaas from suite files.",
        "generation": dict(generation or DEFAULT_GENERATION),
        "datasets": list(datasets.values()),
        "scorers": default_scorers(judge_model),
        "baseline": {"evaluate_base_model": True, "require_base_knows_before_answer": True,
                     "exclude_items_base_already_knows": True},
        "aggregation": {"headline": headline, "group_by_setting": True,
                        "confidence_interval": {"method": "wilson", "level": 0.95}},
    }
    if controls:
        document["controls"] = controls
    return document


def parse_suite_source(uri: str, data: bytes) -> list[EvalItem]:
    """A suite file's items; a bad line is reported with the URI and the line."""
    try:
        return parse_suite(data)
    except InvalidRequest as exc:
        exc.message = f"{uri}: {exc.message}"
        raise


# ------------------------------------------------------------------------------ requests -> a spec
def suite_uri(reference: str) -> str:
    """`fictional_people`, `builtin:fictional_people?size=8`, `builtin://...` or an uploaded file id -> URI."""
    if reference.startswith("builtin://") or scheme_of(reference) == "file_id":
        return reference
    return "builtin://" + reference.removeprefix("builtin:")


def spec_for_request(*, spec: Mapping[str, Any] | None, suites: Sequence[str] | None, judge_model: str | None,
                     max_new_tokens: int | None, resolver: SourceResolver) -> tuple[EvalSpec, int]:
    """The validated spec an API or CLI request asks for, with its sources read and checked.

    Exactly one of `spec` (a whole spec document) and `suites` (suite references, from which `suite_spec`
    builds the spec) must be given. Returns the spec and its number of questions. Every problem is an
    `InvalidRequest` naming the field, the suite line or the source row at fault.
    """
    if (spec is None) == (not suites):
        raise InvalidRequest("Give either 'spec' (an eval spec document) or 'suites' (suite names or file ids).",
                             code="invalid_eval_spec", param="spec")
    if spec is not None:
        if judge_model is not None or max_new_tokens is not None:
            raise InvalidRequest("'judge_model' and 'max_new_tokens' apply to 'suites'; a spec sets its own "
                                 "scorers and generation.", code="invalid_eval_spec", param="judge_model")
        validated = validate_spec(dict(spec))
    else:
        sources = []
        for index, reference in enumerate(suites or []):
            uri = suite_uri(reference)
            try:
                data = resolver.read(uri, param=f"suites.{index}")
            except InvalidRequest as exc:
                exc.param = exc.param if exc.param and exc.param.startswith("suites") else f"suites.{index}"
                raise
            try:
                sources.append((uri, parse_suite(data)))
            except InvalidRequest as exc:
                exc.message = f"suites.{index} ({reference}): {exc.message}"
                exc.param = f"suites.{index}: {exc.param}" if exc.param else f"suites.{index}"
                raise
        generation = dict(DEFAULT_GENERATION)
        if max_new_tokens is not None:
            generation["max_new_tokens"] = max_new_tokens
        names = "-".join(sorted({item.dataset_id for _, items in sources for item in items}))[:100] or "suites"
        validated = validate_spec(suite_spec(sources, name=names.lower(), generation=generation,
                                             judge_model=judge_model))
    items, controls = load_items(validated, resolver)
    return validated, len(items) + len(controls)
