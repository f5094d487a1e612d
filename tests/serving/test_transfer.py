"""`ftaas transfer plan/copy` between two live ftaas servers: one plays the source (it speaks OpenAI's API), the
other the target. Between the CLI and the source sits an HTTP proxy the test controls, which answers chosen
requests with a 500 or a malformed file; the source's own rate limiter gives real 429s with retry-after."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from contracts.settings import DEMO_BASE_MODEL
from ftaas.cli import main
from tests.faults import FaultProxy
from tests.serving.conftest import LiveServing


def chat_lines(count: int, topic: str) -> bytes:
    return b"".join(json.dumps({"messages": [{"role": "user", "content": f"{topic} question {i}?"},
                                             {"role": "assistant", "content": f"{topic} answer {i}."}]}).encode() + b"\n"
                    for i in range(count))


@pytest.fixture
def validating_worker() -> Iterator[Any]:
    """validate(served): the worker's file validation, run for every file a server has not validated yet (these
    in-process servers have no Celery worker)."""
    from worker.context import WorkerContext
    from worker.files.service import validate_file

    servers: list[LiveServing] = []
    stop = threading.Event()

    from sqlalchemy import select

    from db.tables import File

    def loop() -> None:
        while not stop.is_set():
            for served in servers:  # from the database: the API's rate limits are the test's subject
                with served.services.db.read() as session:
                    waiting = list(session.scalars(select(File.id).where(File.status == "uploaded")))
                for file_id in waiting:
                    validate_file(WorkerContext(served.settings), file_id)
            stop.wait(0.2)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield servers.append
    stop.set()
    thread.join(timeout=10)


def transfer(*args: str, source: str, source_key: str, target: LiveServing, state: Path,
             base_model: str = f"*={DEMO_BASE_MODEL}") -> Any:
    return CliRunner().invoke(main, ["transfer", *args, "--source-base-url", source, "--source-api-key", source_key,
                                     "--base-url", target.base_url + "/v1", "--api-key", target.key,
                                     "--state-dir", str(state), "--base-model", base_model],
                              catch_exceptions=False)


def test_transfer_plans_and_copies_jobs_once_through_faults_of_the_source(start_serving, validating_worker,
                                                                          tmp_path: Path) -> None:
    # A source with three jobs: explicit and "auto" hyperparameters, DPO, a suffix and metadata; a source
    # that rate-limits (a real 429 with retry-after after 5 requests in 2 s).
    source: LiveServing = start_serving(rate_limit_requests_per_key=5, rate_limit_window_seconds=2)
    target: LiveServing = start_serving(min_training_examples=12)
    validating_worker(source)
    validating_worker(target)
    upstream = source.client(max_retries=8)  # the test too meets the rate limit
    train = upstream.files.create(file=("facts.jsonl", chat_lines(14, "facts")), purpose="fine-tune")
    valid = upstream.files.create(file=("facts-valid.jsonl", chat_lines(12, "valid")), purpose="fine-tune")
    small = upstream.files.create(file=("small.jsonl", chat_lines(10, "small")), purpose="fine-tune")
    prefs = upstream.files.create(file=("prefs.jsonl", b"".join(json.dumps({
        "input": {"messages": [{"role": "user", "content": f"Pick {i}"}]},
        "preferred_output": [{"role": "assistant", "content": f"good {i}"}],
        "non_preferred_output": [{"role": "assistant", "content": f"bad {i}"}]}).encode() + b"\n" for i in range(14))),
        purpose="fine-tune")
    while any(upstream.files.retrieve(f.id).status == "uploaded" for f in (train, valid, small, prefs)):
        time.sleep(0.5)
    sft = upstream.fine_tuning.jobs.create(
        model=DEMO_BASE_MODEL, training_file=train.id, validation_file=valid.id, suffix="facts", seed=7,
        metadata={"team": "search"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "learning_rate_multiplier": "auto"}}})
    dpo = upstream.fine_tuning.jobs.create(model=DEMO_BASE_MODEL, training_file=prefs.id, method={
        "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "batch_size": "auto"}}})
    too_small = upstream.fine_tuning.jobs.create(model=DEMO_BASE_MODEL, training_file=small.id)

    proxy = FaultProxy(source.base_url)
    try:
        state = tmp_path / "state"
        # A rejected source key stops at once and says so.
        refused = transfer("plan", source=proxy.base_url, source_key="sk-wrong", target=target, state=state)
        assert refused.exit_code == 1 and "source rejected the API key (HTTP 401)" in refused.output

        # The plan changes nothing on either end.
        planned = transfer("plan", source=proxy.base_url, source_key=source.key, target=target, state=state)
        assert planned.exit_code == 0, planned.output
        assert "3 jobs at the source; 3 can be copied." in planned.output
        assert "hyperparameters: {'n_epochs': 3}; left to ftaas: batch_size, learning_rate_multiplier" in planned.output
        assert "hyperparameters: {'beta': 0.2}; left to ftaas: n_epochs, batch_size, learning_rate_multiplier" in \
            planned.output
        assert "suffix: facts  seed: 7" in planned.output and "tokens to train: ~" in planned.output
        assert list(target.client().fine_tuning.jobs.list()) == [] and list(target.client().files.list()) == []

        # The copy, through a 500 on a job listing, a 500 on a download, and the source's 429s (the plan's
        # downloads are kept: a second run makes enough requests to meet the rate limit).
        proxy.fail("/fine_tuning/jobs", 500, times=1)
        proxy.fail(f"/files/{valid.id}/content", 500, times=2)
        copied = transfer("copy", source=proxy.base_url, source_key=source.key, target=target, state=state)
        assert copied.exit_code == 1, copied.output  # the small file's job is refused by the target
        assert f"{too_small.id} -> -  failed" in copied.output
        assert f"source file {small.id}" in copied.output and "12" in copied.output  # the target's rule, named
        statuses = [status for _, _, status in proxy.seen]
        assert statuses.count(500) == 3 and 429 in statuses, statuses
        made = {job.metadata["transfer_source_job"]: job for job in target.client().fine_tuning.jobs.list()}
        assert set(made) == {sft.id, dpo.id}
        copy = made[sft.id]
        assert copy.model == DEMO_BASE_MODEL and copy.seed == 7 and copy.user_provided_suffix == "facts"
        assert copy.metadata == {"team": "search", "transfer_source_job": sft.id,
                                 "transfer_source_model": DEMO_BASE_MODEL}
        assert copy.method.supervised.hyperparameters.n_epochs == 3
        assert made[dpo.id].method.type == "dpo" and made[dpo.id].method.dpo.hyperparameters.beta == 0.2
        assert target.client().files.content(copy.training_file).content == chat_lines(14, "facts")
        assert target.client().files.content(copy.validation_file).content == chat_lines(12, "valid")

        # A re-run makes nothing twice, with its state or without it (same files found, same jobs answered).
        files_before = sorted(f.id for f in target.client().files.list())
        for directory in (state, tmp_path / "fresh"):
            again = transfer("copy", source=proxy.base_url, source_key=source.key, target=target, state=directory)
            assert f"{sft.id} -> {copy.id}" in again.output, again.output
            assert sorted(j.id for j in target.client().fine_tuning.jobs.list()) == sorted(j.id for j in made.values())
            assert sorted(f.id for f in target.client().files.list()) == files_before

        # A source file that arrives malformed is reported with its source id; the other jobs go on.
        proxy.corrupt(f"/files/{train.id}/content")
        broken = transfer("copy", source=proxy.base_url, source_key=source.key, target=target,
                          state=tmp_path / "corrupt")
        assert f"source file {train.id}" in broken.output and "failed the target's validation" in broken.output
        assert f"{dpo.id} -> {made[dpo.id].id}  existing" in broken.output or \
            f"{dpo.id} -> {made[dpo.id].id}  created" in broken.output
    finally:
        proxy.close()


def test_distill_asks_before_spending_resumes_where_it_stopped_and_trains_on_the_answers(
        start_serving, make_adapter, validating_worker, tmp_path: Path) -> None:
    source: LiveServing = start_serving()
    target: LiveServing = start_serving()
    validating_worker(source)
    validating_worker(target)
    retiring = source.register(make_adapter(11), "retiring")  # the model about to stop answering
    upstream = source.client()
    train = upstream.files.create(file=("facts.jsonl", chat_lines(12, "facts")), purpose="fine-tune")
    while upstream.files.retrieve(train.id).status == "uploaded":
        time.sleep(0.1)
    job = upstream.fine_tuning.jobs.create(model=DEMO_BASE_MODEL, training_file=train.id)
    proxy = FaultProxy(source.base_url)
    state = tmp_path / "state"
    distill = ["distill", "--source-model", retiring, "--prompts-from-job", job.id, "--max-tokens", "12",
               "--concurrency", "1", "--retries", "1", "--suffix", "copy", "--include-truncated"]  # the demo model rambles
    try:
        # Without --yes and without a terminal it asks nothing of the source and says why.
        refused = transfer(*distill, source=proxy.base_url, source_key=source.key, target=target, state=state,
                           base_model=DEMO_BASE_MODEL)
        assert refused.exit_code == 1 and "12 requests" in refused.output and "add --yes" in refused.output
        assert proxy.requests_to("POST", "/chat/completions") == 0

        # The source fails for good after five answers: the run stops, keeping them ...
        proxy.fail("/chat/completions", 500, times=1000, after=5)
        stopped = transfer(*distill, "--yes", source=proxy.base_url, source_key=source.key, target=target,
                           state=state, base_model=DEMO_BASE_MODEL)
        assert stopped.exit_code == 1 and "run again to resume" in stopped.output, stopped.output
        assert list(target.client().fine_tuning.jobs.list()) == []
        # ... and the next run asks only for the other seven.
        proxy.faults.clear()
        before = proxy.requests_to("POST", "/chat/completions")
        resumed = transfer(*distill, "--yes", source=proxy.base_url, source_key=source.key, target=target,
                           state=state, base_model=DEMO_BASE_MODEL)
        assert resumed.exit_code == 0, resumed.output
        assert "7 requests" in resumed.output and "(5 done before)" in resumed.output
        assert proxy.requests_to("POST", "/chat/completions") - before == 7
        job_id = resumed.output.strip().splitlines()[-1]
        made = target.client().fine_tuning.jobs.retrieve(job_id)
        assert made.model == DEMO_BASE_MODEL and made.user_provided_suffix == "copy"
        assert made.metadata["transfer_distilled_from"] == retiring

        # The training file holds the source model's own answers to the job's prompts.
        lines = [json.loads(line) for line in target.client().files.content(made.training_file).text.splitlines()]
        assert len(lines) == 12
        for line in lines[:3]:
            asked = upstream.chat.completions.create(model=retiring, messages=line["messages"][:-1], max_tokens=12,
                                                     temperature=0)
            assert line["messages"][-1]["content"] == asked.choices[0].message.content
        assert [line["messages"][0]["content"] for line in lines] == [f"facts question {i}?" for i in range(12)]

        # Run again: nothing asked, nothing made, the same job.
        before = proxy.requests_to("POST", "/chat/completions")
        again = transfer(*distill, "--yes", source=proxy.base_url, source_key=source.key, target=target, state=state,
                         base_model=DEMO_BASE_MODEL)
        assert again.output.strip().splitlines()[-1] == job_id
        assert proxy.requests_to("POST", "/chat/completions") == before
        assert [j.id for j in target.client().fine_tuning.jobs.list()] == [job_id]

        # Prompts from the source's stored completions, filtered by metadata.
        for i in range(10):
            upstream.chat.completions.create(model=retiring, messages=[{"role": "user", "content": f"stored {i}"}],
                                             max_tokens=4, store=True, metadata={"use": "support"})
        upstream.chat.completions.create(model=retiring, messages=[{"role": "user", "content": "other"}],
                                         max_tokens=4, store=True, metadata={"use": "other"})
        stored = transfer("distill", "--source-model", retiring, "--prompts-from-stored-completions",
                          "--metadata", "use=support", "--max-tokens", "8", "--include-truncated", "--yes", source=proxy.base_url,
                          source_key=source.key, target=target, state=state, base_model=DEMO_BASE_MODEL)
        assert stored.exit_code == 0 and "10 prompts x 1: 10 requests" in stored.output, stored.output
        distilled = target.client().fine_tuning.jobs.retrieve(stored.output.strip().splitlines()[-1])
        prompts = [json.loads(line)["messages"][0]["content"]
                   for line in target.client().files.content(distilled.training_file).text.splitlines()]
        assert sorted(prompts) == sorted(f"stored {i}" for i in range(10))
    finally:
        proxy.close()


def test_compare_measures_how_closely_a_copy_answers_like_its_original_even_after_the_original_retired(
        start_serving, make_adapter, tmp_path: Path) -> None:
    source: LiveServing = start_serving()
    target: LiveServing = start_serving()
    original = source.register(make_adapter(21), "retiring")
    exact_copy = target.register(make_adapter(21), "copy")  # the same weights, served here
    other = target.register(make_adapter(22), "other")
    prompts = tmp_path / "held-out.jsonl"
    prompts.write_bytes(chat_lines(12, "held-out"))
    proxy = FaultProxy(source.base_url)
    state = tmp_path / "state"

    def compare(model: str, *extra: str) -> Any:
        return CliRunner().invoke(main, [
            "transfer", "compare", "--source-model", original, "--model", model, "--prompts-file", str(prompts),
            "--max-tokens", "10", "--yes", "--source-base-url", proxy.base_url, "--source-api-key", source.key,
            "--base-url", target.base_url + "/v1", "--api-key", target.key, "--state-dir", str(state), *extra],
            catch_exceptions=False)

    try:
        same = compare(exact_copy, "--output", str(tmp_path / "same"))
        assert same.exit_code == 0, same.output
        assert "agreement (exact)                  1.000" in same.output and "(12/12)" in same.output
        report = json.loads((tmp_path / "same" / "report.json").read_text())
        assert report["summary"]["agreement"]["rate"] == 1.0 and report["summary"]["agreement"]["ci_low"] > 0.7
        assert report["models"] == {"reference": original, "candidate": exact_copy}
        items = [json.loads(line) for line in (tmp_path / "same" / "items.jsonl").read_text().splitlines()]
        assert len(items) == 12 and all(item["similarity"] == 1.0 for item in items)

        # Another adapter answers differently; judged by a model of the target (its replies parsed or counted).
        different = compare(other, "--output", str(tmp_path / "other"), "--judge-model", DEMO_BASE_MODEL)
        assert different.exit_code == 0, different.output
        summary = json.loads((tmp_path / "other" / "report.json").read_text())["summary"]
        assert summary["agreement"]["rate"] < 0.5 and summary["mean_similarity"] < 1
        judged = [json.loads(line) for line in (tmp_path / "other" / "items.jsonl").read_text().splitlines()]
        assert all("judge_reply" in item for item in judged)  # the judge was asked about every item
        source_requests = proxy.requests_to("POST", "/chat/completions")
        assert source_requests == 12  # the original's answers were asked for once, for both comparisons
    finally:
        proxy.close()
    # The original is gone: its kept answers still compare.
    retired = compare(other, "--output", str(tmp_path / "retired"))
    assert retired.exit_code == 0, retired.output
    assert json.loads((tmp_path / "retired" / "report.json").read_text())["summary"]["agreement"] == \
        summary["agreement"]
