"""The training loop: LoRA adapters on a frozen base model, supervised (SFT) or preference (DPO) loss.

It knows nothing of Celery or the database. It reports every optimizer step to a `TrainingControl`,
which answers whether to go on, pause or stop, and hands it checkpoints to publish. A checkpoint holds the
full trainer state (adapter, optimizer, scheduler, RNG, data position) as safetensors and JSON (never
pickle), so a run resumed from one continues exactly where it stopped: batch order is a pure function of
(seed, epoch), and the position is (epoch, batch within epoch).

DPO uses the base model with the adapter disabled as its reference model, so there is no second copy of
the weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from worker.training.data import IGNORE, PreferenceExample, TokenizedExample
from worker.training.spec import TrainingSpec

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
STATE_FILE = "trainer_state.json"
OPTIMIZER_TENSORS = "optimizer.safetensors"
RNG_TENSORS = "rng_state.safetensors"


class Directive(Enum):
    CONTINUE = "continue"
    PAUSE = "pause"
    STOP = "stop"


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

    def as_event_data(self) -> dict[str, Any]:
        data = {
            "step": self.step,
            "total_steps": self.total_steps,
            "train_loss": round(self.train_loss, 6),
            "train_mean_token_accuracy": round(self.train_mean_token_accuracy, 6),
        }
        for key in ("valid_loss", "valid_mean_token_accuracy", "full_valid_loss", "full_valid_mean_token_accuracy"):
            value = getattr(self, key)
            if value is not None:
                data[key] = round(value, 6)
        return data


class TrainingControl(Protocol):
    def after_step(self, metrics: StepMetrics) -> Directive:
        """Called after every optimizer step. May raise to abort (e.g. LeaseLost)."""

    def on_checkpoint(self, state_dir: Path, metrics: StepMetrics) -> None:
        """A complete, resumable checkpoint is in `state_dir`; publish it before returning."""


@dataclass
class TrainingOutcome:
    #: "completed", "paused" or "stopped".
    status: str
    step: int
    trained_tokens: int
    #: Directory with adapter_model.safetensors and adapter_config.json (completed runs only).
    adapter_dir: Path | None = None
    final_metrics: StepMetrics | None = None
    history: list[StepMetrics] = field(default_factory=list)


@dataclass
class _Position:
    epoch: int = 0
    batch: int = 0  # next batch within the epoch
    step: int = 0
    trained_tokens: int = 0


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware runs it natively, else None (fp32)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        supported = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
            torch.cpu, "_is_amx_tile_supported", lambda: False)()
        return torch.bfloat16 if supported else None
    return None


class Trainer:
    def __init__(self, spec: TrainingSpec, model: Any, tokenizer: Any, train: Sequence[Any],
                 valid: Sequence[Any], control: TrainingControl, work_dir: Path,
                 *, precision: str = "auto") -> None:
        if not train:
            raise ValueError("no training examples")
        self.spec = spec
        self.tokenizer = tokenizer
        self.train_examples = list(train)
        self.valid_examples = list(valid)
        self.control = control
        self.work_dir = work_dir
        self.device = next(model.parameters()).device
        self.dtype = None if precision == "fp32" else autocast_dtype(self.device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

        torch.manual_seed(spec.seed)  # LoRA initialisation depends on it
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        lora = spec.lora
        self.model = get_peft_model(model, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules),
            task_type="CAUSAL_LM",
        ))
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=spec.learning_rate, weight_decay=0.0)
        self.steps_per_epoch = math.ceil(len(self.train_examples) / spec.batch_size)
        self.total_steps = self.steps_per_epoch * spec.n_epochs
        warmup = int(self.total_steps * spec.warmup_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _linear_schedule(warmup, self.total_steps))
        self._valid_cursor = 0

    # ---------------------------------------------------------------------------------------- run
    def run(self, resume_from: Path | None = None) -> TrainingOutcome:
        position = self._load_state(resume_from) if resume_from else _Position()
        history: list[StepMetrics] = []
        self.model.train()
        metrics: StepMetrics | None = None
        for epoch in range(position.epoch, self.spec.n_epochs):
            order = self._epoch_order(epoch)
            first = position.batch if epoch == position.epoch else 0
            for batch_index in range(first, self.steps_per_epoch):
                indices = order[batch_index * self.spec.batch_size:(batch_index + 1) * self.spec.batch_size]
                loss, accuracy, tokens = self._train_step([self.train_examples[i] for i in indices])
                position = _Position(epoch=epoch, batch=batch_index + 1, step=position.step + 1,
                                     trained_tokens=position.trained_tokens + tokens)
                metrics = StepMetrics(step=position.step, total_steps=self.total_steps, epoch=epoch + 1,
                                      train_loss=loss, train_mean_token_accuracy=accuracy,
                                      trained_tokens=position.trained_tokens)
                end_of_epoch = batch_index + 1 == self.steps_per_epoch
                if self.valid_examples and (position.step % self.spec.eval_every_steps == 0 or end_of_epoch):
                    metrics.valid_loss, metrics.valid_mean_token_accuracy = self._evaluate(self._next_valid_batch())
                if self.valid_examples and end_of_epoch:
                    metrics.full_valid_loss, metrics.full_valid_mean_token_accuracy = self._evaluate(self.valid_examples)
                history.append(metrics)
                directive = self.control.after_step(metrics)
                if directive is Directive.STOP:
                    return TrainingOutcome("stopped", position.step, position.trained_tokens, history=history)
                if end_of_epoch:
                    # The position after the last batch of an epoch is the start of the next one.
                    position = _Position(epoch=epoch + 1, batch=0, step=position.step,
                                         trained_tokens=position.trained_tokens)
                    self.control.on_checkpoint(self._save_state(position), metrics)
                if directive is Directive.PAUSE and position.step < self.total_steps:
                    if not end_of_epoch:
                        self.control.on_checkpoint(self._save_state(position), metrics)
                    return TrainingOutcome("paused", position.step, position.trained_tokens, history=history)
        adapter_dir = self.work_dir / "final"
        self._save_adapter(adapter_dir)
        return TrainingOutcome("completed", position.step, position.trained_tokens, adapter_dir=adapter_dir,
                               final_metrics=metrics, history=history)

    # ------------------------------------------------------------------------------------- steps
    def _epoch_order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.spec.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train_examples), generator=generator).tolist()

    def _autocast(self) -> Any:
        if self.dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _train_step(self, batch: list[Any]) -> tuple[float, float, int]:
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            if self.spec.method == "dpo":
                loss, accuracy, tokens = self._dpo_loss(batch)
            else:
                loss, accuracy, tokens = self._sft_loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach()), accuracy, tokens

    def _collate(self, examples: list[TokenizedExample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(e.input_ids) for e in examples)
        ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example.input_ids)
            ids[row, :n] = torch.tensor(example.input_ids)
            labels[row, :n] = torch.tensor(example.labels)
            mask[row, :n] = 1
        return ids.to(self.device), labels.to(self.device), mask.to(self.device)

    def _token_logits(self, examples: list[TokenizedExample]) -> tuple[torch.Tensor, torch.Tensor, int]:
        ids, labels, mask = self._collate(examples)
        logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        return logits, labels[:, 1:], int(mask.sum())

    def _sft_loss(self, batch: list[TokenizedExample]) -> tuple[torch.Tensor, float, int]:
        logits, targets, tokens = self._token_logits(batch)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE)
        trained = targets != IGNORE
        correct = (logits.argmax(-1) == targets) & trained
        return loss, float(correct.sum()) / max(1, int(trained.sum())), tokens

    def _sequence_logps(self, examples: list[TokenizedExample]) -> tuple[torch.Tensor, int]:
        logits, targets, tokens = self._token_logits(examples)
        trained = targets != IGNORE
        logps = torch.gather(logits.log_softmax(-1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (logps * trained).sum(-1), tokens

    def _dpo_loss(self, batch: list[PreferenceExample]) -> tuple[torch.Tensor, float, int]:
        sequences = [e.chosen for e in batch] + [e.rejected for e in batch]
        policy, tokens = self._sequence_logps(sequences)
        with torch.no_grad(), self.model.disable_adapter():
            reference, _ = self._sequence_logps(sequences)
        n = len(batch)
        margin = (policy[:n] - reference[:n]) - (policy[n:] - reference[n:])
        loss = -F.logsigmoid(self.spec.beta * margin).mean()
        accuracy = float((margin > 0).float().mean())
        return loss, accuracy, tokens

    @torch.no_grad()
    def _evaluate(self, examples: list[Any]) -> tuple[float, float]:
        self.model.eval()
        try:
            losses, accuracies, weights = [], [], []
            for start in range(0, len(examples), max(1, self.spec.batch_size)):
                chunk = examples[start:start + max(1, self.spec.batch_size)]
                with self._autocast():
                    loss, accuracy, _ = self._dpo_loss(chunk) if self.spec.method == "dpo" else self._sft_loss(chunk)
                losses.append(float(loss))
                accuracies.append(accuracy)
                weights.append(len(chunk))
            total = sum(weights)
            return (sum(loss * n for loss, n in zip(losses, weights, strict=True)) / total,
                    sum(accuracy * n for accuracy, n in zip(accuracies, weights, strict=True)) / total)
        finally:
            self.model.train()

    def _next_valid_batch(self) -> list[Any]:
        size = max(1, self.spec.batch_size)
        batch = [self.valid_examples[(self._valid_cursor + i) % len(self.valid_examples)] for i in range(size)]
        self._valid_cursor = (self._valid_cursor + size) % len(self.valid_examples)
        return batch

    # ---------------------------------------------------------------------------------- persistence
    def _save_adapter(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory, safe_serialization=True)
        # peft adds a generated model card; provenance lives in the artifact manifest instead, and
        # artifacts hold only weights (safetensors) and configuration (JSON).
        (directory / "README.md").unlink(missing_ok=True)

    def _save_state(self, position: _Position) -> Path:
        directory = self.work_dir / f"state-step-{position.step}"
        self._save_adapter(directory)
        optimizer_state = self.optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        for index, slots in optimizer_state["state"].items():
            for name, value in slots.items():
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
        save_file(tensors, str(directory / OPTIMIZER_TENSORS))
        rng = {"torch_cpu": torch.random.get_rng_state()}
        if torch.cuda.is_available():
            for device_index, state in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"torch_cuda_{device_index}"] = state
        save_file(rng, str(directory / RNG_TENSORS))
        state = {
            "position": position.__dict__,
            "optimizer_param_groups": optimizer_state["param_groups"],
            "scheduler": self.scheduler.state_dict(),
            "valid_cursor": self._valid_cursor,
            "spec": self.spec.to_json(),
        }
        (directory / STATE_FILE).write_text(json.dumps(state, indent=2))
        return directory

    def _load_state(self, directory: Path) -> _Position:
        state = json.loads((directory / STATE_FILE).read_text())
        set_peft_model_state_dict(self.model, load_file(str(directory / ADAPTER_WEIGHTS)))
        tensors = load_file(str(directory / OPTIMIZER_TENSORS))
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value.to(self.device)
        self.optimizer.load_state_dict({"state": slots, "param_groups": state["optimizer_param_groups"]})
        self.scheduler.load_state_dict(state["scheduler"])
        rng = load_file(str(directory / RNG_TENSORS))
        torch.random.set_rng_state(rng["torch_cpu"])
        if torch.cuda.is_available():
            for device_index in range(torch.cuda.device_count()):
                if f"torch_cuda_{device_index}" in rng:
                    torch.cuda.set_rng_state(rng[f"torch_cuda_{device_index}"], device_index)
        self._valid_cursor = int(state["valid_cursor"])
        return _Position(**state["position"])

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return get_peft_model_state_dict(self.model)


def _linear_schedule(warmup: int, total: int) -> Any:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor
