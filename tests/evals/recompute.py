"""An independent recomputation of a report from its per-item records (shared by the runner and e2e tests).

Written from the definitions (docs/evals.md), not from worker.evals.report: the Wilson interval by its
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
        assert delta["flips_to_correct"] == sum(not r["base"]["correct"] and r["tuned"]["correct"] for r in records)
        assert delta["flips_to_incorrect"] == sum(r["base"]["correct"] and not r["tuned"]["correct"] for r in records)
    return groups
