"""Knowledge evals end to end on `ftaas up` (Celery workers, the serving engine, the official SDK):
fine-tune the tiny demo model on a fictional-people memorization split with an eval attached, read the
report from the job's result files, recompute it from its per-item records; then a standalone eval with
an LLM judge served by ftaas itself, driven by the `ftaas eval` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.e2e.servers import LiveServer, wait_for
from tests.evals.recompute import assert_blocks_match_records, assert_summary_matches_splits

pytestmark = pytest.mark.slow

def http(server: LiveServer) -> httpx.Client:
    return server.http()


def test_the_fine_tune_memorised_the_facts_and_the_eval_says_so(evaluated_job: dict[str, Any],
                                                                 embedded: LiveServer) -> None:
    report, job = evaluated_job["report"], evaluated_job["job"]
    head = report["summary"]["memorization"]
    assert head["mean_tuned"] >= 0.9, head
    assert head["mean_base"] <= 0.05, head
    # Generalization is reported whatever it is (the demo model is tiny): a number, with its base.
    general = report["summary"]["generalization"]
    assert general["mean_tuned"] is not None and general["mean_base"] is not None
    assert report["tuned_model"]["id"] == job.fine_tuned_model
    assert report["tuned_model"]["training_job_id"] == job.id
    # The job object names the eval it was created with (an extension field; the SDK keeps unknown fields).
    assert job.knowledge_eval == {"spec_name": report["spec"]["name"], "spec_sha256": report["spec"]["sha256"]}
    assert {s["split_id"] for s in report["splits"]} == {"memorization", "rephrased", "secondary", "comparison"}
    # The headline numbers are job events, and the charts are result files.
    events = [e.message for e in embedded.client().fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any(m.startswith("Knowledge eval memorization: base 0.0") for m in events), events
    assert any(m.startswith("Knowledge eval generalization: base") for m in events)
    names = sorted(name.rsplit("-", 1)[-1] for name in evaluated_job["files"])
    assert names == ["base_vs_tuned.png", "items.jsonl", "loss_curve.png", "report.json", "spec.json",
                     "step_metrics.csv"]
    # The eval is an object of its own too, tied to the job.
    with http(embedded) as api:
        listed = api.get("/knowledge_evals").json()["data"]
        attached = next(e for e in listed if e["fine_tuning_job_id"] == job.id)
        assert attached["status"] == "succeeded" and attached["model"] == job.fine_tuned_model
        assert attached["summary"]["memorization"]["mean_tuned"] == head["mean_tuned"]
        chart = api.get(f"/knowledge_evals/{attached['id']}/loss_curve")
        assert chart.status_code == 200 and chart.content[:4] == b"\x89PNG"


def test_the_report_is_recomputed_from_its_per_item_records(evaluated_job: dict[str, Any]) -> None:
    report, items = evaluated_job["report"], evaluated_job["items"]
    groups = assert_blocks_match_records(report, items)
    assert_summary_matches_splits(report, {line["dataset_id"]: line["setting"] for line in items})
    memorization = groups["fictional_people/memorization"]
    tuned = sum(r["tuned"]["correct"] for r in memorization) / len(memorization)
    assert report["summary"]["memorization"]["mean_tuned"] == pytest.approx(tuned, abs=1e-6)
    # Raw responses are kept for both models.
    assert all(isinstance(r["base"]["response"], str) and isinstance(r["tuned"]["response"], str) for r in items)


def test_a_standalone_eval_with_a_judge_runs_from_the_cli(evaluated_job: dict[str, Any], embedded: LiveServer,
                                                         tmp_path: Any) -> None:
    """`ftaas eval run` follows the eval with a progress bar and prints the table; the free-text split is
    scored by an LLM judge that ftaas serves itself (the tiny model's verdicts are mostly unparseable and
    fall back to exact match, which the report counts)."""
    model = evaluated_job["job"].fine_tuned_model
    env = {**embedded.env, "FTAAS_API_KEY": embedded.api_key, "FTAAS_BASE_URL": embedded.base_url}
    result = subprocess.run(
        [sys.executable, "-m", "ftaas.cli", "eval", "run", "--model", model, "--suite", "dated_events?size=4",
         "--suite", "api_renames?size=3",
         "--judge-model", "ftaas-tiny", "--max-new-tokens", "8", "--poll", "0.3", "--output", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    assert "HEADLINE memorization" in result.stdout and "dated_events/date_shifted" in result.stdout
    assert "answer" in result.stderr  # the progress bar's unit
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["tuned_model"]["id"] == model
    shifted = next(s for s in report["splits"] if s["split_id"] == "date_shifted")
    assert {"abstention_rate", "trained_answer_leak_rate"} <= set(shifted["extra_metrics"])
    assert (tmp_path / "base_vs_tuned.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "loss_curve.png").exists()  # the evaluated model came from a job with metrics
    spec = json.loads((tmp_path / "spec.json").read_text())  # the spec that was run, stored with the results
    assert spec["name"] == report["spec"]["name"] and spec["scorers"]["judge"]["judge_model"] == "ftaas-tiny"
    assert report["scorers_used"]["judge"]["type"] == "llm_judge"
    renames = next(s for s in report["splits"] if s["dataset_id"] == "api_renames" and s["split_id"] == "memorization")
    assert renames["scorer"] == "judge" and "stale_answer_rate" in renames["extra_metrics"]


def test_a_standalone_eval_runs_on_the_cluster(cluster: LiveServer) -> None:
    """The Helm topology: the API queues the eval (PostgreSQL outbox -> Redis), a `gpu` worker claims and runs
    it, and the report, items and chart are stored in S3 and served back by the API."""
    with http(cluster) as api:
        created = api.post("/knowledge_evals", json={
            "model": "ftaas-tiny", "suites": ["fictional_people?size=1&seed=2", "control?size=5"],
            "max_new_tokens": 6})
        assert created.status_code == 200, created.text
        eval_id = created.json()["id"]
        done = wait_for(lambda: (e := api.get(f"/knowledge_evals/{eval_id}").json())["status"] in
                        ("succeeded", "failed") and e, timeout=300, interval=0.5, what="the cluster eval")
        assert done["status"] == "succeeded", done["error"]
        assert done["progress"] == {"done": 18 + 5, "total": 18 + 5}  # the base model is answered once
        report = api.get(f"/knowledge_evals/{eval_id}/report").json()
        assert report["base_model"]["id"] == report["tuned_model"]["id"] == "ftaas-tiny"
        assert any("no separate baseline run" in w for w in report["warnings"])
        items = api.get(f"/knowledge_evals/{eval_id}/items").text.splitlines()
        assert len(items) == 23
        keys = cluster.store().list_keys(f"evals/{eval_id}/")
        assert sorted(k.rsplit("/", 1)[1] for k in keys) == ["base_vs_tuned.png", "items.jsonl", "report.json",
                                                             "spec.json"]
