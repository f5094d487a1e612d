"""Choose the artifact store implementation from the URI scheme."""

from __future__ import annotations

from urllib.parse import urlparse

from contracts.settings import StorageSettings
from storage.base import ArtifactStore
from storage.local import LocalArtifactStore
from storage.s3 import S3ArtifactStore, S3Options

SCHEMES = ("file", "s3")


def s3_options(settings: StorageSettings, *, attempts: int = 3) -> S3Options:
    secret = settings.s3_secret_access_key
    return S3Options(
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=secret.get_secret_value() if secret else None,
        addressing_style=settings.s3_addressing_style,
        multipart_chunk_bytes=settings.s3_multipart_chunk_bytes,
        attempts=attempts, read_timeout_seconds=settings.s3_read_timeout_seconds,
    )


def open_store(uri: str, settings: StorageSettings, *, attempts: int = 3) -> ArtifactStore:
    """`attempts`: tries per S3 request (an outage costs up to attempts x `s3_read_timeout_seconds`)."""
    scheme = urlparse(uri).scheme
    if scheme == "file":
        return LocalArtifactStore(uri)
    if scheme == "s3":
        return S3ArtifactStore(uri, s3_options(settings, attempts=attempts))
    raise ValueError(f"no artifact store for {uri!r}; supported schemes: {', '.join(SCHEMES)}")
