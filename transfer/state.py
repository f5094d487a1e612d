"""A transfer's working directory: the files it downloaded (by content hash) and what it made on the target,
so that a run stopped half-way resumes where it was and a re-run makes nothing twice."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


class TransferState:
    """`<directory>/state.json` (written atomically after every change) and `<directory>/files/<sha256>`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "state.json"
        (directory / "files").mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}
        for section in ("files", "jobs", "distill"):
            self.data.setdefault(section, {})

    def save(self) -> None:
        scratch = self.path.with_suffix(".tmp")
        scratch.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        os.replace(scratch, self.path)

    def section(self, name: str) -> dict[str, Any]:
        return self.data[name]

    def file_path(self, sha256: str) -> Path:
        return self.directory / "files" / sha256

    def keep_bytes(self, content: bytes) -> str:
        """Store downloaded content under its hash; returns the hash."""
        digest = hashlib.sha256(content).hexdigest()
        path = self.file_path(digest)
        if not path.exists():
            scratch = path.with_suffix(".part")
            scratch.write_bytes(content)
            os.replace(scratch, path)
        return digest
