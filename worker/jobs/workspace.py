"""A job attempt's local directory, shared by every process of the attempt: the downloaded inputs (the
training files, the checkpoint it resumes from), the trainer's work, and the outcome a data-parallel group's
main process hands back to the runner."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db.tables import File
from storage.manifest import download_artifact
from worker.context import WorkerContext
from worker.training.control import TrainingOutcome

#: Files a checkpoint may contain when it is downloaded to resume from (no pickles, ever).
CHECKPOINT_FILES = (".safetensors", ".json")


@dataclass(frozen=True)
class Workspace:
    """A job attempt's local directory, shared by every process of the attempt."""

    root: Path

    @property
    def training_data(self) -> Path:
        return self.root / "data" / "training.jsonl"

    @property
    def validation_data(self) -> Path:
        return self.root / "data" / "validation.jsonl"

    @property
    def resume_dir(self) -> Path:
        return self.root / "resume"

    @property
    def trainer_dir(self) -> Path:
        return self.root / "trainer"

    @property
    def preempt_flag(self) -> Path:
        return self.root / "preempt-requested"

    @property
    def outcome_file(self) -> Path:
        return self.root / "outcome.json"


def download_inputs(ctx: WorkerContext, workspace: Workspace, training: File, validation: File | None, resume: Any) -> None:
    """Download the verified inputs into the workspace, shared by every process of the attempt."""
    for file, target in ((training, workspace.training_data), (validation, workspace.validation_data)):
        if file is not None:
            ctx.store.download_file(file.storage_key, target, sha256=file.sha256, size=file.bytes)
    if resume is not None:
        prefix, manifest_sha256 = resume
        download_artifact(ctx.store, prefix, manifest_sha256, workspace.resume_dir, allowed_suffixes=CHECKPOINT_FILES)

#: TrainingOutcome fields that travel from a data-parallel group's main process to the runner as they are.
_OUTCOME_SCALARS = ("stopped_early_at", "best_step", "learned_at_epoch", "learned_accuracy", "final_train_loss",
                    "final_train_accuracy", "final_pass_examples", "train_examples")


def write_outcome(workspace: Workspace, outcome: TrainingOutcome | None, error: dict[str, Any] | None = None) -> None:
    data: dict[str, Any] = {"error": error}
    if outcome is not None:
        data.update(status=outcome.status, step=outcome.step, trained_tokens=outcome.trained_tokens,
                    adapter_dir=str(outcome.adapter_dir) if outcome.adapter_dir else None,
                    **{name: getattr(outcome, name) for name in _OUTCOME_SCALARS})
    workspace.outcome_file.write_text(json.dumps(data))


def read_outcome(workspace: Workspace) -> tuple[TrainingOutcome | None, dict[str, Any] | None]:
    if not workspace.outcome_file.exists():
        return None, None
    data = json.loads(workspace.outcome_file.read_text())
    if data.get("error"):
        return None, data["error"]
    return TrainingOutcome(status=data["status"], step=data["step"], trained_tokens=data["trained_tokens"],
                           adapter_dir=Path(data["adapter_dir"]) if data.get("adapter_dir") else None,
                           **{name: data[name] for name in _OUTCOME_SCALARS if name in data}), None
