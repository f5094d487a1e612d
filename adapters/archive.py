"""Unpacking an uploaded adapter archive (zip or tar, optionally gzip/bz2/xz) without trusting it.

An archive is a PEFT adapter folder: `adapter_config.json` and `adapter_model.safetensors` (a README may
ride along), at its root or inside one top-level folder. Everything else is refused with a 400 before a
byte is written:

* member names that are absolute, contain `..`, backslashes or NUL, or repeat;
* anything but regular files and folders (symlinks, hard links, devices, FIFOs);
* pickles and other weight formats (`.bin`, `.pt`, `.pth`, `.pkl`, `.ckpt`, ...): safetensors only;
* declared sizes over the limits, and zip members whose compression ratio betrays a bomb.

Files are then written under `staging` by names this code chooses (never the member's path), with
O_EXCL | O_NOFOLLOW, counting the bytes actually decompressed: a header that lies about a size cannot make
the extraction exceed the limit.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from adapters.files import CONFIG, WEIGHTS
from contracts.errors import InvalidRequest

REQUIRED = (CONFIG, WEIGHTS)
ALLOWED = (*REQUIRED, "README.md")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".npz", ".h5", ".msgpack")
CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 2 * 1024**3
    max_total_bytes: int = 4 * 1024**3
    #: Largest uncompressed/compressed ratio of a zip member (weights barely compress; bombs do, a lot).
    max_ratio: float = 200.0
    max_members: int = 16


def _refuse(message: str) -> InvalidRequest:
    return InvalidRequest(f"The adapter archive was refused: {message}", code="invalid_adapter_archive",
                          param="file")


@dataclass(frozen=True)
class _Member:
    name: str
    size: int
    compressed: int | None
    kind: str  # "file" | "dir" | "link" | "other"


def _check_name(name: str) -> PurePosixPath:
    if not name or "\x00" in name or "\\" in name:
        raise _refuse(f"the member name {name!r} is not allowed")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        raise _refuse(f"the member {name!r} has an absolute path")
    if any(part == ".." for part in path.parts):
        raise _refuse(f"the member {name!r} points outside its folder ('..')")
    return path


def _zip_members(archive: zipfile.ZipFile) -> list[_Member]:
    members = []
    for info in archive.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            kind = "link"
        elif info.is_dir():
            kind = "dir"
        elif stat.S_IFMT(mode) == 0 or stat.S_ISREG(mode):  # many zip writers record no file type
            kind = "file"
        else:
            kind = "other"
        members.append(_Member(info.filename, info.file_size, info.compress_size, kind))
    return members


def _tar_members(archive: tarfile.TarFile) -> list[_Member]:
    members = []
    for info in archive.getmembers():
        kind = "file" if info.isreg() else "dir" if info.isdir() else "link" if (info.issym() or info.islnk()) \
            else "other"
        members.append(_Member(info.name, info.size, None, kind))
    return members


def _plan(members: list[_Member], limits: Limits) -> dict[str, _Member]:
    """Which member becomes which file. Raises before anything is written."""
    if len(members) > limits.max_members * 2:
        raise _refuse(f"it has {len(members)} members; an adapter has at most {limits.max_members}")
    seen: set[str] = set()
    files: list[tuple[PurePosixPath, _Member]] = []
    for member in members:
        path = _check_name(member.name)
        key = str(path).rstrip("/")
        if key in seen:
            raise _refuse(f"the member {member.name!r} appears twice")
        seen.add(key)
        if member.kind == "link":
            raise _refuse(f"the member {member.name!r} is a link; only regular files are accepted")
        if member.kind == "other":
            raise _refuse(f"the member {member.name!r} is not a regular file")
        if member.kind == "dir":
            continue
        if path.name.lower().endswith(PICKLE_SUFFIXES):
            raise _refuse(f"{member.name!r}: only safetensors weights are accepted (no pickles or other formats)")
        files.append((path, member))
    folders = {path.parent for path, _ in files}
    if len(folders) > 1:
        raise _refuse("the adapter files must sit together at the root or in one folder")
    plan: dict[str, _Member] = {}
    total = 0
    for path, member in files:
        if path.name not in ALLOWED:
            raise _refuse(f"unexpected member {member.name!r}; an adapter holds {', '.join(ALLOWED)}")
        if member.size > limits.max_file_bytes:
            raise _refuse(f"{member.name!r} is {member.size} bytes; the limit is {limits.max_file_bytes}")
        if member.compressed is not None and member.size > CHUNK and \
                member.size / max(1, member.compressed) > limits.max_ratio:
            raise _refuse(f"{member.name!r} expands {member.size / max(1, member.compressed):.0f}-fold (a zip bomb?)")
        total += member.size
        plan[path.name] = member
    if total > limits.max_total_bytes:
        raise _refuse(f"it expands to {total} bytes; the limit is {limits.max_total_bytes}")
    missing = [name for name in REQUIRED if name not in plan]
    if missing:
        raise _refuse(f"it lacks {', '.join(missing)}")
    return plan


def _copy(source: IO[bytes], target: Path, budget: int) -> int:
    """Stream into a new file (never following or replacing anything); stop past `budget` bytes."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    written = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > budget:
                raise _refuse("it expands beyond its declared size or the limit")
            out.write(chunk)
    return written


@contextmanager
def _open(path: Path) -> Iterator[zipfile.ZipFile | tarfile.TarFile]:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            yield archive
        return
    if not tarfile.is_tarfile(path):
        raise _refuse("it is neither a zip nor a tar archive")
    with tarfile.open(path, mode="r:*") as tar:
        yield tar


def _member_stream(archive: zipfile.ZipFile | tarfile.TarFile, name: str) -> IO[bytes]:
    if isinstance(archive, zipfile.ZipFile):
        return archive.open(name)
    source = archive.extractfile(name)
    if source is None:
        raise _refuse(f"{name!r} has no content")
    return source


def extract_adapter(path: Path, staging: Path, limits: Limits = Limits()) -> Path:
    """Unpack the adapter archive at `path` into the new folder `staging` (which must not exist)."""
    staging.mkdir(parents=True)
    try:
        with _open(path) as archive:
            members = _zip_members(archive) if isinstance(archive, zipfile.ZipFile) else _tar_members(archive)
            plan = _plan(members, limits)
            total_budget = limits.max_total_bytes
            for name, member in plan.items():
                budget = min(member.size, limits.max_file_bytes, total_budget)
                with _member_stream(archive, member.name) as source:
                    total_budget -= _copy(source, staging / name, budget)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise _refuse(f"it could not be read ({type(exc).__name__}: {exc})") from None
    return staging
