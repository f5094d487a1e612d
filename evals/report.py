"""From raw responses to verdicts, and from verdicts to the report (`schemas/eval_report.schema.json`).

`assess()` scores one model's responses to a list of items and adds what the report needs beyond
right/wrong: whether the response gives the superseded answer (`matched_before`, updated knowledge),
declines (`abstained`, date-shifted items), or recites the trained answer for an event that never happened
(`leaked`).

`build_report()` turns item results into the report:

* per split, for base and tuned: n, correct, accuracy and a Wilson interval at the spec's level; the delta
  (tuned - base) with a Newcombe interval and the flips in each direction; subsets (`base_did_not_know`
  for new knowledge, `base_knew_before_answer` for updates) when the spec's baseline asks for them; extra
  metrics (stale-answer, abstention, trained-answer-leak and format-violation rates, tuned and base);
* controls: the same blocks, plus forgetting = the delta on the control items the base model answered
  correctly (tuned accuracy on them minus 1);
* headlines as FineTuneBench defines them: the unweighted mean over datasets of the selected split, and
  means per setting (new vs updated knowledge).

An unscorable verdict (`correct` None: judge unparseable without a fallback) counts as incorrect and is
reported in `warnings`. `item_lines()` gives the per-item JSONL records from which every number of the
report can be recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

from evals.items import EvalItem
from evals.normalize import answer_matches, is_abstention
from evals.scoring import Scorer, Verdict
from evals.spec import DEFAULT_NORMALIZE, EvalSpec

REPORT_VERSION = "1.0"
COUNTS_ORDER = ("memorization", "generalization", "auxiliary")


@dataclass(frozen=True)
class Answer:
    """One model's answer to one item, and what the scorers made of it."""

    response: str
    correct: bool | None
    judge_raw: str | None = None
    matched_before: bool | None = None
    abstained: bool | None = None
    leaked: bool | None = None
    format_violation: bool = False

    @property
    def counted_correct(self) -> bool:
        return self.correct is True


@dataclass(frozen=True)
class ItemResult:
    item: EvalItem
    tuned: Answer
    #: None when the spec does not evaluate the base model.
    base: Answer | None = None


def _steps(config: Mapping[str, Any]) -> list[str]:
    return list(config.get("normalize") or DEFAULT_NORMALIZE)


def assess(items: Sequence[EvalItem], responses: Sequence[str], scorer: Scorer,
           scorer_config: Mapping[str, Any]) -> list[Answer]:
    """Score `responses[i]` to `items[i]` with `scorer` and add the stale/abstain/leak flags."""
    verdicts: list[Verdict] = scorer.score(items, responses)
    steps = _steps(scorer_config)
    tokens = list(scorer_config.get("abstain_tokens") or ["None"])
    answers = []
    for item, response, verdict in zip(items, responses, verdicts, strict=True):
        matched_before = (answer_matches(response, item.reference_before, steps)
                          if item.reference_before else None)
        shifted = item.variant == "date_shifted" or item.answer_type == "abstain"
        abstained = is_abstention(response, tokens, steps) if shifted else None
        leaked = answer_matches(response, item.trained_answer, steps) if shifted and item.trained_answer else None
        answers.append(Answer(response=response, correct=verdict.correct, judge_raw=verdict.judge_raw,
                              matched_before=matched_before, abstained=abstained, leaked=leaked,
                              format_violation=verdict.format_violation))
    return answers


# ------------------------------------------------------------------------------------------ statistics
def wilson(correct: int, n: int, level: float) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (n > 0)."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_block(answers: Sequence[Answer | None], level: float | None) -> dict[str, Any]:
    present = [a for a in answers if a is not None]
    n = len(present)
    correct = sum(a.counted_correct for a in present)
    block: dict[str, Any] = {"n": n, "correct": correct, "accuracy": round(correct / n, 6) if n else None}
    if n and level is not None:
        low, high = wilson(correct, n, level)
        block["ci_low"], block["ci_high"] = round(low, 6), round(high, 6)
    return block


def delta_block(results: Sequence[ItemResult], base: Mapping[str, Any], tuned: Mapping[str, Any],
                level: float | None) -> dict[str, Any]:
    if base["accuracy"] is None or tuned["accuracy"] is None:
        return {"accuracy": None}
    paired = [(r.base, r.tuned) for r in results if r.base is not None]
    block: dict[str, Any] = {
        "accuracy": round(tuned["accuracy"] - base["accuracy"], 6),
        "flips_to_correct": sum(not before.counted_correct and after.counted_correct for before, after in paired),
        "flips_to_incorrect": sum(before.counted_correct and not after.counted_correct for before, after in paired),
    }
    if level is not None:
        # Newcombe's hybrid score interval (his method 10) for a difference of proportions, from the two
        # Wilson intervals. It treats the two runs as independent samples; they are paired on the same
        # items, so the interval is conservative (wider than a paired one).
        p1, p2 = tuned["correct"] / tuned["n"], base["correct"] / base["n"]
        (l1, u1), (l2, u2) = wilson(tuned["correct"], tuned["n"], level), wilson(base["correct"], base["n"], level)
        low = (p1 - p2) - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
        high = (p1 - p2) + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
        block["ci_low"], block["ci_high"] = round(max(-1.0, low), 6), round(min(1.0, high), 6)
    return block


def _rate(values: Sequence[bool | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present) / len(present), 6) if present else None


def _extra_metrics(results: Sequence[ItemResult]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for role in ("tuned", "base"):
        answers = [getattr(r, role) for r in results if getattr(r, role) is not None]
        if not answers:
            continue
        prefix = "" if role == "tuned" else "base_"
        items = [r.item for r in results if getattr(r, role) is not None]
        values = {
            "stale_answer_rate": _rate([a.matched_before for a in answers]),
            "abstention_rate": _rate([a.abstained for a in answers]),
            "trained_answer_leak_rate": _rate([a.leaked for a in answers]),
            "format_violation_rate": (_rate([a.format_violation for a in answers])
                                      if any(i.answer_type == "yes_no" for i in items) else None),
        }
        metrics.update({prefix + k: v for k, v in values.items() if v is not None})
    return metrics


# ---------------------------------------------------------------------------------------------- report
def _group(results: Sequence[ItemResult]) -> dict[tuple[str, str], list[ItemResult]]:
    groups: dict[tuple[str, str], list[ItemResult]] = {}
    for result in results:
        groups.setdefault((result.item.dataset_id, result.item.split_id), []).append(result)
    return groups


def _split_result(spec: EvalSpec, dataset: Mapping[str, Any], split: Mapping[str, Any],
                  results: Sequence[ItemResult], level: float | None) -> dict[str, Any]:
    base = accuracy_block([r.base for r in results], level)
    tuned = accuracy_block([r.tuned for r in results], level)
    entry: dict[str, Any] = {
        "dataset_id": dataset["id"], "setting": dataset["setting"], "split_id": split["id"],
        "variant": split["variant"], "counts_toward": split["counts_toward"], "scorer": split["scorer"],
        "base": base, "tuned": tuned, "delta": delta_block(results, base, tuned, level),
    }
    subsets: dict[str, Any] = {}
    baseline = spec.baseline
    evaluated_base = [(r.base, r.tuned) for r in results if r.base is not None]
    if evaluated_base and dataset["setting"] == "new_knowledge" and baseline.get("exclude_items_base_already_knows"):
        unknown = [(before, after) for before, after in evaluated_base if not before.counted_correct]
        subsets["base_did_not_know"] = {"base": accuracy_block([before for before, _ in unknown], level),
                                        "tuned": accuracy_block([after for _, after in unknown], level)}
    if (evaluated_base and dataset["setting"] == "updated_knowledge"
            and baseline.get("require_base_knows_before_answer") and any(r.item.reference_before for r in results)):
        knew = [(before, after) for before, after in evaluated_base if before.matched_before]
        subsets["base_knew_before_answer"] = {"base": accuracy_block([before for before, _ in knew], level),
                                              "tuned": accuracy_block([after for _, after in knew], level)}
    if subsets:
        entry["subsets"] = subsets
    extra = _extra_metrics(results)
    if extra:
        entry["extra_metrics"] = extra
    return entry


def _control_result(control_id: str, results: Sequence[ItemResult], level: float | None) -> dict[str, Any]:
    base = accuracy_block([r.base for r in results], level)
    tuned = accuracy_block([r.tuned for r in results], level)
    entry: dict[str, Any] = {"control_id": control_id, "base": base, "tuned": tuned,
                             "delta": delta_block(results, base, tuned, level)}
    known = [r for r in results if r.base is not None and r.base.counted_correct]
    if base["accuracy"] is not None:
        known_tuned = accuracy_block([r.tuned for r in known], level)
        entry["base_correct_items"] = {"n": len(known), "tuned": known_tuned}
        # Forgetting: what the tuned model lost on what the base model knew (None when it knew nothing).
        entry["forgetting_delta"] = (round(known_tuned["accuracy"] - 1.0, 6)
                                     if known_tuned["accuracy"] is not None else None)
    return entry


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present) / len(present), 6) if present else None


def _headline(spec: EvalSpec, kind: str, by_split: Mapping[tuple[str, str], Mapping[str, Any]]) -> dict[str, Any]:
    per_dataset: dict[str, Any] = {}
    for dataset_id, split_id in spec.headline(kind).items():
        entry = by_split.get((dataset_id, split_id))
        if entry is None:
            continue
        per_dataset[dataset_id] = {"split_id": split_id, "base": entry["base"]["accuracy"],
                                   "tuned": entry["tuned"]["accuracy"], "delta": entry["delta"]["accuracy"]}
    return {"per_dataset": per_dataset,
            "mean_base": _mean([v["base"] for v in per_dataset.values()]),
            "mean_tuned": _mean([v["tuned"] for v in per_dataset.values()]),
            "mean_delta": _mean([v["delta"] for v in per_dataset.values()])}


def build_report(spec: EvalSpec, results: Sequence[ItemResult], control_results: Sequence[ItemResult], *,
                 run_id: str, created_at: str, base_model: Mapping[str, Any], tuned_model: Mapping[str, Any],
                 scorers: Mapping[str, Scorer], warnings: Sequence[str] = (),
                 artifacts: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The report document (validated against the report schema by the caller, see spec.validate_report)."""
    # Long on purpose: the report document assembled field by field, in the schema's order.
    level = spec.confidence_level()
    groups = _group(results)
    splits: list[dict[str, Any]] = []
    by_split: dict[tuple[str, str], dict[str, Any]] = {}
    for dataset in spec.datasets:
        for split in dataset["splits"]:
            entry = _split_result(spec, dataset, split, groups.get((dataset["id"], split["id"]), []), level)
            by_split[(dataset["id"], split["id"])] = entry
            splits.append(entry)
    splits.sort(key=lambda s: COUNTS_ORDER.index(s["counts_toward"]))  # stable: spec order within a kind
    controls = [_control_result(c["id"], [r for r in control_results if r.item.split_id == c["id"]], level)
                for c in spec.controls]
    summary: dict[str, Any] = {"memorization": _headline(spec, "memorization", by_split),
                               "generalization": _headline(spec, "generalization", by_split)}
    settings = {d["id"]: d["setting"] for d in spec.datasets}
    by_setting: dict[str, Any] = {}
    for setting in ("new_knowledge", "updated_knowledge"):
        memo = [v for ds, v in summary["memorization"]["per_dataset"].items() if settings[ds] == setting]
        gen = [v for ds, v in summary["generalization"]["per_dataset"].items() if settings[ds] == setting]
        if memo or gen:
            by_setting[setting] = {
                "memorization_mean_base": _mean([v["base"] for v in memo]),
                "memorization_mean_tuned": _mean([v["tuned"] for v in memo]),
                "generalization_mean_base": _mean([v["base"] for v in gen]),
                "generalization_mean_tuned": _mean([v["tuned"] for v in gen]),
                "generalization_mean_delta": _mean([v["delta"] for v in gen]),
            }
    if by_setting:
        summary["by_setting"] = by_setting
    forgetting = [c["forgetting_delta"] for c in controls if c.get("forgetting_delta") is not None]
    if forgetting:
        summary["forgetting"] = {"mean_control_delta": _mean(forgetting), "worst_control_delta": min(forgetting)}
    all_warnings = list(warnings)
    unscorable = sum(a is not None and a.correct is None for r in [*results, *control_results] for a in (r.base, r.tuned))
    if unscorable:
        all_warnings.append(f"{unscorable} responses could not be scored (unparseable judge verdict and no "
                            "fallback); they count as incorrect.")
    for control in controls:
        if control.get("base_correct_items", {}).get("n") == 0:
            all_warnings.append(f"control {control['control_id']}: the base model answered none of its items, so "
                                "forgetting cannot be measured on it.")
    for entry in splits:
        if entry["counts_toward"] == "memorization" and entry["base"]["accuracy"]:
            all_warnings.append(f"{entry['dataset_id']}/{entry['split_id']}: the base model already answers "
                                f"{entry['base']['correct']} of {entry['base']['n']} memorization items.")
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "run_id": run_id,
        "created_at": created_at,
        "spec": {"name": spec.name, "sha256": spec.sha256},
        "base_model": dict(base_model),
        "tuned_model": dict(tuned_model),
        "generation": dict(spec.generation),
        "scorers_used": {name: scorer.describe() for name, scorer in scorers.items()},
        "splits": splits,
        "controls": controls,
        "summary": summary,
        "warnings": all_warnings,
    }
    if artifacts:
        report["artifacts"] = dict(artifacts)
    return report


def item_lines(results: Sequence[ItemResult], control_results: Sequence[ItemResult]) -> list[dict[str, Any]]:
    """The per-item JSONL records (the report schema's `item_result`, plus variant/counts_toward/kind)."""
    lines = []
    for kind, group in (("split", results), ("control", control_results)):
        for result in group:
            item = result.item
            lines.append({
                "kind": kind, "dataset_id": item.dataset_id, "split_id": item.split_id, "item_id": item.item_id,
                "fact_key": item.fact_key, "variant": item.variant, "counts_toward": item.counts_toward,
                "setting": item.setting, "answer_type": item.answer_type, "prompt": item.prompt,
                "reference": item.reference, "reference_before": item.reference_before,
                "trained_answer": item.trained_answer,
                "base": asdict(result.base) if result.base else None, "tuned": asdict(result.tuned),
            })
    return lines


def summary_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Rows for a printed table: (split, counts toward, base, tuned, delta), headlines last."""

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    def fmt_acc(block: Mapping[str, Any]) -> str:
        return "-" if block["accuracy"] is None else f"{block['accuracy']:.3f} ({block['correct']}/{block['n']})"

    rows = [(f"{s['dataset_id']}/{s['split_id']}", s["counts_toward"], fmt_acc(s["base"]), fmt_acc(s["tuned"]),
             fmt(s["delta"]["accuracy"])) for s in report["splits"]]
    rows += [(f"control/{c['control_id']}", "control", fmt_acc(c["base"]), fmt_acc(c["tuned"]),
              fmt(c["delta"]["accuracy"])) for c in report.get("controls", [])]
    for kind in ("memorization", "generalization"):
        head = report["summary"][kind]
        rows.append((f"HEADLINE {kind}", "mean over datasets", fmt(head.get("mean_base")), fmt(head.get("mean_tuned")),
                     fmt(head.get("mean_delta"))))
    forgetting = report["summary"].get("forgetting")
    if forgetting:
        rows.append(("FORGETTING", "controls the base knew", "", "", fmt(forgetting["mean_control_delta"])))
    return rows


def format_table(rows: Sequence[Sequence[str]],
                 header: Sequence[str] = ("split", "counts toward", "base", "tuned", "delta")) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)
