"""Multi-file artifacts (adapters, checkpoints) published under a prefix with a manifest written last.

The manifest lists every file with its size and SHA-256, plus provenance. A prefix without a manifest is
not an artifact (an interrupted upload); the database stores the manifest's own SHA-256, so the whole
artifact is verified from one recorded hash: manifest first, then each file against the manifest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.errors import IntegrityFailure
from storage.base import ArtifactStore

MANIFEST = "manifest.json"
FORMAT = "ftaas.artifact/v1"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class PublishedArtifact:
    prefix: str
    manifest_sha256: str
    manifest: dict[str, Any]


def publish_directory(store: ArtifactStore, prefix: str, directory: Path, provenance: dict[str, Any]) -> PublishedArtifact:
    """Upload every regular file of `directory` (flat) under `prefix`, then the manifest."""
    if not prefix.endswith("/"):
        raise ValueError("an artifact prefix ends with '/'")
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.name == MANIFEST:
            continue
        if not _SAFE_NAME.match(path.name):
            raise ValueError(f"artifact file name not allowed: {path.name!r}")
        stored = store.put_file(prefix + path.name, path)
        files[path.name] = {"sha256": stored.sha256, "bytes": stored.size}
    manifest = {"format": FORMAT, "files": files, **provenance}
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    stored = store.put_bytes(prefix + MANIFEST, body)
    return PublishedArtifact(prefix=prefix, manifest_sha256=stored.sha256, manifest=manifest)


def read_manifest(store: ArtifactStore, prefix: str, manifest_sha256: str) -> dict[str, Any]:
    manifest = json.loads(store.get_bytes(prefix + MANIFEST, sha256=manifest_sha256))
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise IntegrityFailure(f"{prefix}{MANIFEST} is not an ftaas artifact manifest")
    for name in manifest["files"]:
        if not _SAFE_NAME.match(name):
            raise IntegrityFailure(f"artifact manifest names an unsafe file {name!r}")
    return manifest


def download_artifact(store: ArtifactStore, prefix: str, manifest_sha256: str, destination: Path,
                      *, allowed_suffixes: tuple[str, ...] | None = None,
                      only: set[str] | Callable[[set[str]], set[str]] | None = None) -> dict[str, Any]:
    """Copy a verified artifact into `destination`; returns its manifest.

    `allowed_suffixes` restricts which files may be present (e.g. only .safetensors and .json for
    weights that will be loaded): anything else fails the download instead of being loaded. `only` copies
    just the named files (which must be in the manifest), e.g. the adapter of a full trainer checkpoint;
    given as a function, it chooses them from the names the manifest lists.
    """
    manifest = read_manifest(store, prefix, manifest_sha256)
    if callable(only):
        only = only(set(manifest["files"]))
    missing = (only or set()) - set(manifest["files"])
    if missing:
        raise IntegrityFailure(f"artifact {prefix} lacks {', '.join(sorted(missing))}")
    destination.mkdir(parents=True, exist_ok=True)
    for name, entry in manifest["files"].items():
        if only is not None and name not in only:
            continue
        if allowed_suffixes is not None and not name.endswith(allowed_suffixes):
            raise IntegrityFailure(f"artifact {prefix} contains {name!r}, which is not an allowed file type",
                                   code="artifact_rejected")
        store.download_file(prefix + name, destination / name, sha256=entry["sha256"], size=entry["bytes"])
    return manifest
