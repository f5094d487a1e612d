"""The sweeper removes what the store holds that nothing points at, once it is older than the grace period,
and never an artifact a row points at or one young enough to be a publish in progress; on S3 it also aborts
unfinished multipart uploads. Real SQLite database, local store and the S3 server over HTTP."""

from __future__ import annotations

import os
import time
from pathlib import Path

import boto3

from contracts.settings import Settings
from db import migrate, models, projects
from storage import open_store
from storage.local import LocalArtifactStore
from tests.conftest import S3_CREDENTIALS
from worker.context import WorkerContext
from worker.sweeper import artifact_of, sweep_orphans

DAY = 86400.0


def test_objects_belong_to_their_artifact() -> None:
    assert artifact_of("models/abc/adapter_model.safetensors") == "models/abc/"
    assert artifact_of("jobs/ftjob-1/checkpoints/step-3/optimizer.safetensors") == "jobs/ftjob-1/checkpoints/step-3/"
    assert artifact_of("files/file-1") == "files/file-1"
    assert artifact_of("evals/kev-1/run/report.json") == "evals/kev-1/run/report.json"
    assert artifact_of("elsewhere/x") is None


def age(store_root: Path, key: str, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(store_root / key, (past, past))


def test_only_old_unreferenced_artifacts_are_removed(tmp_path: Path) -> None:
    ctx = WorkerContext(Settings(data_dir=tmp_path))
    migrate.upgrade(ctx.db)
    store = ctx.store
    assert isinstance(store, LocalArtifactStore)
    root = Path(store.root)
    for key in ("models/kept/adapter_model.safetensors", "models/kept/manifest.json",
                "models/orphan/adapter_model.safetensors", "models/orphan/manifest.json",
                "models/fresh/adapter_model.safetensors", "results/ftjob-x/uid/metrics.csv"):
        store.put_bytes(key, b"x")
    for key in ("models/kept/adapter_model.safetensors", "models/kept/manifest.json",
                "models/orphan/adapter_model.safetensors", "models/orphan/manifest.json",
                "results/ftjob-x/uid/metrics.csv"):
        age(root, key, 2 * DAY)
    partial = root / "models" / ".partial-abandoned"
    partial.write_bytes(b"half")
    os.utime(partial, (time.time() - 2 * DAY,) * 2)
    with ctx.db.write() as session:
        project = projects.ensure_project(session, "p")
        models.add(session, name="ft:ftaas-tiny:p:kept:00000000", uid="kept", project_id=project.id, job_id=None,
                   base_model="ftaas-tiny", storage_prefix="models/kept/", manifest_sha256="0" * 64)

    report = sweep_orphans(ctx.db, store, now=time.time(), grace_seconds=DAY)
    assert store.list_keys("models/") == ["models/fresh/adapter_model.safetensors",  # young: maybe publishing
                                          "models/kept/adapter_model.safetensors", "models/kept/manifest.json"]
    assert store.list_keys("results/") == []
    assert (report.orphaned_artifacts, report.deleted_objects, report.unfinished_writes) == (2, 3, 1)
    assert not partial.exists()


def test_unfinished_multipart_uploads_are_aborted_on_s3(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    settings = Settings(data_dir=tmp_path, s3_endpoint_url=s3_endpoint, s3_access_key_id=S3_CREDENTIALS["aws_access_key_id"],
                        s3_secret_access_key=S3_CREDENTIALS["aws_secret_access_key"])
    store = open_store(f"s3://{s3_bucket}/area", settings.storage)
    raw = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", **S3_CREDENTIALS)
    raw.create_multipart_upload(Bucket=s3_bucket, Key="area/files/file-interrupted")  # a client that went away
    assert len(raw.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])) == 1
    # moto reports every upload as initiated on 2010-11-10 (a fixed date), so "too young" is a date before it.
    initiated = raw.list_multipart_uploads(Bucket=s3_bucket)["Uploads"][0]["Initiated"].timestamp()
    assert store.sweep_unfinished(initiated - 1) == 0  # younger than the cut-off: left alone
    assert store.sweep_unfinished(time.time()) == 1
    assert raw.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
