"""PNG charts: valid images for every input shape, deterministic bytes, and no global matplotlib state."""

from __future__ import annotations

import io
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread

from evals.charts import _latest_per_step, base_vs_tuned_png, loss_curve_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decoded(png: bytes) -> np.ndarray:
    """The image as an array, after checking it is a PNG that decodes to a non-empty, non-blank picture."""
    assert png.startswith(PNG_SIGNATURE)
    image = imread(io.BytesIO(png), format="png")
    assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0
    assert float(image[..., :3].std()) > 0.0, "the image is a single flat colour"
    return image


def acc(n: int, correct: int, *, ci: bool = True) -> dict[str, Any]:
    """An `acc` block of the report schema, with a Wilson 95% interval when ci."""
    if n == 0:
        return {"n": 0, "correct": 0, "accuracy": None}
    p, z = correct / n, 1.96
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    block: dict[str, Any] = {"n": n, "correct": correct, "accuracy": round(p, 4)}
    if ci:
        block.update(ci_low=round(max(0.0, centre - half), 4), ci_high=round(min(1.0, centre + half), 4))
    return block


def synthetic_report(splits: int = 20) -> dict[str, Any]:
    groups = ["memorization"] * 5 + ["generalization"] * 9 + ["auxiliary"] * (splits - 14)
    datasets = ["latest_news", "fictional_people", "medical_guidelines_2025",
                "a_dataset_identifier_far_longer_than_any_tick_label_should_ever_be"]
    rows = []
    for index, group in enumerate(groups):
        n = 0 if index == 7 else 40
        rows.append({
            "dataset_id": datasets[index % len(datasets)], "setting": "new_knowledge",
            "split_id": f"{group}_variant_{index}", "variant": "other", "counts_toward": group, "scorer": "judge",
            "base": acc(n, (index * 3) % 11 if n else 0, ci=index % 2 == 0),
            "tuned": acc(n, 40 - index if n else 0, ci=index % 2 == 0),
            "delta": {"accuracy": None if n == 0 else round((40 - index - (index * 3) % 11) / n, 4)},
        })
    return {
        "report_version": "1.0", "run_id": "synthetic-0001", "created_at": "2025-01-01T00:00:00Z",
        "spec": {"name": "synthetic", "sha256": "0" * 64},
        "base_model": {"id": "org/base"}, "tuned_model": {"id": "org/base", "training_job_id": "ftjob-1"},
        "scorers_used": {"judge": {"type": "llm_judge"}},
        "splits": rows,
        "controls": [{"control_id": "general_knowledge_control", "base": acc(500, 495), "tuned": acc(500, 480),
                      "delta": {"accuracy": -0.03}}],
        "summary": {"memorization": {"per_dataset": {}, "mean_base": 0.1, "mean_tuned": 0.9},
                    "generalization": {"per_dataset": {}, "mean_base": None, "mean_tuned": None}},
    }


def loss_rows(steps: int = 40) -> list[dict[str, Any]]:
    """Metrics event data whose losses span more than two decades (so the y axis is logarithmic)."""
    rows: list[dict[str, Any]] = []
    for step in range(1, steps + 1):
        row: dict[str, Any] = {"step": step, "total_steps": steps, "train_loss": 3.0 * math.exp(-step / 5) + 0.001}
        if step % 5 == 0:
            row["valid_loss"] = row["train_loss"] * 1.2
        if step % 20 == 0:
            row["full_valid_loss"] = row["train_loss"] * 1.1
        rows.append(row)
    return rows


# Rendering costs a few tenths of a second: each chart that several tests look at is rendered once.
@pytest.fixture(scope="module")
def loss_png() -> bytes:
    return loss_curve_png(loss_rows())


@pytest.fixture(scope="module")
def synthetic_png() -> bytes:
    return base_vs_tuned_png(synthetic_report(20))


def few_splits_report() -> dict[str, Any]:
    report = synthetic_report(20)
    return dict(report, splits=report["splits"][:3], controls=[])


@pytest.fixture(scope="module")
def few_splits_png() -> bytes:
    return base_vs_tuned_png(few_splits_report())


# ------------------------------------------------------------------------------------------ loss curve
def test_loss_curve_is_a_png_with_train_and_validation_losses(loss_png: bytes) -> None:
    image = decoded(loss_png)
    assert image.shape[1] > image.shape[0] > 100


def test_loss_curve_of_a_resumed_job_keeps_the_last_report_of_each_step(loss_png: bytes) -> None:
    first_attempt = loss_rows()[:25]
    resumed = [dict(row, train_loss=row["train_loss"] * 1.5) for row in loss_rows()[19:]]

    by_step, resumed_at = _latest_per_step(first_attempt + resumed)

    assert sorted(by_step) == list(range(1, 41))
    assert by_step[22]["train_loss"] == resumed[2]["train_loss"]
    assert resumed_at == [20]
    png = loss_curve_png(first_attempt + resumed)
    decoded(png)
    assert png != loss_png


def test_loss_curve_without_validation_and_with_unusable_rows() -> None:
    rows = [{"step": step, "train_loss": 2.0 / step} for step in range(1, 6)]
    rows += [{"step": None, "train_loss": 1.0}, {"train_loss": 1.0}, {"step": 6, "train_loss": float("nan")},
             {"step": "7", "train_loss": 0.2}, {"step": True, "train_loss": 9.0}]
    decoded(loss_curve_png(rows))
    decoded(loss_curve_png([{"step": 1, "train_loss": 2.3}]))  # a single point
    decoded(loss_curve_png([{"step": step, "train_loss": 0.0} for step in range(3)]))  # zero loss: no log scale


@pytest.mark.parametrize("rows", [[], [{"step": 1}], [{"foo": "bar"}]], ids=["empty", "no-losses", "no-steps"])
def test_loss_curve_without_metrics_says_so_instead_of_raising(rows: list[dict[str, Any]]) -> None:
    placeholder = loss_curve_png(rows)
    decoded(placeholder)
    assert placeholder == loss_curve_png([])
    assert placeholder != loss_curve_png([], title="another title")


# ------------------------------------------------------------------------------------------ base vs tuned
def test_base_vs_tuned_renders_a_report_the_runner_made() -> None:
    """A whole report as the eval runner writes it (scripted answers), every split and control drawn."""
    from evals.run import EvalRun
    from tests.evals.test_runner import ScriptedModels, builtin_spec

    spec, items, controls = builtin_spec()
    report, _ = EvalRun(spec, items, controls, ScriptedModels(items + controls), base_model="base",
                        tuned_model="tuned").execute()
    image = decoded(base_vs_tuned_png(report))
    assert image.shape[1] >= image.shape[0]


def test_base_vs_tuned_with_twenty_splits_and_an_empty_one_is_wider(synthetic_png: bytes,
                                                                     few_splits_png: bytes) -> None:
    assert any(split["base"]["accuracy"] is None for split in synthetic_report(20)["splits"])
    many, few = decoded(synthetic_png), decoded(few_splits_png)
    assert many.shape[1] > few.shape[1]


def test_base_vs_tuned_tolerates_sparse_reports() -> None:
    decoded(base_vs_tuned_png({"splits": []}))
    decoded(base_vs_tuned_png({"splits": [{"dataset_id": "d", "split_id": "s", "counts_toward": "other",
                                           "base": acc(0, 0), "tuned": acc(0, 0)}]}))


# ------------------------------------------------------------------------------------------ determinism
def test_same_input_gives_identical_bytes(loss_png: bytes, few_splits_png: bytes) -> None:
    assert base_vs_tuned_png(few_splits_report()) == few_splits_png
    assert loss_curve_png([]) == loss_curve_png([])
    for png in (loss_png, few_splits_png):
        assert b"Software" not in png and b"matplotlib" not in png.lower()


def test_rendering_touches_no_global_pyplot_state_and_is_thread_safe(loss_png: bytes) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: loss_curve_png(loss_rows()), range(2)))
    assert results == [loss_png, loss_png]  # and the same bytes as rendered on the main thread
    assert "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()


def test_a_comparison_draws_one_bar_per_rate_the_report_has() -> None:
    from evals.charts import comparison_png
    from evals.comparison import compare

    requests = [{"messages": [{"role": "user", "content": f"q{i}"}], "response_format": {"type": "json_object"}}
                for i in range(4)]
    answers = [{"content": '{"a": 1}'}, {"content": "x"}, {"content": "{}"}, {"content": "y"}]
    report = compare(requests, answers, answers[:2] + [{"content": "z"}, {"content": "y"}])
    report["models"] = {"candidate": "ft:copy", "reference": "ft:original"}
    plain = decoded(comparison_png(report))
    report["summary"]["judge"] = {k: {"n": 4, "count": 2, "rate": 0.5, "ci_low": 0.15, "ci_high": 0.85}
                                  for k in ("candidate_preferred", "reference_preferred", "candidate_at_least_as_good")}
    judged = decoded(comparison_png(report))
    assert judged.shape[0] > plain.shape[0]  # three more rows
    assert comparison_png(report) == comparison_png(report)
    decoded(comparison_png({"summary": {"items": 0}}))  # nothing compared: says so
