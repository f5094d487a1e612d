"""The results file of a job: one CSV row per optimizer step (docs/architecture.md, "Wire contract")."""

from __future__ import annotations

import csv
import io
from typing import Any

COLUMNS = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy",
           "full_valid_loss", "full_valid_mean_token_accuracy", "full_train_loss", "full_train_mean_token_accuracy"]
#: Reinforcement jobs' columns after those (their accuracy columns stay empty).
REINFORCEMENT_COLUMNS = ["train_reward_mean", "valid_reward_mean", "kl", "response_length", "zero_variance_groups",
                         "grader_errors"]
#: SPIN jobs' columns after the common ones.
SELF_PLAY_COLUMNS = ["self_play_round", "response_length", "self_play_matches"]


def metrics_csv(rows: list[dict[str, Any]]) -> bytes:
    """CSV from metrics event data, oldest first. A step reported twice (a resumed attempt re-ran it after
    its last checkpoint) keeps its latest report, so every step appears exactly once.

    Served as plain CSV text (not base64 as some OpenAI cookbook code expects; see README).
    """
    by_step: dict[int, dict[str, Any]] = {}
    for row in rows:
        by_step[int(row["step"])] = row
    reinforcement = any("train_reward_mean" in row for row in rows)
    self_play = any("self_play_round" in row for row in rows)
    extra = REINFORCEMENT_COLUMNS if reinforcement else SELF_PLAY_COLUMNS if self_play else []
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS + extra)
    for step in sorted(by_step):
        row = by_step[step]
        writer.writerow([
            step,
            row.get("train_loss", ""),
            row.get("train_mean_token_accuracy", ""),
            row.get("valid_loss", ""),
            row.get("valid_mean_token_accuracy", ""),
            row.get("full_valid_loss", ""),
            row.get("full_valid_mean_token_accuracy", ""),
            row.get("full_train_loss", ""),
            row.get("full_train_mean_token_accuracy", ""),
            *[row.get(column, "") for column in extra],
        ])
    return out.getvalue().encode()
