"""An independent recomputation of a report from its per-item records (shared by the runner and e2e tests).

Written from the definitions (docs/evals.md), not from evals.report: the Wilson interval by its
formula, flips by counting.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import pytest

Z95 = 1.959963984540054


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def newcombe(tuned: dict[str, Any], base: dict[str, Any]) -> tuple[float, float]:
    """Newcombe's hybrid score interval (his method 10) for tuned - base, from the two Wilson intervals."""
    p1, l1, u1 = tuned["accuracy"], *wilson(tuned["correct"], tuned["n"])
    p2, l2, u2 = base["accuracy"], *wilson(base["correct"], base["n"])
    d = p1 - p2
    return max(-1.0, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)), min(1.0, d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def assert_summary_matches_splits(report: dict[str, Any], settings: dict[str, str]) -> None:
    """Headlines are unweighted means over datasets of the selected split; by setting likewise; forgetting
    is the mean and the minimum of the controls' forgetting deltas. `settings`: dataset -> setting."""
    by_split = {(s["dataset_id"], s["split_id"]): s for s in report["splits"]}

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    for kind in ("memorization", "generalization"):
        head = report["summary"][kind]
        chosen = {ds: by_split[(ds, entry["split_id"])] for ds, entry in head["per_dataset"].items()}
        for role in ("base", "tuned"):
            assert head[f"mean_{role}"] == pytest.approx(mean([s[role]["accuracy"] for s in chosen.values()]),
                                                         abs=1e-6)
        assert head["mean_delta"] == pytest.approx(mean([s["delta"]["accuracy"] for s in chosen.values()]), abs=1e-6)
        for setting, values in report["summary"].get("by_setting", {}).items():
            mine = [s for ds, s in chosen.items() if settings[ds] == setting]
            if kind == "generalization":
                assert values["generalization_mean_delta"] == pytest.approx(
                    mean([s["delta"]["accuracy"] for s in mine]), abs=1e-6)
            assert values[f"{kind}_mean_tuned"] == pytest.approx(mean([s["tuned"]["accuracy"] for s in mine]),
                                                                 abs=1e-6)
    forgetting = [c["forgetting_delta"] for c in report.get("controls", []) if c.get("forgetting_delta") is not None]
    if forgetting:
        assert report["summary"]["forgetting"]["mean_control_delta"] == pytest.approx(mean(forgetting), abs=1e-6)
        assert report["summary"]["forgetting"]["worst_control_delta"] == pytest.approx(min(forgetting), abs=1e-6)


def records_by_split(lines: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        groups[f"{line['dataset_id']}/{line['split_id']}"].append(line)
    return groups


def assert_blocks_match_records(report: dict[str, Any], lines: list[dict[str, Any]]) -> dict[str, list[dict]]:
    """Every split's and control's n, correct, accuracy, Wilson interval, delta and flips, for base and tuned,
    equal what the records say. Returns the records grouped by 'dataset/split'."""
    groups = records_by_split(lines)
    blocks = {f"{s['dataset_id']}/{s['split_id']}": s for s in report["splits"]}
    blocks.update({f"{c['control_id']}/{c['control_id']}": c for c in report.get("controls", [])})
    assert set(blocks) == set(groups)
    for key, block in blocks.items():
        records = groups[key]
        for role in ("base", "tuned"):
            correct = sum(r[role]["correct"] is True for r in records)
            assert (block[role]["n"], block[role]["correct"]) == (len(records), correct), key
            assert block[role]["accuracy"] == pytest.approx(correct / len(records), abs=1e-6)
            low, high = wilson(correct, len(records))
            assert block[role]["ci_low"] == pytest.approx(low, abs=1e-6)
            assert block[role]["ci_high"] == pytest.approx(high, abs=1e-6)
        delta = block["delta"]
        assert delta["accuracy"] == pytest.approx(block["tuned"]["accuracy"] - block["base"]["accuracy"], abs=1e-6)
        low, high = newcombe(block["tuned"], block["base"])
        assert (delta["ci_low"], delta["ci_high"]) == (pytest.approx(low, abs=1e-6), pytest.approx(high, abs=1e-6))
        assert delta["flips_to_correct"] == sum(not r["base"]["correct"] and r["tuned"]["correct"] for r in records)
        assert delta["flips_to_incorrect"] == sum(r["base"]["correct"] and not r["tuned"]["correct"] for r in records)
    return groups
