"""The fixed key layout of the store (docs/architecture.md, "Store layout"). Keys are built from server-generated ids only."""

from __future__ import annotations


def file_key(file_id: str) -> str:
    return f"files/{file_id}"


def checkpoint_prefix(job_id: str, step: int) -> str:
    return f"jobs/{job_id}/checkpoints/step-{step}/"


def model_prefix(model_uid: str) -> str:
    return f"models/{model_uid}/"


def results_key(job_id: str, model_uid: str) -> str:
    """The results file of the attempt that publishes model `model_uid` (unique per attempt, like the
    model's prefix: a stale attempt's clean-up never deletes the winner's file)."""
    return f"results/{job_id}/{model_uid}/metrics.csv"


def eval_prefix(eval_id: str, run: str) -> str:
    """report.json, items.jsonl, spec.json and the charts of one run of a knowledge eval. `run` is unique
    per attempt, so that a stale worker's objects never replace (or delete) those of the attempt that won."""
    return f"evals/{eval_id}/{run}/"


def training_state_prefix(uid: str) -> str:
    """A training model's saved state (adapter and optimizer) of the training API."""
    return f"training-states/{uid}/"
