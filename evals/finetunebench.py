"""Importer for the FineTuneBench CSV layout: a user's own copy of the upstream files -> canonical EvalItems.

The project never ships FineTuneBench data (it has no license); this module only reads files the operator
points it at. Layout: `<root>/datasets/<dataset>/<dataset>_<split>.csv` (also accepted: `<root>/<dataset>/...`
or the CSVs directly in `<root>`).

Mapping (dataset -> setting; file split -> split id, variant, counts_toward, answer_type):

* `latest_news` (new_knowledge). Only rows with `used_in_analysis == "True"` are kept (the paper's 50),
  unless `used_only=False`. memorization -> memorization/original/memorization; rephrased ->
  rephrased/rephrased/generalization; date_changed -> date_changed/date_shifted/auxiliary, answer_type
  abstain, `trained_answer` = the memorization answer with the same id. context = `fact`.
* `fictional_people` (new_knowledge). memorization (original, memorization), rephrased (generalization),
  secondary (single_hop_inference, auxiliary, yes_no), comparison (multi_entity_comparison, auxiliary,
  yes_no). Rows are keyed `<person id>-<attribute>`, the attribute read from the fact sentence (weight,
  height, age, occupation, colour, city). Secondary labels are kept as published (they agree with the
  facts). Comparison labels are NOT trusted: each is recomputed from the profile facts (weights, heights and
  ages parsed from the memorization file's `fact` sentences; without that file only the weights in the row's
  own `fact` are available), its context becomes the two fact sentences it follows from, and a changed label
  gets an `ImportNote(action="relabelled")`. Dropped with a note: comparisons of a person with themself, ties,
  people or relations that cannot be resolved, and the "alphabetically first" items. Those are ambiguous
  upstream (the question names two people, the id names a city or colour, and the published labels agree
  with neither reading), so by default they are dropped; `alphabetical="names"` keeps them instead, labelled
  by comparing the two first names as written in the question (case-insensitive), which tests no learned
  fact.
* `medical` (updated_knowledge). memorization -> memorization/original/memorization, free_text,
  reference_before = `answer_before`, context = `updated_fact_description`; generalization -> vignette/
  applied_vignette/generalization, free_text, reference_before = `answer_before`, context = the memorization
  row's `updated_fact_description` with the same id.
* `coding` (updated_knowledge). generalization -> generalization/rephrased/generalization, short_text,
  reference_before = `answer_before`. The memorization (training) file is not imported, whether missing or
  present (its layout and its id alignment with the generalization file are unknown); a warning says so,
  and nothing from this dataset can be trained on.

Guarantees: prompts and answers are byte-exact copies of the cells (no stripping; comparison answers are
recomputed, see above); `article_text` (and any other column not named above) is never copied into an item,
so the upstream files with article bodies import the same as the internal copy without them; multi-line and
very long cells are read with a real CSV parser. A missing required column raises InvalidRequest naming the
file and the column.

Reporting: `import_finetunebench` returns an `ImportResult`, a dict (dataset id -> items of all its
splits, memorization first) that also carries `warnings` (one line per skipped file or summary) and `notes`
(one `ImportNote` per dropped, relabelled or otherwise adjusted item). `import_csv` appends to a `notes`
list when given one.

One file on purpose: FineTuneBench's data layout, its splits and its scoring are one
protocol; splitting them would scatter the mapping from the paper's files to ftaas' eval spec.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from contracts.errors import InvalidRequest
from evals.items import EvalItem

SETTINGS: dict[str, str] = {"latest_news": "new_knowledge", "fictional_people": "new_knowledge",
                            "medical": "updated_knowledge", "coding": "updated_knowledge"}


@dataclass(frozen=True)
class _SplitSpec:
    file_split: str  # the <split> of <dataset>_<split>.csv
    split_id: str
    variant: str
    counts_toward: str
    answer_type: str
    required: tuple[str, ...]
    reference_before: str | None = None
    context: str | None = None


_QA = ("id", "prompt", "answer")
_SPLITS: dict[str, tuple[_SplitSpec, ...]] = {
    "latest_news": (
        _SplitSpec("memorization", "memorization", "original", "memorization", "short_text", _QA, context="fact"),
        _SplitSpec("rephrased", "rephrased", "rephrased", "generalization", "short_text", _QA, context="fact"),
        _SplitSpec("date_changed", "date_changed", "date_shifted", "auxiliary", "abstain", _QA, context="fact"),
    ),
    "fictional_people": (
        _SplitSpec("memorization", "memorization", "original", "memorization", "short_text", (*_QA, "fact"),
                   context="fact"),
        _SplitSpec("rephrased", "rephrased", "rephrased", "generalization", "short_text", (*_QA, "fact"),
                   context="fact"),
        _SplitSpec("secondary", "secondary", "single_hop_inference", "auxiliary", "yes_no", (*_QA, "fact"),
                   context="fact"),
        _SplitSpec("comparison", "comparison", "multi_entity_comparison", "auxiliary", "yes_no", _QA,
                   context="fact"),
    ),
    "medical": (
        _SplitSpec("memorization", "memorization", "original", "memorization", "free_text",
                   (*_QA, "answer_before"), reference_before="answer_before", context="updated_fact_description"),
        _SplitSpec("generalization", "vignette", "applied_vignette", "generalization", "free_text",
                   (*_QA, "answer_before"), reference_before="answer_before"),
    ),
    "coding": (
        _SplitSpec("generalization", "generalization", "rephrased", "generalization", "short_text",
                   (*_QA, "answer_before"), reference_before="answer_before"),
    ),
}
_CODING_MEMORIZATION = "coding_memorization.csv"
_NUMERIC_ATTRIBUTES = ("weight", "height", "age")

# Fact sentences of the fictional-people files -> (attribute, full name, value).
_FACT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("weight", re.compile(r"^(?P<name>.+?) weighs (?P<value>\d+) pounds\.?$")),
    ("height", re.compile(r"^(?P<name>.+?) is (?P<value>\d+) cm tall\.?$")),
    ("age", re.compile(r"^(?P<name>.+?) is (?P<value>\d+) years old\.?$")),
    ("occupation", re.compile(r"^(?P<name>.+?) works as an? (?P<value>.+?)\.?$")),
    ("colour", re.compile(r"^(?P<name>.+?)'s favou?rite colou?r is (?P<value>.+?)\.?$")),
    ("city", re.compile(r"^(?P<name>.+?) lives in (?P<value>.+?)\.?$")),
)
# relation word -> (attribute, True when "A <word> than B" means A's value is larger)
_RELATIONS: dict[str, tuple[str, bool]] = {
    "taller": ("height", True), "shorter": ("height", False), "older": ("age", True),
    "younger": ("age", False), "heavier": ("weight", True), "lighter": ("weight", False),
    "alphabetically first": ("name", False),
}
_COMPARISON = re.compile(r"^Is (?P<a>.+?) (?P<rel>" + "|".join(_RELATIONS) + r") than (?P<b>.+?)\?\s*$")


@dataclass(frozen=True)
class ImportNote:
    """One item the importer dropped or changed, and why.

    action: "dropped" (not imported), "relabelled" (comparison label recomputed from the facts),
    "renamed" (duplicate id given a suffix), "keyed_by_position" (fact sentence did not parse),
    "no_trained_answer" (date_changed row without a memorization row of the same id).
    """

    dataset_id: str
    split_id: str
    item_id: str
    action: str
    detail: str


class ImportResult(dict[str, list[EvalItem]]):
    """dataset id -> items (all splits), plus what was skipped (`warnings`) and per-item `notes`."""

    def __init__(self) -> None:
        super().__init__()
        self.warnings: list[str] = []
        self.notes: list[ImportNote] = []


def _spec(dataset: str, split: str) -> _SplitSpec:
    if dataset not in _SPLITS:
        raise InvalidRequest(f"unknown FineTuneBench dataset {dataset!r}; expected one of {', '.join(_SPLITS)}",
                             param="dataset")
    for spec in _SPLITS[dataset]:
        if split in (spec.file_split, spec.split_id):
            return spec
    known = ", ".join(spec.file_split for spec in _SPLITS[dataset])
    raise InvalidRequest(f"unknown split {split!r} of FineTuneBench dataset {dataset!r}; expected one of {known}",
                         param="split")


def _rows(data: bytes, *, source: str, required: Sequence[str]) -> list[dict[str, str]]:
    """Parse CSV bytes into dicts of the required and optional columns. Multi-line and huge cells are fine."""
    # Upstream news files carry whole articles in one cell; the default limit (128 KiB) is too small for them.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})",
                             code="invalid_file", param=source) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames
        if not header:
            raise InvalidRequest(f"{source}: the file is empty (no header row)", code="invalid_file", param=source)
        for column in required:
            if column not in header:
                raise InvalidRequest(f"{source}: required column {column!r} is missing",
                                     code="invalid_file", param=f"{source}: {column}")
        rows = []
        for row in reader:
            missing = [column for column in required if row.get(column) is None]
            if missing:
                raise InvalidRequest(f"{source}: the record ending on line {reader.line_num} has no "
                                     f"{missing[0]!r} cell", code="invalid_file", param=f"{source}: {missing[0]}")
            rows.append(row)
    except csv.Error as exc:
        raise InvalidRequest(f"{source}: not a readable CSV file (line {reader.line_num}: {exc})",
                             code="invalid_file", param=source) from None
    return rows


def _parse_fact(sentence: str) -> tuple[str, str, str] | None:
    """(attribute, full name, value) of one fictional-people fact sentence, or None."""
    for attribute, pattern in _FACT_PATTERNS:
        match = pattern.match(sentence.strip())
        if match:
            return attribute, match["name"], match["value"]
    return None


def _sentences(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"(?<=\.)\s+", text.strip()) if part.strip()]


@dataclass(frozen=True)
class _Fact:
    person: str  # the person id
    attribute: str
    name: str  # full name
    value: str
    sentence: str


def _profiles(memorization: Sequence[EvalItem]) -> dict[str, dict[str, _Fact]]:
    """first name -> {attribute: fact}, from imported fictional-people memorization items."""
    by_first: dict[str, dict[str, _Fact]] = {}
    owners: dict[str, set[str]] = {}
    for item in memorization:
        parsed = _parse_fact(item.context or "")
        if parsed is None or not item.fact_key:
            continue
        attribute, name, value = parsed
        person = item.fact_key.rsplit("-", 1)[0]
        first = name.split()[0]
        owners.setdefault(first, set()).add(person)
        by_first.setdefault(first, {})[attribute] = _Fact(person, attribute, name, value, item.context or "")
    # A first name shared by two people cannot resolve a comparison question: leave it out.
    return {first: facts for first, facts in by_first.items() if len(owners[first]) == 1}


def _row_weights(fact_cell: str) -> dict[str, dict[str, _Fact]]:
    """Fallback profiles from a comparison row's own `fact` cell (upstream it lists the two weights only)."""
    profiles: dict[str, dict[str, _Fact]] = {}
    for sentence in _sentences(fact_cell):
        parsed = _parse_fact(sentence)
        if parsed is not None:
            attribute, name, value = parsed
            profiles.setdefault(name.split()[0], {})[attribute] = _Fact(name, attribute, name, value, sentence)
    return profiles


def _comparison_item(row: dict[str, str], base: dict, *, profiles: dict[str, dict[str, _Fact]] | None,
                     alphabetical: str, drop: list[str]) -> EvalItem | None:
    """One comparison row with its label recomputed from the facts, or None (reason appended to `drop`)."""
    prompt = row["prompt"]
    question = row.get("question") or prompt.rsplit("\n", 1)[-1]
    match = _COMPARISON.match(question.strip())
    if match is None:
        drop.append("the question is not of the form 'Is A <comparison> than B?'")
        return None
    first_a, relation, first_b = match["a"], match["rel"], match["b"]
    attribute, larger = _RELATIONS[relation]
    if first_a == first_b:
        drop.append("compares a person with themself")
        return None
    if attribute == "name":
        if alphabetical != "names":
            drop.append("'alphabetically first' is ambiguous upstream (names, city or colour?)")
            return None
        if first_a.lower() == first_b.lower():
            drop.append("the two names tie alphabetically")
            return None
        return EvalItem(**base, reference="Yes" if first_a.lower() < first_b.lower() else "No",
                        fact_key=None, context=None)
    sources = profiles if profiles is not None else _row_weights(row.get("fact") or "")
    fact_a = sources.get(first_a, {}).get(attribute)
    fact_b = sources.get(first_b, {}).get(attribute)
    if fact_a is None or fact_b is None:
        where = "the profile facts" if profiles is not None else "the row's fact (the memorization file is needed)"
        drop.append(f"no {attribute} for {'both people' if fact_a is None and fact_b is None else 'one person'} "
                    f"in {where}")
        return None
    value_a, value_b = int(fact_a.value), int(fact_b.value)
    if value_a == value_b:
        drop.append(f"the two {attribute} values tie")
        return None
    label = (value_a > value_b) if larger else (value_a < value_b)
    return EvalItem(**base, reference="Yes" if label else "No",
                    fact_key=f"{fact_a.person}-{attribute}+{fact_b.person}-{attribute}",
                    context=f"{fact_a.sentence} {fact_b.sentence}")


def import_csv(data: bytes, *, dataset: str, split: str, source: str | None = None, used_only: bool = True,
               memorization: Sequence[EvalItem] | None = None,
               alphabetical: Literal["drop", "names"] = "drop",
               notes: list[ImportNote] | None = None) -> list[EvalItem]:
    """One FineTuneBench CSV file -> canonical EvalItems, in file order.

    `split` is the file's split (`date_changed`, `generalization`, ...) or the canonical split id.
    `memorization` are the items already imported from the same dataset's memorization file: they supply
    news `trained_answer`s, the medical vignette context and the fictional-people profile facts that the
    comparison labels are recomputed from. `used_only` applies the news `used_in_analysis == "True"` filter.
    Dropped or relabelled items are appended to `notes` when it is given. `source` names the file in errors.
    """
    # Long on purpose: one CSV row's way to an item, every upstream quirk it meets in order.
    spec = _spec(dataset, split)
    source = source or f"{dataset}_{spec.file_split}.csv"
    filtered = dataset == "latest_news" and used_only
    rows = _rows(data, source=source, required=(*spec.required, *(("used_in_analysis",) if filtered else ())))
    collected = notes if notes is not None else []
    by_key = {item.fact_key: item for item in memorization or ()}
    profiles = _profiles(memorization) if memorization else None
    items: list[EvalItem] = []
    seen: set[str] = set()

    def note(item_id: str, action: str, detail: str) -> None:
        collected.append(ImportNote(dataset, spec.split_id, item_id, action, detail))

    for row in rows:
        if filtered and row["used_in_analysis"] != "True":
            continue
        row_id, prompt, answer = row["id"], row["prompt"], row["answer"]
        if not row_id.strip() or not prompt.strip() or not answer.strip():
            note(row_id or "?", "dropped", "empty id, prompt or answer")
            continue
        context = (row.get(spec.context) or None) if spec.context else None
        before = (row.get(spec.reference_before) or None) if spec.reference_before else None
        fact_key, item_id, answer_type, trained = row_id, row_id, spec.answer_type, None
        if dataset == "fictional_people" and spec.split_id != "comparison":
            parsed = _parse_fact(row["fact"])
            attribute = parsed[0] if parsed else f"fact{sum(key.startswith(row_id + '-') for key in seen) + 1}"
            if parsed is None:
                note(row_id, "keyed_by_position", "the fact sentence did not parse; keyed by its position")
            fact_key = item_id = f"{row_id}-{attribute}"
            if spec.split_id != "secondary" and attribute in _NUMERIC_ATTRIBUTES:
                answer_type = "number"
        elif dataset == "latest_news" and spec.split_id == "date_changed":
            trained_item = by_key.get(row_id)
            trained = trained_item.reference if trained_item else None
            if trained_item is None:
                note(row_id, "no_trained_answer", "no memorization item with this id")
        elif dataset == "medical" and spec.split_id == "vignette":
            context = by_key[row_id].context if row_id in by_key else None
        if item_id in seen:  # keep every row: a repeated id gets a suffix rather than silently overwriting
            suffix = 2
            while f"{item_id}-{suffix}" in seen:
                suffix += 1
            note(item_id, "renamed", f"duplicate id; imported as {item_id}-{suffix}")
            item_id = f"{item_id}-{suffix}"
        base: dict[str, Any] = {"dataset_id": dataset, "setting": SETTINGS[dataset], "split_id": spec.split_id,
                                "variant": spec.variant, "counts_toward": spec.counts_toward, "item_id": item_id,
                                "prompt": prompt, "reference_before": before, "answer_type": answer_type}
        if dataset == "fictional_people" and spec.split_id == "comparison":
            reasons: list[str] = []
            item = _comparison_item(row, base, profiles=profiles, alphabetical=alphabetical, drop=reasons)
            if item is None:
                note(item_id, "dropped", reasons[0])
                continue
            if item.reference != answer:
                note(item_id, "relabelled", f"published label {answer!r} contradicts the facts; now "
                                            f"{item.reference!r}")
        else:
            item = EvalItem(**base, reference=answer, context=context, fact_key=fact_key, trained_answer=trained)
        seen.add(item_id)
        items.append(item)
    return items


def _locate(root: Path, dataset: str, filename: str) -> Path | None:
    for candidate in (root / "datasets" / dataset / filename, root / dataset / filename, root / filename):
        if candidate.is_file():
            return candidate
    return None


def import_finetunebench(directory: Path, *, datasets: Sequence[str] | None = None, used_only: bool = True,
                         alphabetical: Literal["drop", "names"] = "drop") -> ImportResult:
    """Import every available split of the chosen datasets (default: all four) from a FineTuneBench copy.

    Missing files are skipped with a line in `warnings`; a dataset with no file at all is left out of the
    result. Raises InvalidRequest (param "directory") when `directory` is not a directory or holds none of
    the requested files, (param "datasets") for an unknown dataset id, and the `import_csv` errors.
    """
    root = Path(directory)
    if not root.is_dir():
        raise InvalidRequest(f"FineTuneBench directory {str(root)!r} does not exist", param="directory")
    chosen = list(datasets) if datasets is not None else list(_SPLITS)
    unknown = [name for name in chosen if name not in _SPLITS]
    if unknown:
        raise InvalidRequest(f"unknown FineTuneBench dataset(s) {', '.join(map(repr, unknown))}; expected "
                             f"{', '.join(_SPLITS)}", param="datasets")
    result = ImportResult()
    for dataset in dict.fromkeys(chosen):  # ordered de-duplication
        items: list[EvalItem] = []
        memorization: list[EvalItem] | None = None
        for spec in _SPLITS[dataset]:
            filename = f"{dataset}_{spec.file_split}.csv"
            path = _locate(root, dataset, filename)
            if path is None:
                result.warnings.append(f"{dataset}: {filename} not found; split {spec.split_id!r} skipped")
                continue
            split_notes: list[ImportNote] = []
            split_items = import_csv(path.read_bytes(), dataset=dataset, split=spec.file_split, source=filename,
                                     used_only=used_only, memorization=memorization, alphabetical=alphabetical,
                                     notes=split_notes)
            if spec.split_id == "memorization":
                memorization = split_items
            elif memorization is None and spec.split_id in ("date_changed", "vignette", "comparison"):
                result.warnings.append(f"{dataset}/{spec.split_id}: imported without the memorization file, "
                                       "so what it supplies (trained answers, contexts, profile facts) is missing")
            result.notes.extend(split_notes)
            for action in sorted({n.action for n in split_notes}):
                count = sum(n.action == action for n in split_notes)
                result.warnings.append(f"{dataset}/{spec.split_id}: {count} item(s) {action} (see notes)")
            items.extend(split_items)
        if dataset == "coding":
            state = ("is present but not imported (its layout and id alignment with the generalization file "
                     "are unknown)" if _locate(root, dataset, _CODING_MEMORIZATION) else "is not available")
            result.warnings.append(f"coding: {_CODING_MEMORIZATION} {state}; only the generalization split is "
                                   "imported, so this dataset has nothing to train on")
        if items:
            result[dataset] = items
        else:
            result.warnings.append(f"{dataset}: no file found; dataset skipped")
    if not result:
        raise InvalidRequest(f"no FineTuneBench CSV of {', '.join(dict.fromkeys(chosen))} found under "
                             f"{str(root)!r}", param="directory")
    return result
