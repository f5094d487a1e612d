"""`s3://bucket/prefix` artifact store on any S3-compatible endpoint (AWS, MinIO, Ceph, moto).

Checksum behaviour is pinned explicitly: boto3 >= 1.36 computes CRC checksums on every request by default,
which several S3-compatible stores reject. ftaas keeps its own SHA-256 in the
database and verifies it on every read, so SDK checksums are only sent where the API requires them.
Multipart uploads that fail are aborted; the chart also installs an AbortIncompleteMultipartUpload rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from contracts.errors import FTaaSError, ObjectMissing, StorageMisconfigured, StorageUnavailable
from storage.base import ArtifactStore, ObjectWriter, check_key

#: S3 error codes, by what they mean for ftaas (the pattern of MLflow's BOTO_TO_MLFLOW_ERROR table). A code
#: not listed is judged by its HTTP status: 5xx and 429 are transient, any other 4xx is a request the store
#: will refuse again (configuration), a response without one (connection errors) is transient.
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_CONFIGURATION_CODES = frozenset({
    "NoSuchBucket", "AccessDenied", "403", "AllAccessDisabled", "AccountProblem", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "TokenRefreshRequired", "InvalidBucketName",
    "AuthorizationHeaderMalformed", "PermanentRedirect", "301", "InvalidRequest", "InvalidArgument",
    "NotImplemented", "MethodNotAllowed", "KMS.DisabledException", "KMS.NotFoundException",
})
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "503",
    "ServiceUnavailable", "InternalError", "500", "RequestTimeout", "RequestTimeTooSkewed", "OperationAborted",
})


@dataclass(frozen=True)
class S3Options:
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    addressing_style: str = "path"
    multipart_chunk_bytes: int = 8 * 1024 * 1024
    #: tries per request inside boto3 (the API keeps it low: the SDKs retry a 503 themselves)
    attempts: int = 3
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 10.0


def _translate(exc: Exception, what: str) -> FTaaSError:
    """A boto error as the taxonomy's: missing object, configuration (not retried) or outage (retried)."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _MISSING_CODES:
            return ObjectMissing(f"no object at {what}")
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return StorageUnavailable(f"S3 error on {what}: {code} {exc}")
        if code in _CONFIGURATION_CODES or 400 <= status < 500:
            return StorageMisconfigured(f"S3 refused the request on {what}: {code} (check the bucket, its "
                                        f"permissions and the credentials): {exc}")
        return StorageUnavailable(f"S3 error on {what}: {code} {exc}")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StorageMisconfigured(f"no usable S3 credentials for {what}: {exc}")
    return StorageUnavailable(f"S3 unreachable on {what}: {exc}")


class S3ObjectWriter(ObjectWriter):
    """Buffers one part; small objects become one PUT, large ones a multipart upload."""

    def __init__(self, store: S3ArtifactStore, key: str) -> None:
        super().__init__(key)
        self._store = store
        self._object_key = store.object_key(key)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict] = []

    def _write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= self._store.options.multipart_chunk_bytes:
            self._flush_part()

    def _flush_part(self) -> None:
        client, bucket = self._store.client, self._store.bucket
        try:
            if self._upload_id is None:
                self._upload_id = client.create_multipart_upload(Bucket=bucket, Key=self._object_key)["UploadId"]
            number = len(self._parts) + 1
            response = client.upload_part(Bucket=bucket, Key=self._object_key, UploadId=self._upload_id,
                                          PartNumber=number, Body=bytes(self._buffer))
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, self.key) from exc
        self._parts.append({"PartNumber": number, "ETag": response["ETag"]})
        self._buffer.clear()

    def _commit(self) -> None:
        client, bucket = self._store.client, self._store.bucket
        try:
            if self._upload_id is None:
                client.put_object(Bucket=bucket, Key=self._object_key, Body=bytes(self._buffer))
            else:
                if self._buffer:
                    self._flush_part()
                client.complete_multipart_upload(Bucket=bucket, Key=self._object_key, UploadId=self._upload_id,
                                                 MultipartUpload={"Parts": self._parts})
            # Commit-then-verify: the object the database will point at must have the size we sent.
            stored = client.head_object(Bucket=bucket, Key=self._object_key)["ContentLength"]
        except (ClientError, BotoCoreError) as exc:
            self._abort()
            raise _translate(exc, self.key) from exc
        if stored != self.size:
            raise StorageUnavailable(f"S3 stored {stored} bytes for {self.key}, {self.size} were sent")

    def _abort(self) -> None:
        self._buffer.clear()
        if self._upload_id is not None:
            try:
                self._store.client.abort_multipart_upload(Bucket=self._store.bucket, Key=self._object_key,
                                                          UploadId=self._upload_id)
            except (ClientError, BotoCoreError):
                pass  # the bucket lifecycle rule removes what an abort could not
            self._upload_id = None


class S3ArtifactStore(ArtifactStore):
    def __init__(self, uri: str, options: S3Options) -> None:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"not an s3://bucket[/prefix] URI: {uri!r}")
        self.uri = uri
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.options = options

        def client(*, attempts: int, connect_timeout: float, read_timeout: float) -> Any:
            config = Config(
                signature_version="s3v4",
                s3={"addressing_style": options.addressing_style},
                retries={"max_attempts": attempts, "mode": "standard"},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            return boto3.session.Session().client(
                "s3", endpoint_url=options.endpoint_url, region_name=options.region,
                aws_access_key_id=options.access_key_id, aws_secret_access_key=options.secret_access_key,
                config=config)

        # Few attempts inside boto3: a request of the API answers a prompt 503 when the store is down, and the
        # worker waits out longer outages itself (worker.outages), with its own backoff.
        self.client = client(attempts=options.attempts, connect_timeout=options.connect_timeout_seconds,
                             read_timeout=options.read_timeout_seconds)
        # Readiness probes answer within a probe's timeout: one attempt, short timeouts.
        self.probe_client = client(attempts=1, connect_timeout=2, read_timeout=5)

    def object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _store_key(self, object_key: str) -> str:
        return object_key[len(self.prefix) + 1:] if self.prefix else object_key

    def open_writer(self, key: str) -> ObjectWriter:
        return S3ObjectWriter(self, key)

    def _read_chunks(self, key: str, chunk_size: int) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))["Body"]
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, key) from exc
        try:
            while chunk := body.read(chunk_size):
                yield chunk
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, key) from exc
        finally:
            body.close()

    def size_of(self, key: str) -> int | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))["ContentLength"]
        except (ClientError, BotoCoreError) as exc:
            error = _translate(exc, key)
            if isinstance(error, ObjectMissing):
                return None
            raise error from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except (ClientError, BotoCoreError) as exc:
            error = _translate(exc, key)
            if not isinstance(error, ObjectMissing):
                raise error from exc

    def list_keys(self, prefix: str) -> list[str]:
        return sorted(self.list_modified(prefix))

    def list_modified(self, prefix: str) -> dict[str, float]:
        full = (f"{self.prefix}/{prefix}" if self.prefix else prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        found: dict[str, float] = {}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    found[self._store_key(item["Key"])] = item["LastModified"].timestamp()
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, prefix or "/") from exc
        return found

    def sweep_unfinished(self, older_than: float) -> int:
        aborted = 0
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else "")
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"].timestamp() < older_than:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                           UploadId=upload["UploadId"])
                        aborted += 1
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, "multipart uploads") from exc
        return aborted

    def check_available(self) -> None:
        try:
            self.probe_client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            error = _translate(exc, f"bucket {self.bucket}")
            if isinstance(error, ObjectMissing):  # HEAD on a missing bucket answers a bare 404
                error = StorageMisconfigured(f"bucket {self.bucket} does not exist")
            raise error from exc
