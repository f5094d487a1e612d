"""The fixed key layout of the store (ARCHITECTURE.md §4). Keys are built from server-generated ids only."""

from __future__ import annotations


def file_key(file_id: str) -> str:
    return f"files/{file_id}"


def checkpoint_prefix(job_id: str, step: int) -> str:
    return f"jobs/{job_id}/checkpoints/step-{step}/"


def model_prefix(model_uid: str) -> str:
    return f"models/{model_uid}/"


def results_key(job_id: str) -> str:
    return f"results/{job_id}/metrics.csv"


def eval_prefix(eval_id: str) -> str:
    """report.json, items.jsonl and the charts of one knowledge eval."""
    return f"evals/{eval_id}/"
