"""Artifact storage: one `ArtifactStore` interface, `file://` and `s3://` implementations by URI scheme."""

from storage.base import ArtifactStore, ObjectWriter, StoredObject
from storage.registry import open_store

__all__ = ["ArtifactStore", "ObjectWriter", "StoredObject", "open_store"]
