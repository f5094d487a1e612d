"""`file://` artifact store: a directory tree, with atomic publication by rename."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from contracts.errors import ObjectMissing, StorageUnavailable
from storage.base import ArtifactStore, ObjectWriter, check_key

#: Temporary files carry this prefix so that listings never show uncommitted objects.
PARTIAL_PREFIX = ".partial-"


class LocalObjectWriter(ObjectWriter):
    """Writes to a temporary file beside the target, fsyncs, then renames over the key (POSIX-atomic)."""

    def __init__(self, key: str, target: Path) -> None:
        super().__init__(key)
        self._target = target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._partial = target.with_name(f"{PARTIAL_PREFIX}{uuid.uuid4().hex}")
            self._file = open(self._partial, "wb")  # noqa: SIM115 (closed in commit/abort)
        except OSError as exc:
            raise StorageUnavailable(f"cannot write {key}: {exc}") from exc

    def _write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise StorageUnavailable(f"cannot write {self.key}: {exc}") from exc

    def _commit(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._partial, self._target)
            directory = os.open(self._target.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            self._partial.unlink(missing_ok=True)
            raise StorageUnavailable(f"cannot commit {self.key}: {exc}") from exc

    def _abort(self) -> None:
        self._file.close()
        self._partial.unlink(missing_ok=True)


class LocalArtifactStore(ArtifactStore):
    def __init__(self, uri: str) -> None:
        parsed = urlparse(uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise ValueError(f"not a local file URI: {uri!r}")
        self.uri = uri
        self.root = Path(unquote(parsed.path)).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"storage key escapes the store: {key!r}")
        return path

    def open_writer(self, key: str) -> ObjectWriter:
        return LocalObjectWriter(key, self._path(key))

    def _read_chunks(self, key: str, chunk_size: int) -> Iterator[bytes]:
        try:
            handle = open(self._path(key), "rb")  # noqa: SIM115
        except FileNotFoundError as exc:
            raise ObjectMissing(f"no object at {key}") from exc
        except OSError as exc:
            raise StorageUnavailable(f"cannot read {key}: {exc}") from exc
        with handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    def size_of(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Remove emptied directories up to the root so deleted prefixes leave no trace.
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def list_keys(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        start = base if base.is_dir() else base.parent
        if not start.exists():
            return []
        keys = []
        for path in start.rglob("*"):
            if path.is_file() and not path.name.startswith(PARTIAL_PREFIX):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def list_modified(self, prefix: str) -> dict[str, float]:
        return {key: (self.root / key).stat().st_mtime for key in self.list_keys(prefix)}

    def sweep_unfinished(self, older_than: float) -> int:
        removed = 0
        for path in self.root.rglob(f"{PARTIAL_PREFIX}*"):
            try:
                if path.is_file() and path.stat().st_mtime < older_than:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # finished or aborted meanwhile
                pass
        return removed

    def check_available(self) -> None:
        probe = self.root / f"{PARTIAL_PREFIX}probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StorageUnavailable(f"artifact directory {self.root} is not writable: {exc}") from exc
