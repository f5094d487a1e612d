"""Outages of the artifact store cost a job time, never an attempt: the worker waits them out where the work
is (worker.outages), and past the deadline fails the job with `dependency_outage`.

The store is the real S3 server (moto, over HTTP) behind a TCP proxy the test cuts (tests/faults.py).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import pytest

from contracts.errors import DependencyOutage, InvalidRequest, LeaseLost, StorageUnavailable
from contracts.settings import Settings
from tests.conftest import S3_CREDENTIALS
from tests.faults import TcpProxy
from tests.worker.test_runner import Bench, make_bench
from tests.worker.test_training_engine import varied_chats
from worker.context import WorkerContext
from worker.jobs.runner import run_job
from worker.outages import OutagePolicy, ride_out


# ------------------------------------------------------------------------------------------ the policy
def flaky(failures: int, error: Exception) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return "done"

    return calls, call


def test_infrastructure_errors_are_retried_with_growing_jittered_delays_until_the_call_succeeds() -> None:
    calls, call = flaky(5, StorageUnavailable("down"))
    delays: list[float] = []
    policy = OutagePolicy(deadline_seconds=60, first_delay=0.5, max_delay=4)
    assert ride_out(call, what="x", policy=policy, sleep=delays.append, rng=random.Random(1)) == "done"
    assert len(calls) == 6 and len(delays) == 5
    caps = [min(4, 0.5 * 2 ** retry) for retry in range(5)]
    assert all(0 <= delay <= cap for delay, cap in zip(delays, caps, strict=True))


def test_a_worker_waits_at_most_the_configured_delay_between_retries(tmp_path: Path) -> None:
    policy = WorkerContext(Settings(data_dir=tmp_path, outage_max_retry_delay_seconds=4)).outages
    assert policy.max_delay == 4 and policy.deadline_seconds == 1800
    assert max(policy.delay(retry, random.Random(retry)) for retry in range(40)) <= 4
    assert WorkerContext(Settings(data_dir=tmp_path)).outages.max_delay == 30


def test_other_errors_pass_through_at_once() -> None:
    calls, call = flaky(1, InvalidRequest("bad"))
    with pytest.raises(InvalidRequest):
        ride_out(call, what="x", policy=OutagePolicy(60), sleep=lambda _: None)
    assert len(calls) == 1


def test_past_the_deadline_the_outage_is_a_clear_failure_and_a_lost_lease_ends_the_wait() -> None:
    _, call = flaky(10**6, StorageUnavailable("down"))
    with pytest.raises(DependencyOutage) as outage:
        ride_out(call, what="publish the adapter", policy=OutagePolicy(0.2, first_delay=0.05), sleep=time.sleep)
    assert outage.value.code == "dependency_outage" and "publish the adapter" in outage.value.message
    assert "artifact store is unavailable" in outage.value.message  # the public description, not the S3 text
    with pytest.raises(LeaseLost):
        ride_out(call, what="x", policy=OutagePolicy(60), alive=lambda: False, sleep=lambda _: None)


# ----------------------------------------------------------------------------------- a real outage
@pytest.fixture
def proxied_s3(s3_endpoint: str) -> TcpProxy:
    target = urlparse(s3_endpoint)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 80)
    yield proxy
    proxy.close()


def s3_bench(tmp_path: Path, model_cache_dir: Path, proxy: TcpProxy, bucket: str, **settings: object) -> Bench:
    settings.setdefault("outage_max_retry_delay_seconds", 4)  # back within seconds of the outage's end
    return make_bench(tmp_path, model_cache_dir, artifact_uri=f"s3://{bucket}/ftaas",
                      s3_endpoint_url=f"http://{proxy.address}", s3_access_key_id=S3_CREDENTIALS["aws_access_key_id"],
                      s3_secret_access_key=S3_CREDENTIALS["aws_secret_access_key"], **settings)


def attempts_and_status(bench: Bench, job_id: str) -> tuple[int, str]:
    job = bench.job(job_id)
    return job.attempt, job.status


def test_a_store_outage_during_training_and_publishing_costs_time_not_an_attempt(
        tmp_path: Path, model_cache_dir: Path, proxied_s3: TcpProxy, s3_bucket: str) -> None:
    bench = s3_bench(tmp_path, model_cache_dir, proxied_s3, s3_bucket)
    training = bench.upload(varied_chats(16))
    job_id = bench.create(training, hyperparameters={"n_epochs": 2, "batch_size": 4}, n_checkpoints=2)

    def cut_at_the_first_step() -> None:  # checkpoints and the final publish meet the outage
        deadline = time.monotonic() + 120
        while not any(m.startswith("Step ") for m in bench.messages(job_id)) and time.monotonic() < deadline:
            time.sleep(0.02)
        with proxied_s3.outage("cut"):
            time.sleep(8)

    outage = threading.Thread(target=cut_at_the_first_step)
    outage.start()
    started = time.monotonic()
    assert run_job(bench.ctx, job_id) == "succeeded"
    outage.join()
    assert time.monotonic() - started >= 8  # it did wait the outage out
    assert attempts_and_status(bench, job_id) == (1, "succeeded")
    assert bench.adapter(job_id)  # published, readable, verified


def test_an_outage_before_the_inputs_download_is_waited_out_too(
        tmp_path: Path, model_cache_dir: Path, proxied_s3: TcpProxy, s3_bucket: str) -> None:
    bench = s3_bench(tmp_path, model_cache_dir, proxied_s3, s3_bucket)
    training = bench.upload(varied_chats(12))
    job_id = bench.create(training, hyperparameters={"n_epochs": 1, "batch_size": 4})
    proxied_s3.cut()
    threading.Timer(5, proxied_s3.restore).start()
    assert run_job(bench.ctx, job_id) == "succeeded"
    assert attempts_and_status(bench, job_id) == (1, "succeeded")


def test_an_outage_longer_than_the_deadline_fails_the_job_with_a_clear_code(
        tmp_path: Path, model_cache_dir: Path, proxied_s3: TcpProxy, s3_bucket: str) -> None:
    bench = s3_bench(tmp_path, model_cache_dir, proxied_s3, s3_bucket, outage_deadline_seconds=3)
    training = bench.upload(varied_chats(12))
    job_id = bench.create(training, hyperparameters={"n_epochs": 1, "batch_size": 4})
    proxied_s3.cut()
    try:
        assert run_job(bench.ctx, job_id) == "failed"
    finally:
        proxied_s3.restore()
    job = bench.job(job_id)
    assert job.status == "failed" and job.attempt == 1
    assert job.error["code"] == "dependency_outage", job.error
    assert s3_bucket not in job.error["message"] and proxied_s3.address not in job.error["message"]
