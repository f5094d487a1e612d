"""Fault injection on a cluster deployment: PostgreSQL, Redis (a private redis-server) and the S3 server each
sit behind a TCP proxy the test cuts (tests/faults.py), with real API, relay and worker processes. For each
dependency, a 12 s outage while a job trains and one while it publishes end with the job `succeeded` on its
first attempt, and the API answers every request of the outage promptly (a 503 where the request needs the
missing dependency, never a hang or another 5xx). The broker's outage during training is a real restart: the
redis-server is killed and started again empty. The figures go to docs/reliability.md."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from tests.conftest import S3_CREDENTIALS, created_database
from tests.e2e.servers import LiveServer, start_cluster, upload_processed, wait_for
from tests.factories import training_jsonl
from tests.faults import RedisServer, TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: Longer than every timeout a request or a worker meets on the way (10 s statement and S3 read timeouts),
#: so each outage is waited out rather than slipped through.
OUTAGE_SECONDS = 12
#: distinct training data per case (a fixed offset: str hashes change from process to process)
OFFSETS = {("s3", "publish"): 100, ("postgresql", "training"): 300, ("postgresql", "publish"): 400,
           ("redis", "training"): 500, ("redis", "publish"): 600}
PROMPT_SECONDS = 10  # the longest any API request may take during an outage


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path, postgres_server: str,
           s3_endpoint: str) -> Iterator[tuple[LiveServer, dict[str, TcpProxy], RedisServer]]:
    # A database, a broker and a bucket of its own: the session's cluster deployment must not see its work.
    with created_database(postgres_server, "ftaas_faults") as database_url:
        broker = RedisServer(tmp_path_factory.mktemp("redis"))
        urls = {"postgresql": database_url, "redis": broker.url, "s3": s3_endpoint}
        proxied = {name: TcpProxy.in_front_of(url) for name, url in urls.items()}
        proxies = {name: proxy for name, (proxy, _) in proxied.items()}
        bucket = f"ftaas-faults-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", **S3_CREDENTIALS).create_bucket(Bucket=bucket)
        server = start_cluster(
            tmp_path_factory.mktemp("faults"), model_cache_dir,
            database_url=proxied["postgresql"][1], redis_url=proxied["redis"][1], s3_endpoint=proxied["s3"][1],
            bucket=bucket, s3_credentials=S3_CREDENTIALS,
            # The lease outlives the database outage (the keeper renews every TTL/3: outages under 2/3 of it).
            FTAAS_LEASE_TTL_SECONDS="45")
        yield server, proxies, broker
        server.stop()
        for proxy in proxies.values():
            proxy.close()
        broker.kill()


def probe(server: LiveServer, path: str) -> tuple[int, float]:
    started = time.monotonic()
    try:
        status = httpx.get(f"http://127.0.0.1:{server.port}{path}", timeout=PROMPT_SECONDS + 20,
                           headers={"Authorization": f"Bearer {server.api_key}"}).status_code
    except httpx.HTTPError:
        status = 0
    return status, time.monotonic() - started


def progress(client: Any, job_id: str) -> tuple[int, int]:
    """(steps reported, total steps) from the newest metrics event ("Step 7/90: ...")."""
    for event in client.fine_tuning.jobs.list_events(job_id, limit=20):
        if event.type == "metrics":
            done, total = event.message.split(":", 1)[0].removeprefix("Step ").split("/")
            return int(done), int(total)
    return 0, 1


@contextlib.contextmanager
def outage(proxies: dict[str, TcpProxy], broker: RedisServer, dependency: str, phase: str) -> Iterator[None]:
    """The broker's outage while a job trains is a restart of the real redis-server (it comes back empty);
    the others cut the dependency's proxy."""
    with broker.restarted() if (dependency, phase) == ("redis", "training") else proxies[dependency].outage("cut"):
        yield


# The store cut during training alone is tested at the worker (tests/worker/test_outages.py); here it is cut
# through the publish, which is where a finished job has the most to lose.
@pytest.mark.parametrize("dependency, phase", [("s3", "publish"), ("postgresql", "training"), ("postgresql", "publish"),
                                               ("redis", "training"), ("redis", "publish")])
def test_an_outage_costs_time_not_the_job(faulty: tuple[LiveServer, dict[str, TcpProxy], RedisServer],
                                             dependency: str, phase: str) -> None:
    """`publish`: the job saves one checkpoint only, at its end. For the store, training runs through the
    outage, and the final checkpoint and the adapter's upload meet it. For the others, the store is cut first
    so that the finished job waits in its publish; the outage begins there and the store comes back with it."""
    server, proxies, broker = faulty
    client = server.client()
    file = upload_processed(client, f"{dependency}-{phase}.jsonl",
                            training_jsonl(40, offset=OFFSETS[dependency, phase]))
    options = {"n_checkpoints": 1} if phase == "publish" else {}
    job = client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=file.id, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 2}, **options}})
    wait_for(lambda: progress(client, job.id)[0] >= 3, what="training to start")
    held = phase == "publish" and dependency != "s3"
    if held:
        proxies["s3"].cut()
        wait_for(lambda: (lambda done, total: done == total)(*progress(client, job.id)), timeout=180,
                 what="the training's last step (the job then waits in its publish)")
        assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
    path = {"s3": f"/v1/files/{file.id}/content", "postgresql": f"/v1/fine_tuning/jobs/{job.id}",
            "redis": f"/v1/fine_tuning/jobs/{job.id}"}[dependency]
    answers: list[tuple[int, float]] = []
    with outage(proxies, broker, dependency, phase):
        if held:
            proxies["s3"].restore()
        ends = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < ends:
            answers.append(probe(server, path))
            time.sleep(0.5)
        # Training needs the store (checkpoints, the adapter) and the database, but not the broker: a job may
        # finish while Redis is away. With the store cut, it cannot have.
        unfinished = client.fine_tuning.jobs.retrieve(job.id).status if dependency == "s3" else "running"
    assert unfinished == "running", "the job finished before the outage ended: it did not meet the outage"
    job = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
                   timeout=300, interval=1, what=f"the job after the {dependency} outage")
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    longest = max(seconds for _, seconds in answers)
    statuses = sorted({status for status, _ in answers})
    print(f"{dependency} during {phase}: {len(answers)} API requests during the outage, statuses {statuses}, longest "
          f"{longest:.1f} s; job {job.status}; "
          f"{[m for m in messages if m.startswith(('Resuming', 'Job re-queued', 'Worker lost'))] or 'not interrupted'}")
    assert job.status == "succeeded", (job.error, messages)
    if (dependency, phase) == ("redis", "training"):
        # Celery terminates (SIGTERM) the task it can no longer acknowledge; the pool process checkpoints
        # and hands the job back, and it resumes once the broker is back.
        assert any(m.startswith("Job re-queued: the worker is shutting down; checkpoint saved") for m in messages)
        assert any(m.startswith("Resuming from the checkpoint") for m in messages), messages
    assert not any("attempt 2" in m or m.startswith("Worker lost") for m in messages), messages
    assert longest < PROMPT_SECONDS, answers
    assert set(statuses) <= {200, 503}, answers
    if dependency != "redis":  # the API reads neither the broker nor, for this request, anything else
        assert 503 in statuses, answers
