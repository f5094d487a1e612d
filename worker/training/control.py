"""What the trainer and its caller exchange: the metrics of every optimizer step, the caller's directive in
return (go on, pause, stop, yield the worker), checkpoints to publish, and the run's outcome.

The trainer knows nothing of Celery or the database; the job's side of this (worker.jobs.control) turns
metrics into events, a pause or cancel request into a directive, and a checkpoint into stored objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol


class Directive(Enum):
    CONTINUE = "continue"
    PAUSE = "pause"
    STOP = "stop"
    #: The worker is shutting down: checkpoint and hand the job back.
    PREEMPT = "preempt"


@dataclass
class StepMetrics:
    step: int
    total_steps: int
    epoch: int
    train_loss: float
    train_mean_token_accuracy: float
    trained_tokens: int
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    #: Reinforcement runs: the mean grader reward of the step's samples and (every eval_interval steps) of the
    #: validation prompts' samples, the KL to the base model per completion token, the mean sample length in
    #: tokens, the share of prompts whose samples all scored alike, and the samples whose grading failed.
    train_reward_mean: float | None = None
    valid_reward_mean: float | None = None
    kl: float | None = None
    response_length: float | None = None
    zero_variance_groups: float | None = None
    grader_errors: int | None = None
    #: SPIN runs: the round (1-based), the mean length of the round's own answers (`response_length`) and the
    #: share of them identical to the data's answer (the model already says what the data says).
    self_play_round: int | None = None
    self_play_matches: float | None = None
    #: The step's wall time (validation included) and the threads it computed on (contracts.machine).
    step_seconds: float | None = None
    threads: int | None = None

    def as_event_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "step": self.step,
            "total_steps": self.total_steps,
            "train_loss": round(self.train_loss, 6),
        }
        if self.train_reward_mean is None:  # a reinforcement step trains no target tokens
            data["train_mean_token_accuracy"] = round(self.train_mean_token_accuracy, 6)
        for key in ("valid_loss", "valid_mean_token_accuracy", "full_valid_loss", "full_valid_mean_token_accuracy",
                    "train_reward_mean", "valid_reward_mean", "kl", "response_length", "zero_variance_groups",
                    "self_play_matches", "step_seconds"):
            value = getattr(self, key)
            if value is not None:
                data[key] = round(value, 6)
        if self.grader_errors is not None:
            data["grader_errors"] = self.grader_errors
        if self.self_play_round is not None:
            data["self_play_round"] = self.self_play_round
        if self.threads is not None:
            data["threads"] = self.threads
        return data


class TrainingControl(Protocol):
    def after_step(self, metrics: StepMetrics) -> Directive:
        """Called after every optimizer step (on the main process). May raise to abort (e.g. LeaseLost)."""

    def on_checkpoint(self, state_dir: Path, metrics: StepMetrics, *, best: bool) -> None:
        """A complete, resumable checkpoint is in `state_dir`; publish it before returning. `best`: it holds
        the best validation loss so far (early stopping), so it must be kept."""


@dataclass
class TrainingOutcome:
    #: "completed", "paused", "preempted" or "stopped".
    status: str
    step: int
    trained_tokens: int
    #: Directory with the servable adapter (completed runs only).
    adapter_dir: Path | None = None
    final_metrics: StepMetrics | None = None
    history: list[StepMetrics] = field(default_factory=list)
    #: Early stopping: the step it stopped at, and the step whose adapter became the model.
    stopped_early_at: int | None = None
    best_step: int | None = None
    #: stop_when_learned: the epoch whose training token accuracy reached LEARNED_ACCURACY, and that accuracy.
    learned_at_epoch: int | None = None
    learned_accuracy: float | None = None
    #: Supervised runs: loss and token accuracy on assistant tokens of the published adapter over the training
    #: data (up to evaluation.FINAL_PASS_EXAMPLES examples), in eval mode, and how many examples that pass
    #: scored.
    final_train_loss: float | None = None
    final_train_accuracy: float | None = None
    final_pass_examples: int = 0
    train_examples: int = 0
