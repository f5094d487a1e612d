"""`ftaas up` on a machine of two cores: while a person's chat computes, the training job beside it steps on
its share of the cores and the engine on the rest; once the chat is over, the job takes the machine back. The
mechanism, checked in the job's own metrics and the server's /metrics; what it buys (a chat stream at 0.72x
its idle speed instead of 0.07x, the job's steps 1.27x instead of 11x) is measured on the real model by
bench/shared_machine.py (docs/benchmarks.md)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.machine import CHECK_INTERVAL_SECONDS
from tests.e2e.servers import start_embedded, upload_processed, wait_for
from tests.factories import training_jsonl


def threads_by_step(client: Any, job_id: str) -> dict[int, int]:
    return {int(e.data["step"]): int(e.data["threads"]) for e in client.fine_tuning.jobs.list_events(job_id, limit=100)
            if e.type == "metrics" and e.data and "threads" in e.data}


def gauge(text: str, name: str) -> list[float]:
    return [float(value) for value in re.findall(rf"^{name}\{{[^}}]*\}} (\S+)$", text, flags=re.MULTILINE)]


@pytest.mark.slow
def test_a_chat_and_a_training_job_share_the_cores_and_the_job_takes_them_back_after(
        tmp_path: Path, model_cache_dir: Path) -> None:
    server = start_embedded(tmp_path / "data", model_cache_dir, FTAAS_RESOURCES_CORES="2")
    try:
        client = server.client()
        metrics = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
        budget = dict(zip(re.findall(r'^ftaas_machine_thread_budget\{kind="(\w+)",state="(\w+)"\}', metrics, re.MULTILINE),
                          gauge(metrics, "ftaas_machine_thread_budget"), strict=True))
        assert budget == {("serving", "alone"): 2, ("serving", "shared"): 1, ("batch", "alone"): 2,
                          ("batch", "shared"): 1}
        ask = {"model": "ftaas-tiny", "max_tokens": 48, "extra_body": {"min_tokens": 48},
               "messages": [{"role": "user", "content": "Tell me a story."}]}
        client.chat.completions.create(**ask)  # the engine is loaded before the job starts
        file = upload_processed(client, "shared.jsonl", training_jsonl(40))
        job = client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=file.id, method={
            "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 2},
                                                 "stop_when_learned": False}})
        wait_for(lambda: len(threads_by_step(client, job.id)) >= 3, timeout=120, interval=0.5, what="training steps")
        assert set(threads_by_step(client, job.id).values()) == {2}  # alone: every core

        # A chat, back to back requests for a few seconds, while the job trains.
        chatting, answered = threading.Event(), threading.Event()
        chatting.set()
        engine_threads: list[float] = []

        def chat() -> None:
            while chatting.is_set():
                client.chat.completions.create(**ask)
                answered.set()

        talker = threading.Thread(target=chat)
        talker.start()
        try:
            assert answered.wait(60)
            # Steps that began before the chat was on the board (checked every CHECK_INTERVAL_SECONDS) may end,
            # and be recorded, a little later: under a full suite's load one did after the first answer (a step on
            # 2 threads inside the window). The window starts once those are recorded.
            time.sleep(4 * CHECK_INTERVAL_SECONDS)
            started = max(threads_by_step(client, job.id))
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                engine_threads += gauge(httpx.get(f"http://127.0.0.1:{server.port}/metrics").text,
                                        "ftaas_serving_engine_threads")
                time.sleep(0.5)
            during = max(threads_by_step(client, job.id))
        finally:
            chatting.clear()
            talker.join(timeout=60)
        assert client.fine_tuning.jobs.retrieve(job.id).status == "running", "the job ended before the chat did"
        steps = threads_by_step(client, job.id)
        shared = [steps[s] for s in steps if started + 1 < s <= during]
        assert shared and set(shared) == {1}, steps  # the job stepped on its share while the chat computed
        assert 1.0 in engine_threads, engine_threads  # and so did the engine

        # Within a few steps of the chat's end (the board's 2 s window), the job is back on both cores.
        wait_for(lambda: any(t == 2 for s, t in threads_by_step(client, job.id).items() if s > during + 1),
                 timeout=60, interval=0.5, what="the job taking the cores back")
        client.fine_tuning.jobs.cancel(job.id)
    finally:
        server.stop()
