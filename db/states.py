"""Status vocabularies and the fine-tuning job state machine.

The transition table below is the single definition. The repository (`db.jobs`) only issues conditional
UPDATEs whose `WHERE status IN (...)` comes from it, and the database refuses any other change through a
trigger that consults the `job_status_transitions` table, seeded from this table by the migrations
(a test checks the two agree).
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class WorkStatus(StrEnum):
    """Standalone work (knowledge evals, adapter operations; db.leased): queued -> running -> succeeded |
    failed | cancelled; running -> queued when the worker is lost or shuts down (another one starts over)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


WORK_TERMINAL = frozenset({WorkStatus.SUCCEEDED, WorkStatus.FAILED, WorkStatus.CANCELLED})


class FileStatus(StrEnum):
    UPLOADED = "uploaded"
    PROCESSED = "processed"
    ERROR = "error"


TERMINAL: frozenset[JobStatus] = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

#: Jobs counted against a project's active-job quota, and eligible for worker attention.
ACTIVE: frozenset[JobStatus] = frozenset(set(JobStatus) - TERMINAL)

S = JobStatus
#: from-status -> the statuses it may move to. Terminal statuses have no way out.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    # Files validated -> queued; bad files -> failed; the user may cancel or pause before training starts.
    S.VALIDATING_FILES: frozenset({S.QUEUED, S.FAILED, S.CANCELLED, S.PAUSED}),
    # A worker claims it (running); user cancel/pause.
    S.QUEUED: frozenset({S.RUNNING, S.FAILED, S.CANCELLED, S.PAUSED}),
    # Finishes, fails, is cancelled or asked to pause; goes back to queued when its worker is lost or
    # preempted (the reaper, or a worker's graceful shutdown) so that another worker resumes it.
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PAUSING, S.QUEUED}),
    # The worker checkpoints and parks it (paused); it may also finish its last step first (succeeded),
    # fail, or be cancelled meanwhile. A lost worker while pausing parks it at its last checkpoint.
    S.PAUSING: frozenset({S.PAUSED, S.SUCCEEDED, S.FAILED, S.CANCELLED}),
    # Resume re-validates nothing: back to the queue (or to validating_files if paused before that ended).
    S.PAUSED: frozenset({S.QUEUED, S.VALIDATING_FILES, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}
del S


def sources_of(target: JobStatus) -> list[str]:
    """Every status from which `target` may be reached (for conditional UPDATEs)."""
    return sorted(s.value for s, targets in TRANSITIONS.items() if target in targets)


def transition_pairs() -> list[tuple[str, str]]:
    return sorted((s.value, t.value) for s, targets in TRANSITIONS.items() for t in targets)
