"""Removes what the store holds that nothing points at: the objects of a publish that was interrupted (a
worker killed mid-upload, a cancelled job whose clean-up met a store outage), of files whose rows expired,
and writes that never finished (unfinished multipart uploads, partial files).

An object belongs to an artifact: a model's prefix (`models/{uid}/`), a checkpoint's prefix
(`jobs/{job}/checkpoints/step-N/`), or, for every other area, its own key (uploaded files, results files, eval
artifacts, each a `files` row). An artifact is an orphan when no row points at it; it is removed only once
its newest object is older than the grace period, so a publish in progress (objects first, row last) is never
touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select

from db.session import Database
from db.tables import Checkpoint, File, Model
from storage import ArtifactStore

log = logging.getLogger(__name__)

#: area -> how many leading key parts name the artifact an object belongs to (None: the key itself)
ARTIFACT_DEPTH = {"models": 2, "jobs": 4, "files": None, "results": None, "evals": None}


@dataclass
class SweepReport:
    orphaned_artifacts: int = 0
    deleted_objects: int = 0
    unfinished_writes: int = 0


def artifact_of(key: str) -> str | None:
    """The artifact (prefix ending in "/", or key) an object belongs to; None outside the known areas."""
    parts = key.split("/")
    if parts[0] not in ARTIFACT_DEPTH:
        return None
    depth = ARTIFACT_DEPTH[parts[0]]
    if depth is None:
        return key
    if len(parts) <= depth:
        return None
    return "/".join(parts[:depth]) + "/"


def referenced(db: Database) -> set[str]:
    """Every prefix and key a row points at."""
    with db.read() as session:
        found = set(session.scalars(select(Model.storage_prefix)))
        found.update(session.scalars(select(Checkpoint.storage_prefix)))
        found.update(session.scalars(select(File.storage_key)))
    return found


def sweep_orphans(db: Database, store: ArtifactStore, *, now: float, grace_seconds: float) -> SweepReport:
    report = SweepReport()
    report.unfinished_writes = store.sweep_unfinished(now - grace_seconds)
    # Objects are listed before rows are read: an artifact published in between has a row by then.
    objects = {area: store.list_modified(f"{area}/") for area in ARTIFACT_DEPTH}
    pointed_at = referenced(db)
    artifacts: dict[str, list[tuple[str, float]]] = {}
    for listed in objects.values():
        for key, modified in listed.items():
            artifact = artifact_of(key)
            if artifact is not None and artifact not in pointed_at:
                artifacts.setdefault(artifact, []).append((key, modified))
    for artifact, members in sorted(artifacts.items()):
        if max(modified for _, modified in members) >= now - grace_seconds:
            continue  # possibly a publish in progress
        for key, _ in members:
            store.delete(key)
        report.orphaned_artifacts += 1
        report.deleted_objects += len(members)
        log.warning("sweeper: removed %s (%d objects) that nothing points at", artifact, len(members))
    return report
