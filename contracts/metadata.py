"""OpenAI's `metadata` objects (on jobs, evals, stored completions): up to 16 string pairs, keys of at most 64
characters, values of at most 512."""

from __future__ import annotations

MAX_PAIRS = 16
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 512


def check_metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    """`value` unchanged when it is valid metadata (or None); ValueError naming the rule otherwise."""
    if value is None:
        return value
    if len(value) > MAX_PAIRS:
        raise ValueError(f"at most {MAX_PAIRS} key-value pairs")
    for key, item in value.items():
        if len(key) > MAX_KEY_CHARS or len(item) > MAX_VALUE_CHARS:
            raise ValueError(f"keys are at most {MAX_KEY_CHARS} characters and values at most {MAX_VALUE_CHARS}")
    return value
