"""The artifact store contract, and the transfer logic shared by every backend.

Objects are written through an `ObjectWriter` that hashes and counts as bytes arrive and makes the object
visible only at `commit()` (atomic rename locally, single PUT or completed multipart upload on S3), so a
crash leaves at most an orphan, never a partial object at a real key. Every read that feeds data to users
or to training goes through `iter_verified`/`get_bytes`/`download_file`, which compare the bytes with the
SHA-256 (and size) recorded when they were written and raise `IntegrityFailure` on any difference.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from contracts.errors import IntegrityFailure

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str


def check_key(key: str) -> str:
    """Keys are server-generated, relative, '/'-separated, with no empty, '.' or '..' segments."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid storage key {key!r}")
    parts = key.rstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class ObjectWriter(ABC):
    """Streams one object. Use as a context manager: an exception aborts, leaving nothing at the key."""

    def __init__(self, key: str) -> None:
        self.key = check_key(key)
        self._hash = hashlib.sha256()
        self.size = 0
        self._done = False

    def write(self, data: bytes) -> None:
        if self._done:
            raise RuntimeError("writer already finished")
        if data:
            self._hash.update(data)
            self.size += len(data)
            self._write(data)

    def commit(self) -> StoredObject:
        """Make the object visible at its key; returns its size and SHA-256."""
        if self._done:
            raise RuntimeError("writer already finished")
        self._commit()
        self._done = True
        return StoredObject(self.key, self.size, self._hash.hexdigest())

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._abort()

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            # Leaving the block without commit() means the caller gave up; never publish implicitly.
            self.abort()

    @abstractmethod
    def _write(self, data: bytes) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _abort(self) -> None: ...


class ArtifactStore(ABC):
    """Where ftaas keeps datasets, checkpoints, adapters and results (docs/architecture.md, "Store layout")."""

    uri: str

    # ----------------------------------------------------------------------------- backend surface
    @abstractmethod
    def open_writer(self, key: str) -> ObjectWriter:
        """A writer for a new object at `key` (replacing any object there on commit)."""

    @abstractmethod
    def _read_chunks(self, key: str, chunk_size: int) -> Iterator[bytes]:
        """Raw bytes of `key`; raises ObjectMissing if there is no such object."""

    @abstractmethod
    def size_of(self, key: str) -> int | None:
        """Size in bytes, or None if there is no object at `key`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object; deleting a missing object is not an error."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Keys of committed objects under `prefix`, sorted."""

    @abstractmethod
    def list_modified(self, prefix: str) -> dict[str, float]:
        """Committed objects under `prefix`: key -> last modification (Unix time)."""

    @abstractmethod
    def sweep_unfinished(self, older_than: float) -> int:
        """Remove writes that never finished and started before `older_than` (Unix time): partial files of a
        local store, unfinished multipart uploads of S3. Returns how many."""

    @abstractmethod
    def check_available(self) -> None:
        """Raise StorageUnavailable unless the store can be reached and written (readiness probes)."""

    # ------------------------------------------------------------------------------ shared logic
    def delete_prefix(self, prefix: str) -> int:
        keys = self.list_keys(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        with self.open_writer(key) as writer:
            for start in range(0, len(data), CHUNK):
                writer.write(data[start:start + CHUNK])
            return writer.commit()

    def put_file(self, key: str, path: Path) -> StoredObject:
        with self.open_writer(key) as writer, open(path, "rb") as source:
            while chunk := source.read(CHUNK):
                writer.write(chunk)
            return writer.commit()

    def iter_verified(self, key: str, *, sha256: str, size: int | None = None,
                      chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Yield the object's bytes; after the last chunk, raise IntegrityFailure if they were not the
        recorded ones. Consumers that act on data before the end must tolerate that late failure
        (e.g. a streamed HTTP response is cut short, so the client never sees a complete body)."""
        digest = hashlib.sha256()
        seen = 0
        for chunk in self._read_chunks(key, chunk_size):
            digest.update(chunk)
            seen += len(chunk)
            if size is not None and seen > size:
                raise IntegrityFailure(f"object {key} is larger than recorded ({size} bytes)")
            yield chunk
        if size is not None and seen != size:
            raise IntegrityFailure(f"object {key} has {seen} bytes, {size} recorded")
        if digest.hexdigest() != sha256:
            raise IntegrityFailure(f"object {key} does not match its recorded SHA-256")

    def get_bytes(self, key: str, *, sha256: str, size: int | None = None) -> bytes:
        return b"".join(self.iter_verified(key, sha256=sha256, size=size))

    def copy_unrecorded(self, key: str, destination: Path) -> Path:
        """Copy an object ftaas did not write (so has no recorded hash), e.g. an operator's base model."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.partial")
        try:
            with open(partial, "wb") as out:
                for chunk in self._read_chunks(key, CHUNK):
                    out.write(chunk)
            os.replace(partial, destination)
        finally:
            partial.unlink(missing_ok=True)
        return destination

    def download_file(self, key: str, destination: Path, *, sha256: str, size: int | None = None) -> Path:
        """Copy a verified object to `destination` (atomically: a failed check leaves nothing there)."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.partial")
        try:
            with open(partial, "wb") as out:
                for chunk in self.iter_verified(key, sha256=sha256, size=size):
                    out.write(chunk)
            os.replace(partial, destination)
        finally:
            partial.unlink(missing_ok=True)
        return destination
