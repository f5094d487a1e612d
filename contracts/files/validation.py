"""The outcome of validating an uploaded training file: what the validator produces and the database records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ValidationOutcome:
    ok: bool
    data_format: str | None
    example_count: int
    errors: list[dict[str, Any]]
    error_count: int
    summary: str | None
