"""The outcome of validating an uploaded training file: what the validator produces and the database records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ValidationOutcome:
    ok: bool
    data_format: str | None
    example_count: int
    errors: list[dict[str, Any]]
    error_count: int
    summary: str | None
    #: reinforcement files: each top-level field other than `messages` -> the first line that lacks it (None:
    #: every line has it), so a job's grader can be checked against the file without reading it again
    item_fields: dict[str, int | None] = field(default_factory=dict)
