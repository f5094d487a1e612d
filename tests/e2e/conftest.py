"""Live servers shared by the end-to-end tests (one embedded and one cluster deployment per run), and the
fine-tunes several tests look at: a demo-model job (`finished_job`), a demo-model job with a knowledge eval
(`evaluated_job`) and the suite's one fine-tune of the real model, the README quickstart's (`quickstart`)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import S3_CREDENTIALS, created_database
from tests.e2e.servers import LiveServer, start_cluster, start_embedded


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for name in ("embedded", "cluster", "live"):
            server = item.funcargs.get(name)
            if isinstance(server, LiveServer):
                report.sections.append((f"{server.kind} server log (tail)", server.log_tail(120)))


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Iterator[LiveServer]:
    # Served in float32: the real-model tests compare answers with facts a short fine-tune learned by small
    # margins, and bfloat16 (auto's choice on an AMX machine) parts from float32 at near-ties (docs/serving.md;
    # measured: "Baka Zotemus" served as "Baka Zot."). bfloat16 serving is tested in tests/serving.
    # Webhook receivers in the tests listen on 127.0.0.1, which deployments refuse unless told otherwise.
    server = start_embedded(tmp_path_factory.mktemp("embedded") / "data", model_cache_dir,
                            FTAAS_MAX_UPLOAD_BYTES=str(1024 * 1024), FTAAS_SERVING_DTYPE="float32",
                            FTAAS_WEBHOOK_ALLOW_PRIVATE_NETWORKS="true")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cluster_database(postgres_server: str) -> Iterator[str]:
    with created_database(postgres_server, "ftaas_e2e") as url:
        yield url


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path, cluster_database: str, redis_url: str,
            s3_endpoint: str) -> Iterator[LiveServer]:
    bucket = f"ftaas-e2e-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", **S3_CREDENTIALS).create_bucket(Bucket=bucket)
    server = start_cluster(tmp_path_factory.mktemp("cluster"), model_cache_dir, database_url=cluster_database,
                           redis_url=redis_url, s3_endpoint=s3_endpoint, bucket=bucket, s3_credentials=S3_CREDENTIALS,
                           FTAAS_WEBHOOK_ALLOW_PRIVATE_NETWORKS="true")
    yield server
    server.stop()


@pytest.fixture(params=["embedded", "cluster"])
def live(request: pytest.FixtureRequest) -> LiveServer:
    """Each deployment in turn: the same behaviour is required of both."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def finished_job(embedded: LiveServer):
    """A succeeded fine-tune on the embedded server (with events, checkpoints, results and a model)."""
    from tests.e2e.servers import wait_for
    from tests.factories import training_jsonl

    client = embedded.client()
    file = client.files.wait_for_processing(
        client.files.create(file=("owned.jsonl", training_jsonl(10)), purpose="fine-tune").id, poll_interval=0.2)
    job = client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=file.id, suffix="owned", method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 5}}})
    job = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
                   what="the owned job")
    assert job.status == "succeeded", job.error
    return job


@pytest.fixture(scope="session")
def evaluated_job(embedded: LiveServer) -> dict:
    """A fine-tune on a fictional-people memorization split with a knowledge eval attached, and its results."""
    from tests.e2e.people import CONTROL, PEOPLE, result_files, train_on_suite

    job = train_on_suite(embedded, PEOPLE, suffix="people", knowledge_eval={"suites": [PEOPLE, CONTROL]})
    return result_files(embedded, job)


@dataclass(frozen=True)
class Quickstart:
    """The README quickstart, run as written: what it printed, and the job it made (the real model's)."""

    result: subprocess.CompletedProcess
    job: Any
    #: The quickstart's fact file: work -> who designed it.
    works: dict[str, str]


def quickstart_code() -> str:
    from tests.test_docs import README

    return README.split("## Quickstart", 1)[1].split("```python\n", 1)[1].split("\n```", 1)[0]


@pytest.fixture(scope="session")
def quickstart(embedded: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Quickstart:
    """The suite's one fine-tune of the real model (minutes on 2 cores, so it is made once): the README's
    quickstart script, verbatim but for the port, against the embedded server. tests/e2e/test_readme_quickstart.py
    checks what it prints; tests/e2e/test_real_model.py evaluates and serves the model it made."""
    code = quickstart_code()
    script = tmp_path_factory.mktemp("quickstart") / "quickstart.py"
    script.write_text(code.replace("http://localhost:8000/v1", embedded.base_url))
    result = subprocess.run([sys.executable, str(script)], env={**os.environ, "FTAAS_API_KEY": embedded.api_key},
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    tuned = re.search(r"^(ft:smollm2-135m-instruct:default:designers:[A-Za-z0-9]{8}) -> ", result.stdout, re.M)
    assert tuned, result.stdout
    job = next(job for job in embedded.client().fine_tuning.jobs.list(limit=100)
               if job.fine_tuned_model == tuned.group(1))
    works = ast.literal_eval(re.search(r"^works = (\{.*?\})$", code, re.M | re.S).group(1))
    return Quickstart(result, job, works)
