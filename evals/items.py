"""The canonical eval item, and the suite JSONL format every source is turned into.

A *suite file* is JSONL, one item per line, every line self-describing:

    {"dataset": "fictional_people", "setting": "new_knowledge", "split": "rephrased", "variant": "rephrased",
     "counts_toward": "generalization", "id": "fp-0003-weight-r", "fact_key": "fp-0003-weight",
     "prompt": "...", "reference": "126", "reference_before": null, "context": "...",
     "answer_type": "short_text", "trained_answer": null}

Required: dataset, setting, split, variant, counts_toward, id, prompt, reference. `variant` takes the spec
schema's names; the short names of the issue tracker (inference, comparison, vignette) are accepted as
aliases. Control items (forgetting probes, never trained on) have variant and counts_toward `control`.
`trained_answer` is the answer that was trained for the same fact; date-shifted items use it to measure
how often the model recites the trained answer for an event that never happened.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from contracts.errors import InvalidRequest
from evals.jsonl import decode_text, json_lines

SETTINGS = ("new_knowledge", "updated_knowledge")
VARIANTS = ("original", "rephrased", "date_shifted", "single_hop_inference", "multi_entity_comparison",
            "applied_vignette", "control", "other")
VARIANT_ALIASES = {"inference": "single_hop_inference", "comparison": "multi_entity_comparison",
                   "vignette": "applied_vignette"}
COUNTS_TOWARD = ("memorization", "generalization", "auxiliary", "control")
ANSWER_TYPES = ("short_text", "number", "yes_no", "free_text", "abstain")
REQUIRED = ("dataset", "setting", "split", "variant", "counts_toward", "id", "prompt", "reference")
OPTIONAL = ("fact_key", "reference_before", "context", "answer_type", "trained_answer")


@dataclass(frozen=True)
class EvalItem:
    """One question asked of the base and the tuned model."""

    dataset_id: str
    setting: str
    split_id: str
    variant: str
    counts_toward: str
    item_id: str
    prompt: str
    reference: str
    reference_before: str | None = None
    context: str | None = None
    fact_key: str | None = None
    answer_type: str = "short_text"
    trained_answer: str | None = None

    def to_suite_line(self) -> dict:
        return {"dataset": self.dataset_id, "setting": self.setting, "split": self.split_id,
                "variant": self.variant, "counts_toward": self.counts_toward, "id": self.item_id,
                "fact_key": self.fact_key, "prompt": self.prompt, "reference": self.reference,
                "reference_before": self.reference_before, "context": self.context,
                "answer_type": self.answer_type, "trained_answer": self.trained_answer}

    def as_dict(self) -> dict:
        return asdict(self)


def _text(value: object, *, line: int, field: str) -> str | None:
    """An optional text field: None when absent; numbers are taken as their text."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidRequest(f"line {line}: '{field}' must be a string", code="invalid_suite_file",
                             param=f"line {line}: {field}")
    return str(value)


def _required_text(value: object, *, line: int, field: str) -> str:
    """A required text field: present and not blank."""
    text = _text(value, line=line, field=field)
    if text is None:
        raise InvalidRequest(f"line {line}: '{field}' is required", code="invalid_suite_file",
                             param=f"line {line}: {field}")
    if not text.strip():
        raise InvalidRequest(f"line {line}: '{field}' must not be empty", code="invalid_suite_file",
                             param=f"line {line}: {field}")
    return text


def item_from_suite_line(data: object, *, line: int) -> EvalItem:
    """One parsed suite line -> EvalItem. Raises InvalidRequest naming the line and field at fault."""
    if not isinstance(data, dict):
        raise InvalidRequest(f"line {line}: each line must be a JSON object", code="invalid_suite_file",
                             param=f"line {line}")
    unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise InvalidRequest(f"line {line}: unknown field(s) {', '.join(unknown)}", code="invalid_suite_file",
                             param=f"line {line}: {unknown[0]}")
    values = {f: _required_text(data.get(f), line=line, field=f) for f in REQUIRED}
    optional = {f: _text(data.get(f), line=line, field=f) for f in OPTIONAL}
    variant = VARIANT_ALIASES.get(values["variant"], values["variant"])
    checks = (("setting", values["setting"], SETTINGS), ("variant", variant, VARIANTS),
              ("counts_toward", values["counts_toward"], COUNTS_TOWARD),
              ("answer_type", optional["answer_type"] or "short_text", ANSWER_TYPES))
    for field, value, allowed in checks:
        if value not in allowed:
            raise InvalidRequest(f"line {line}: '{field}' is {value!r}; expected one of {', '.join(allowed)}",
                                 code="invalid_suite_file", param=f"line {line}: {field}")
    if (variant == "control") != (values["counts_toward"] == "control"):
        raise InvalidRequest(f"line {line}: control items have variant and counts_toward 'control' together",
                             code="invalid_suite_file", param=f"line {line}: counts_toward")
    return EvalItem(
        dataset_id=values["dataset"], setting=values["setting"], split_id=values["split"],
        variant=variant, counts_toward=values["counts_toward"], item_id=values["id"],
        prompt=values["prompt"], reference=values["reference"],
        reference_before=optional["reference_before"], context=optional["context"],
        fact_key=optional["fact_key"], answer_type=optional["answer_type"] or "short_text",
        trained_answer=optional["trained_answer"])


def parse_suite(data: bytes | str) -> list[EvalItem]:
    """A whole suite file. Errors name the first bad line (1-based); ids must be unique per split."""
    text = decode_text(data, code="invalid_suite_file") if isinstance(data, bytes) else data
    items: list[EvalItem] = []
    seen: set[tuple[str, str, str]] = set()
    for number, parsed in json_lines(text, code="invalid_suite_file", objects_only=False):
        item = item_from_suite_line(parsed, line=number)
        key = (item.dataset_id, item.split_id, item.item_id)
        if key in seen:
            raise InvalidRequest(f"line {number}: duplicate id {item.item_id!r} in split {item.split_id!r}",
                                 code="invalid_suite_file", param=f"line {number}: id")
        seen.add(key)
        items.append(item)
    if not items:
        raise InvalidRequest("the suite file holds no items", code="invalid_suite_file")
    return items


def dump_suite(items: Iterable[EvalItem]) -> bytes:
    """Items -> suite JSONL bytes (stable key order, one item per line)."""
    return "".join(json.dumps(item.to_suite_line(), ensure_ascii=False) + "\n" for item in items).encode()
