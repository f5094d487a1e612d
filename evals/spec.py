"""Eval specs: validated, versioned, and resolved into items.

An eval spec is JSON that follows `schemas/eval_spec.schema.json` (a copy of the project's reference schema,
`urn:ftservice:knowledge-eval-spec:v1`). It names datasets and their splits, where each split's rows come
from, which scorer judges each split, the decoding settings used for base and tuned model alike, and how
the headline numbers are aggregated.

* `validate_spec(document)` checks the schema and the cross-references the schema cannot express (scorer
  names, headline selectors, unique ids, scorer configurations) and raises `InvalidRequest` whose `param`
  is the dotted path of the field at fault (`spec.datasets.0.splits.1.scorer`).
* `spec_sha256(document)` is the spec's version: SHA-256 of its canonical JSON. Reports carry it.
* Items are read from the spec's sources by `evals.sources.load_items`.
* `suite_spec(...)` builds a complete spec for built-in or uploaded suite files, so that a caller can ask
  for "the fictional_people suite" without writing a spec.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from contracts.errors import InvalidRequest
from evals.items import EvalItem

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
    return json.loads(resources.files("evals").joinpath("schemas", name).read_text())


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
    # Long on purpose: the checks the JSON schema cannot state, one after another.
    code = "invalid_eval_spec"
    if not isinstance(document, dict):
        raise InvalidRequest("The eval spec must be a JSON object.", code=code, param=prefix)
    _schema_errors(document, spec_schema(), prefix, code)
    if len(document["name"]) > MAX_NAME:
        raise InvalidRequest(f"The spec name is {len(document['name'])} characters; at most {MAX_NAME}.", code=code,
                             param=f"{prefix}.name")
    generation = document["generation"]
    # The limits of the serving engine that answers (contracts.inference.schemas): refused here, not mid-run.
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
    from evals.scoring import build_scorers

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
    # Long on purpose: the spec document of a set of suites, written out field by field.
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
