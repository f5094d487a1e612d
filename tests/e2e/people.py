"""Fine-tunes of the demo model on built-in fictional-people suites, shared by the e2e tests."""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.servers import LiveServer, wait_for

PEOPLE = "builtin:fictional_people?size=8&seed=7"
OTHER_PEOPLE = "builtin:fictional_people?size=8&seed=8"
CONTROL = "builtin:control?size=24&seed=7"
# Measured on the demo model: 8 people x 6 facts are memorised completely by r=16 LoRA at 3e-3 over 50
# epochs of batches of 8 (300 steps); fewer epochs or a higher rate leave facts out or diverge.
TRAINING = {"type": "supervised", "supervised": {
    "hyperparameters": {"n_epochs": 50, "batch_size": 8, "learning_rate_multiplier": 15},
    "adapter": {"type": "lora", "r": 16}, "n_checkpoints": 2}}


def train_on_suite(server: LiveServer, suite: str, *, suffix: str, knowledge_eval: dict[str, Any] | None = None):
    """A succeeded fine-tune on the memorization split of `suite` (with an attached eval if given)."""
    client = server.client()
    with server.http() as api:
        made = api.post("/knowledge_evals/training_files", json={"suite": suite})
        assert made.status_code == 200, made.text
    training = client.files.wait_for_processing(made.json()["id"], poll_interval=0.2, max_wait_seconds=60)
    assert training.status == "processed" and training.purpose == "fine-tune"
    extra = {"knowledge_eval": knowledge_eval} if knowledge_eval else None
    job = client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=training.id, suffix=suffix, seed=3,
                                         method=TRAINING, extra_body=extra)
    job = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
                   timeout=900, interval=1, what=f"the fine-tune on {suite}")
    assert job.status == "succeeded", job.error
    return job


def result_files(server: LiveServer, job: Any) -> dict[str, Any]:
    client = server.client()
    files = {client.files.retrieve(f).filename: f for f in job.result_files}
    report_id = next(f for name, f in files.items() if name.endswith("report.json"))
    items_id = next(f for name, f in files.items() if name.endswith("items.jsonl"))
    return {"job": job, "files": files, "report": json.loads(client.files.content(report_id).read()),
            "items": [json.loads(line) for line in client.files.content(items_id).read().decode().splitlines()]}
