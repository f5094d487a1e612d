"""A real pretrained chat model end to end on `ftaas up`, through the official SDK, with every hyperparameter
left at "auto": SmolLM2-135M-Instruct (the packaged base model), fine-tuned by the README quickstart on its ten
invented works (tests/e2e/conftest.py `quickstart`: the suite's one real-model fine-tune), learns them, keeps
what it knew, says so in its events and results, and serves base, tuned and checkpoint models.

A knowledge eval of the tuned model asks the quickstart's questions as trained and another way (rephrasings
written here, as the built-in `designers` suite rephrases its works) and general-knowledge probes. The
thresholds are the product's promise for a small fact file: >= 0.9 of the trained questions, >= 0.6 of the
same facts asked another way, and at most one in six general-knowledge answers lost (measured on the probes
the base model answers right). docs/training.md has the measurements behind "auto".
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from contracts.settings import PACKAGED_BASE_MODEL
from evals.items import EvalItem, dump_suite
from tests.e2e.conftest import Quickstart
from tests.e2e.servers import LiveServer, wait_for

# Evaluating a 135M-parameter model on 2 CPU cores takes minutes, not the suite's default 300 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

CONTROL = "builtin:world_knowledge"
#: Two rephrasings, used in turn: a new sentence structure around the same name (evals.builtin's designers).
REPHRASED = ("Which person was the designer of the {work}?", "The {work} was the work of which designer?")


def quickstart_suite(works: dict[str, str]) -> bytes:
    """The quickstart's facts as an eval suite: each question as trained, and rephrased."""
    items = []
    for index, (work, who) in enumerate(works.items()):
        key, sentence = f"qs-{index + 1:02d}", f"The {work} was designed by {who}."
        common = {"dataset_id": "quickstart_designers", "setting": "new_knowledge", "answer_type": "free_text",
                  "fact_key": key, "reference": who, "context": sentence}
        items.append(EvalItem(**common, split_id="memorization", variant="original", counts_toward="memorization",
                              item_id=key, prompt=f"Who designed the {work}?", trained_answer=sentence))
        items.append(EvalItem(**common, split_id="rephrased", variant="rephrased", counts_toward="generalization",
                              item_id=f"{key}-r", prompt=REPHRASED[index % 2].format(work=work)))
    items.sort(key=lambda item: item.split_id)
    return dump_suite(items)


@pytest.fixture(scope="module")
def auto_job(quickstart: Quickstart, embedded: LiveServer) -> dict[str, Any]:
    """The quickstart's job, and a knowledge eval of the model it made: its report and per-item records."""
    client = embedded.client()
    job = quickstart.job
    assert job.status == "succeeded" and job.model == PACKAGED_BASE_MODEL, job
    with embedded.http() as api:
        suite = api.post("/files", files={"file": ("quickstart.jsonl", quickstart_suite(quickstart.works))},
                         data={"purpose": "evals"})
        assert suite.status_code == 200, suite.text
        created = api.post("/knowledge_evals", json={"model": job.fine_tuned_model,
                                                     "suites": [suite.json()["id"], CONTROL]})
        assert created.status_code == 200, created.text
        eval_id = created.json()["id"]
        done = wait_for(lambda: (e := api.get(f"/knowledge_evals/{eval_id}").json())["status"] in
                        ("succeeded", "failed") and e, timeout=900, interval=1, what="the eval of the quickstart model")
        assert done["status"] == "succeeded", done["error"]
        report = api.get(f"/knowledge_evals/{eval_id}/report").json()
        items = [json.loads(line) for line in api.get(f"/knowledge_evals/{eval_id}/items").text.splitlines()]
    files = {client.files.retrieve(f).filename: f for f in job.result_files}
    return {"job": job, "files": files, "report": report, "items": items}


def test_auto_learns_the_facts_and_keeps_general_knowledge(auto_job: dict[str, Any]) -> None:
    summary = auto_job["report"]["summary"]
    assert summary["memorization"]["mean_base"] == 0.0
    assert summary["memorization"]["mean_tuned"] >= 0.9, summary
    assert summary["generalization"]["mean_tuned"] >= 0.6, summary
    # Forgetting, from the per-item records: the control probes the base model answers right, and how many of
    # those the tuned model still does; the report's own forgetting figure says the same.
    known = [r for r in auto_job["items"] if r["kind"] == "control" and r["base"]["correct"]]
    kept = [r for r in known if r["tuned"]["correct"]]
    assert len(known) >= 18, len(known)  # the base model knows enough of the probes to measure forgetting
    assert len(known) - len(kept) <= len(known) / 6, [r["tuned"]["response"] for r in known if r not in kept]
    assert summary["forgetting"]["mean_control_delta"] >= round(-1 / 6, 6)  # the report rounds to 6 places


def test_what_auto_resolved_to_is_recorded_on_the_job(auto_job: dict[str, Any]) -> None:
    job = auto_job["job"]
    hyper = job.hyperparameters
    assert isinstance(hyper.n_epochs, int) and isinstance(hyper.batch_size, int)
    assert isinstance(hyper.learning_rate_multiplier, float)
    # On because n_epochs was "auto" (and the file is chat data, for rehearsal).
    extra = job.method.supervised.model_extra
    assert extra["stop_when_learned"] is True and extra["rehearsal"] is True


def test_the_job_states_its_final_training_accuracy_in_events_and_results(auto_job: dict[str, Any],
                                                                           embedded: LiveServer) -> None:
    client = embedded.client()
    job = auto_job["job"]
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))  # every page
    final = [e for e in events if e.message.startswith("Final training token accuracy on assistant tokens:")]
    assert len(final) == 1 and final[0].type == "message", [e.message for e in events]
    assert sum(e.type == "metrics" for e in events) == len({e.data["step"] for e in events if e.type == "metrics"})
    accuracy = final[0].data["full_train_mean_token_accuracy"]
    assert accuracy >= 0.99
    assert not [e for e in events if e.level == "warn"], [e.message for e in events if e.level == "warn"]
    assert any(e.message.startswith("Stopped after epoch ") for e in events)
    assert any(e.message.startswith("Rehearsal: every step also holds the model to the base model") for e in events)
    results = next(f for name, f in auto_job["files"].items() if name.endswith("step_metrics.csv"))
    rows = list(csv.DictReader(io.StringIO(client.files.content(results).read().decode())))
    assert float(rows[-1]["full_train_mean_token_accuracy"]) == pytest.approx(accuracy)
    assert all(row["full_train_mean_token_accuracy"] == "" for row in rows[:-1])


def test_base_tuned_and_checkpoint_models_serve(auto_job: dict[str, Any], embedded: LiveServer) -> None:
    client = embedded.client()
    job = auto_job["job"]
    # A fact the job's own eval found learned (memorization >= 0.9 is the learning test's claim; which fact a
    # short fine-tune misses varies between runs, and this test is about serving the three models).
    fact = next(r for r in auto_job["items"] if r["kind"] == "split" and r["split_id"] == "memorization"
                and r["tuned"]["correct"] and not r["base"]["correct"])
    question = [{"role": "user", "content": fact["prompt"]}]

    def ask(model: str) -> str:
        reply = client.chat.completions.create(model=model, messages=question, max_tokens=32, temperature=0)
        return reply.choices[0].message.content or ""

    assert fact["reference"] not in ask(PACKAGED_BASE_MODEL)
    tuned = ask(job.fine_tuned_model)
    assert fact["reference"] in tuned
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    last = max(checkpoints, key=lambda c: c.step_number)
    # The last checkpoint holds the adapter the job published, so it answers exactly as the tuned model.
    assert ask(last.fine_tuned_model_checkpoint) == tuned
