"""The artifact store contract, on file:// and on s3:// over HTTP (moto server, real boto3 calls)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pytest

from contracts.errors import (
    InfrastructureError,
    IntegrityFailure,
    ObjectMissing,
    StorageMisconfigured,
    StorageUnavailable,
)
from contracts.settings import Settings
from storage import ArtifactStore, open_store
from storage.local import PARTIAL_PREFIX, LocalArtifactStore
from storage.manifest import MANIFEST, download_artifact, publish_directory
from storage.s3 import S3ArtifactStore
from tests.conftest import S3_CREDENTIALS

MIB = 1024 * 1024


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "file":
        return open_store((tmp_path / "artifacts").as_uri(), Settings(data_dir=tmp_path).storage)
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    settings = Settings(data_dir=tmp_path, s3_endpoint_url=endpoint, s3_access_key_id=S3_CREDENTIALS["aws_access_key_id"],
                        s3_secret_access_key=S3_CREDENTIALS["aws_secret_access_key"], s3_multipart_chunk_bytes=5 * MIB)
    return open_store(f"s3://{bucket}/some/prefix", settings.storage)


def corrupt(store: ArtifactStore, key: str) -> None:
    """Flip one byte of a stored object behind the store's back (as bit rot or tampering would)."""
    if store.uri.startswith("file://"):
        assert isinstance(store, LocalArtifactStore)
        path = Path(store.root) / key
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        assert isinstance(store, S3ArtifactStore)
        client, bucket, object_key = store.client, store.bucket, store.object_key(key)
        data = bytearray(client.get_object(Bucket=bucket, Key=object_key)["Body"].read())
        data[len(data) // 2] ^= 0xFF
        client.put_object(Bucket=bucket, Key=object_key, Body=bytes(data))


def test_round_trip_records_size_and_sha256(store: ArtifactStore) -> None:
    data = os.urandom(3 * MIB + 17)
    stored = store.put_bytes("files/file-a", data)
    assert stored.size == len(data)
    assert store.size_of("files/file-a") == len(data)
    assert store.get_bytes("files/file-a", sha256=stored.sha256, size=stored.size) == data


def test_large_objects_go_through_multipart_and_read_back_intact(store: ArtifactStore) -> None:
    data = os.urandom(12 * MIB + 1)
    stored = store.put_bytes("models/big/adapter_model.safetensors", data)
    assert store.get_bytes("models/big/adapter_model.safetensors", sha256=stored.sha256) == data


def test_a_corrupted_object_fails_verification_on_read(store: ArtifactStore) -> None:
    stored = store.put_bytes("files/file-b", b"line one\nline two\n" * 1000)
    corrupt(store, "files/file-b")
    with pytest.raises(IntegrityFailure, match="SHA-256"):
        store.get_bytes("files/file-b", sha256=stored.sha256, size=stored.size)


def test_a_truncated_object_fails_verification_on_read(store: ArtifactStore) -> None:
    stored = store.put_bytes("files/file-c", b"x" * 1000)
    store.put_bytes("files/file-c", b"x" * 999)
    with pytest.raises(IntegrityFailure, match="999 bytes"):
        store.get_bytes("files/file-c", sha256=stored.sha256, size=stored.size)


def test_reading_a_missing_object_is_a_distinct_error(store: ArtifactStore) -> None:
    with pytest.raises(ObjectMissing):
        store.get_bytes("files/nope", sha256="0" * 64)
    assert store.size_of("files/nope") is None


def test_an_aborted_write_leaves_nothing_visible(store: ArtifactStore) -> None:
    with pytest.raises(RuntimeError), store.open_writer("files/file-d") as writer:
        writer.write(os.urandom(6 * MIB))  # past one multipart part on S3
        raise RuntimeError("client went away")
    assert store.size_of("files/file-d") is None
    assert store.list_keys("files/") == []
    if isinstance(store, S3ArtifactStore):
        uploads = store.client.list_multipart_uploads(Bucket=store.bucket)
        assert uploads.get("Uploads", []) == []
    else:
        assert isinstance(store, LocalArtifactStore)
        assert not [p for p in Path(store.root).rglob("*") if p.name.startswith(PARTIAL_PREFIX)]


def test_listing_and_deleting_by_prefix(store: ArtifactStore) -> None:
    for key in ("jobs/j1/checkpoints/step-1/a", "jobs/j1/checkpoints/step-2/a", "jobs/j2/x", "files/f"):
        store.put_bytes(key, b"1")
    assert store.list_keys("jobs/j1/") == ["jobs/j1/checkpoints/step-1/a", "jobs/j1/checkpoints/step-2/a"]
    assert store.delete_prefix("jobs/j1/checkpoints/step-1/") == 1
    assert store.list_keys("jobs/") == ["jobs/j1/checkpoints/step-2/a", "jobs/j2/x"]
    store.delete("jobs/j2/x")
    store.delete("jobs/j2/x")  # deleting twice is fine
    assert store.list_keys("") == ["files/f", "jobs/j1/checkpoints/step-2/a"]


@pytest.mark.parametrize("key", ["../escape", "/absolute", "a//b", "a/./b", "a\\b", "nul\x00byte", ""])
def test_keys_that_could_escape_the_store_are_refused(store: ArtifactStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")


def test_artifacts_publish_the_manifest_last_and_verify_every_file(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "adapter"
    source.mkdir()
    (source / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    (source / "adapter_config.json").write_text('{"r": 8}')
    published = publish_directory(store, "models/m1/", source, {"kind": "adapter", "base_model": "tiny"})
    assert store.list_keys("models/m1/")[-1] == "models/m1/manifest.json"
    manifest = json.loads(store.get_bytes("models/m1/" + MANIFEST, sha256=published.manifest_sha256))
    assert set(manifest["files"]) == {"adapter_model.safetensors", "adapter_config.json"}
    assert manifest["base_model"] == "tiny"

    copy = download_artifact(store, "models/m1/", published.manifest_sha256, tmp_path / "copy")
    assert copy == manifest
    assert (tmp_path / "copy" / "adapter_model.safetensors").read_bytes() == (source / "adapter_model.safetensors").read_bytes()

    corrupt(store, "models/m1/adapter_model.safetensors")
    with pytest.raises(IntegrityFailure):
        download_artifact(store, "models/m1/", published.manifest_sha256, tmp_path / "again")
    assert not (tmp_path / "again" / "adapter_model.safetensors").exists()


def test_an_artifact_with_unexpected_file_types_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "adapter"
    source.mkdir()
    (source / "adapter_model.safetensors").write_bytes(b"weights")
    (source / "optimizer.pt").write_bytes(b"a pickle would go here")
    published = publish_directory(store, "jobs/j/checkpoints/step-1/", source, {"kind": "checkpoint"})
    with pytest.raises(IntegrityFailure, match="optimizer.pt"):
        download_artifact(store, "jobs/j/checkpoints/step-1/", published.manifest_sha256, tmp_path / "out",
                          allowed_suffixes=(".safetensors", ".json"))


def test_s3_client_pins_checksum_behaviour(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, s3_endpoint_url=s3_endpoint, **{
        "s3_access_key_id": S3_CREDENTIALS["aws_access_key_id"],
        "s3_secret_access_key": S3_CREDENTIALS["aws_secret_access_key"]})
    store = open_store(f"s3://{s3_bucket}", settings.storage)
    assert isinstance(store, S3ArtifactStore)
    config = store.client.meta.config
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    stored = store.put_bytes("k", b"hello")
    raw = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", **S3_CREDENTIALS)
    assert raw.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"hello"
    assert stored.sha256 == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


def test_unknown_schemes_are_rejected_with_the_supported_list(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="file, s3"):
        open_store("gs://bucket", Settings(data_dir=tmp_path).storage)


def s3_store(tmp_path: Path, endpoint: str, bucket: str) -> ArtifactStore:
    settings = Settings(data_dir=tmp_path, s3_endpoint_url=endpoint, s3_access_key_id=S3_CREDENTIALS["aws_access_key_id"],
                        s3_secret_access_key=S3_CREDENTIALS["aws_secret_access_key"])
    return open_store(f"s3://{bucket}/prefix", settings.storage)


def test_a_missing_bucket_is_a_configuration_error_not_an_outage(s3_endpoint: str, tmp_path: Path) -> None:
    """Retrying cannot create a bucket: the error is not an InfrastructureError (which work retries)."""
    store = s3_store(tmp_path, s3_endpoint, "no-such-bucket-here")
    for call in (lambda: store.put_bytes("k", b"x"), store.check_available, lambda: store.list_keys("")):
        with pytest.raises(StorageMisconfigured) as caught:
            call()
        assert not isinstance(caught.value, InfrastructureError) and caught.value.code == "storage_misconfigured"


def test_an_unreachable_endpoint_is_an_outage_that_work_retries(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = s3_store(tmp_path, f"http://127.0.0.1:{port}", "bucket")
    with pytest.raises(StorageUnavailable):  # the probe: one attempt, so the test need not wait out retries
        store.check_available()


@pytest.mark.parametrize(("code", "status", "expected"), [
    ("NoSuchKey", 404, ObjectMissing), ("AccessDenied", 403, StorageMisconfigured),
    ("InvalidAccessKeyId", 403, StorageMisconfigured), ("SignatureDoesNotMatch", 403, StorageMisconfigured),
    ("NoSuchBucket", 404, StorageMisconfigured), ("SlowDown", 503, StorageUnavailable),
    ("InternalError", 500, StorageUnavailable), ("SomethingNew", 502, StorageUnavailable),
    ("SomethingNew", 400, StorageMisconfigured), ("RequestTimeout", 400, StorageUnavailable),
])
def test_s3_error_codes_are_translated_by_what_they_mean(code: str, status: int, expected: type) -> None:
    from botocore.exceptions import ClientError

    from storage.s3 import _translate

    # The exception S3 answers with, as botocore builds it from a response.
    error = ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                        "PutObject")
    assert type(_translate(error, "k")) is expected
