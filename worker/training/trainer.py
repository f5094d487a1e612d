"""The training loop: a PEFT adapter on a frozen base model, supervised (SFT) or preference (DPO) loss.

It knows nothing of Celery or the database. It reports every optimizer step to a `TrainingControl`, which
answers whether to go on, pause, stop or yield the worker (preemption), and hands it checkpoints to publish.
A checkpoint holds the full trainer state (adapter, optimizer, scheduler, RNG of every process, data
position, early-stopping state) as safetensors and JSON, never pickle, so a run resumed from one continues
exactly where it stopped: batch order is a pure function of (seed, epoch), and the position is (epoch,
batch within epoch).

Loss is the mean over every trained token of the step's examples (or over the examples, for DPO), however
they are laid out: packed rows, padded rows, or split across data-parallel processes (each process divides
its sum by the global count, so the averaged gradients equal the single-process gradient).
DPO uses the base model with the adapter disabled as its reference, so there is no second copy of the weights.

One file on purpose (~680 lines): the training loop with its checkpoint, resume and stopping rules;
the step order is the contract (exact resume depends on it) and is read top to bottom.
"""

from __future__ import annotations

import inspect
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from contracts.training.spec import LEARNED_ACCURACY, TrainingSpec
from worker.training import adapters, attention
from worker.training.batching import Batch, pack, pad
from worker.training.data import IGNORE, PreferenceExample, TokenizedExample
from worker.training.distributed import DistributedContext, sharding_unsupported
from worker.training.loss import head_computes_logits, head_outputs_hidden, linear_cross_entropy

STATE_FILE = "trainer_state.json"
OPTIMIZER_TENSORS = "optimizer.safetensors"
RNG_TENSORS = "rng_state.safetensors"
BEST_PREFIX = "best_"
CALIBRATION_EXAMPLES = 64
#: The final pass over the training data (supervised) scores at most this many examples, evenly spaced.
FINAL_PASS_EXAMPLES = 512


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

    def as_event_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
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
    #: data (up to FINAL_PASS_EXAMPLES examples), in eval mode, and how many examples that pass scored.
    final_train_loss: float | None = None
    final_train_accuracy: float | None = None
    final_pass_examples: int = 0
    train_examples: int = 0


@dataclass
class _Position:
    epoch: int = 0
    batch: int = 0  # next batch within the epoch
    step: int = 0
    trained_tokens: int = 0


@dataclass
class _EpochTally:
    """Trained tokens of the current epoch and how many of them the model predicted right (before each
    step's update): the epoch's training token accuracy, which stop_when_learned reads at the epoch's end."""

    correct: float = 0.0
    trained: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.trained if self.trained else 0.0


@dataclass
class _EarlyStopping:
    best_loss: float | None = None
    best_step: int | None = None
    evaluations_without_improvement: int = 0


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware runs it natively, else None (fp32)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        supported = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
            torch.cpu, "_is_amx_tile_supported", lambda: False)()
        return torch.bfloat16 if supported else None
    return None


def _is_quantized(module: Any) -> bool:
    return type(module).__module__.startswith("bitsandbytes")


def final_pass_sample(count: int) -> list[int]:
    """Indices of the training examples the final pass scores: all, or FINAL_PASS_EXAMPLES evenly spaced."""
    if count <= FINAL_PASS_EXAMPLES:
        return list(range(count))
    return [index * count // FINAL_PASS_EXAMPLES for index in range(FINAL_PASS_EXAMPLES)]


def checkpoint_steps(total_steps: int, steps_per_epoch: int, n_checkpoints: int | None) -> set[int]:
    """One at the end of every epoch by default; else `n_checkpoints` spread evenly (the last at the end)."""
    if n_checkpoints is None:
        return set(range(steps_per_epoch, total_steps + 1, steps_per_epoch)) | {total_steps}
    count = min(n_checkpoints, total_steps)
    return {math.ceil(total_steps * k / count) for k in range(1, count + 1)}


def lr_factor(schedule: str, warmup: int, total: int) -> Any:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)
    return factor


class Trainer:
    def __init__(self, spec: TrainingSpec, model: Any, tokenizer: Any, train: Sequence[Any],
                 valid: Sequence[Any], control: TrainingControl | None, work_dir: Path,
                 *, precision: str = "auto", distributed: DistributedContext | None = None,
                 rehearsal: Sequence[TokenizedExample] = (), device: str | None = None) -> None:
        """`rehearsal`: the base model's own answers to general prompts (worker.training.rehearsal); every step
        also pulls the model's next-token distributions on a batch of them toward the base model's (KL), so it
        keeps what it knew. They never count toward accuracy, the epoch tally or the final pass.
        `device`: where training runs, default where the model is; under FSDP the model may be loaded on the
        CPU and its shards are moved there."""
        if not train:
            raise ValueError("no training examples")
        self.spec = spec
        self.tokenizer = tokenizer
        self.train_examples = list(train)
        self.valid_examples = list(valid)
        self.rehearsal = list(rehearsal)
        self.control = control
        self.work_dir = work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.dist = distributed or DistributedContext.single()
        self.device = next(model.parameters()).device
        training_device = torch.device(device) if device else self.device
        self.dtype = None if precision == "fp32" else autocast_dtype(training_device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.capacity: int | None = min(spec.max_seq_len,
                                        getattr(model.config, "max_position_embeddings", spec.max_seq_len))
        self.packing = spec.packing and spec.method == "supervised" and not spec.adapter.is_prompt_learning

        implementation = attention.for_packed_rows(model.config, training_device,
                                                   half_precision=self.dtype is not None) if self.packing else None
        if implementation is not None:
            # A kernel that attends within each packed example only (see worker.training.attention): a
            # step's examples go in one row (batching.pack). Otherwise the model keeps its own attention
            # over the block-diagonal mask transformers builds from the packed rows' position ids, in rows
            # of bounded width.
            model.config._attn_implementation = implementation
            self.capacity = None
        # Packed rows score only the positions that have a target: the model's head and the loss skip
        # the prompt tokens (transformers' `logits_to_keep`, where the model takes it).
        self._keeps_positions = self.packing and "logits_to_keep" in inspect.signature(model.forward).parameters
        torch.manual_seed(spec.seed)  # adapter initialisation depends on it (identical on every process)
        self.model = adapters.build(model, spec.adapter, calibrate=self._calibrate)
        if spec.gradient_checkpointing:
            # Non-reentrant checkpointing: the frozen base's inputs need no requires_grad for LoRA to get its
            # gradients, and it works with the packed attention's unbind/split.
            base = self.model.get_base_model()
            if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x renamed it
                base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.initial_dir = self.work_dir / "initial"
        self.initial_dir.mkdir(exist_ok=True)
        adapters.save_initial(self.model, spec.adapter, self.initial_dir)
        if self.dtype is not None and spec.adapter.type != "dora":
            self._store_frozen_linears(self.dtype)
        self._references = self._reference_distributions() if self.rehearsal else []
        # The loss at scored positions from the output layer chunk by chunk (worker.training.loss), where the
        # model's logits are that layer's product and its weight is whole in this process (not under FSDP).
        self._head = None
        if self._keeps_positions and not self.dist.fsdp:
            with self._autocast():
                self._head = head_computes_logits(self.model.get_base_model(), self._probe_ids())
        if self.dist.fsdp:
            reason = sharding_unsupported(spec)
            if reason:
                raise ValueError(reason)
        self.network = self.dist.wrap(self.model, training_device)
        # FSDP moves the shards to the training device (the model may have been loaded on the CPU)
        self.device = next(self.model.parameters()).device
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self._trainable_names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=spec.learning_rate, weight_decay=0.0)
        self.steps_per_epoch = math.ceil(len(self.train_examples) / spec.batch_size)
        self.total_steps = self.steps_per_epoch * spec.n_epochs
        warmup = round(self.total_steps * spec.warmup_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(spec.lr_scheduler, warmup, self.total_steps))
        self.checkpoints = checkpoint_steps(self.total_steps, self.steps_per_epoch, spec.n_checkpoints)
        self._valid_cursor = 0
        self._stopping = _EarlyStopping()
        self._tally = _EpochTally()
        self.best_dir = self.work_dir / "best"

    # -------------------------------------------------------------------------------------------- run
    def run(self, resume_from: Path | None = None) -> TrainingOutcome:
        position = self._load_state(resume_from) if resume_from else _Position()
        history: list[StepMetrics] = []
        metrics: StepMetrics | None = None
        self.network.train()
        for epoch in range(position.epoch, self.spec.n_epochs):
            order = self._epoch_order(epoch)
            first = position.batch if epoch == position.epoch else 0
            for batch_index in range(first, self.steps_per_epoch):
                indices = order[batch_index * self.spec.batch_size:(batch_index + 1) * self.spec.batch_size]
                loss, accuracy, tokens, trained = self._train_step([self.train_examples[i] for i in indices],
                                                                   self._rehearsal_batch(position.step))
                self._tally.correct += accuracy * trained
                self._tally.trained += trained
                position = _Position(epoch=epoch, batch=batch_index + 1, step=position.step + 1,
                                     trained_tokens=position.trained_tokens + tokens)
                metrics = StepMetrics(step=position.step, total_steps=self.total_steps, epoch=epoch + 1,
                                      train_loss=loss, train_mean_token_accuracy=accuracy,
                                      trained_tokens=position.trained_tokens)
                at_checkpoint = position.step in self.checkpoints
                if self.valid_examples and position.step % self.spec.eval_interval == 0:
                    metrics.valid_loss, metrics.valid_mean_token_accuracy = self._evaluate(self._next_valid_batch())
                if self.valid_examples and at_checkpoint:
                    metrics.full_valid_loss, metrics.full_valid_mean_token_accuracy = self._evaluate(self.valid_examples)
                    if metrics.valid_loss is None:
                        metrics.valid_loss = metrics.full_valid_loss
                        metrics.valid_mean_token_accuracy = metrics.full_valid_mean_token_accuracy
                best = self._track_best(metrics) if at_checkpoint else False
                history.append(metrics)
                directive = self._directive(metrics)
                if directive is Directive.STOP:
                    return TrainingOutcome("stopped", position.step, position.trained_tokens, history=history)
                learned: float | None = None
                if batch_index + 1 == self.steps_per_epoch:
                    # The position after the last batch of an epoch is the start of the next one.
                    position = _Position(epoch=epoch + 1, batch=0, step=position.step,
                                         trained_tokens=position.trained_tokens)
                    if self._tally.accuracy >= LEARNED_ACCURACY:
                        learned = self._tally.accuracy
                    self._tally = _EpochTally()
                if at_checkpoint:
                    self._checkpoint(position, metrics, best=best)
                if self._should_stop_early():
                    return self._finish(position, metrics, history, stopped_early=True)
                if learned is not None and self.spec.stop_when_learned and position.step < self.total_steps:
                    return self._finish(position, metrics, history, stopped_early=False,
                                        learned=(epoch + 1, learned))
                if directive in (Directive.PAUSE, Directive.PREEMPT) and position.step < self.total_steps:
                    if not at_checkpoint:
                        self._checkpoint(position, metrics, best=False)
                    status = "paused" if directive is Directive.PAUSE else "preempted"
                    return TrainingOutcome(status, position.step, position.trained_tokens, history=history)
        return self._finish(position, metrics, history, stopped_early=False)

    def _finish(self, position: _Position, metrics: StepMetrics | None, history: list[StepMetrics],
                *, stopped_early: bool, learned: tuple[int, float] | None = None) -> TrainingOutcome:
        adapter_dir = self.work_dir / "final"
        best_selected = bool(self.spec.early_stopping and self._stopping.best_step is not None)
        if best_selected:
            # Best-checkpoint selection: the adapter with the lowest full validation loss is the model.
            if self.dist.is_main:
                shutil.copytree(self.best_dir, adapter_dir, dirs_exist_ok=True)
        else:
            whole = self._whole_adapter()
            if self.dist.is_main:
                adapters.save(self.model, self.spec.adapter, adapter_dir, self.initial_dir, state_dict=whole)
        self.dist.barrier()
        outcome = TrainingOutcome("completed", position.step, position.trained_tokens, adapter_dir=adapter_dir,
                                  final_metrics=metrics, history=history,
                                  stopped_early_at=position.step if stopped_early else None,
                                  best_step=self._stopping.best_step if self.spec.early_stopping else None)
        if learned is not None:
            outcome.learned_at_epoch, outcome.learned_accuracy = learned
        if self.spec.method == "supervised":
            if best_selected:
                adapters.load_raw(self.model, self.best_dir, self.dist.distribute_like)  # score the published adapter
            sample = final_pass_sample(len(self.train_examples))
            outcome.final_train_loss, outcome.final_train_accuracy = self._evaluate(
                [self.train_examples[i] for i in sample])
            outcome.final_pass_examples = len(sample)
            outcome.train_examples = len(self.train_examples)
        return outcome

    def _directive(self, metrics: StepMetrics) -> Directive:
        directive = self.control.after_step(metrics) if self.dist.is_main and self.control else Directive.CONTINUE
        return Directive(self.dist.broadcast_from_main(directive.value))

    def _store_frozen_linears(self, dtype: torch.dtype) -> None:
        """Keep the frozen base's Linear weights in the autocast dtype.

        Autocast casts a matmul's fp32 weight to bf16 on every call unless the weight requires grad (it caches
        only those), so a frozen base was re-cast at every forward and backward (measured: 7 % of a step).
        Storing the same bf16 values once changes no matrix product. Where the output layer shares its weight
        with the input embeddings (tied, as in SmolLM2), the embeddings become bf16 too and the residual
        stream runs in bf16, as it does when a model is loaded in bf16 (TRL's and Axolotl's usual setting);
        the norms and the adapter stay fp32. DoRA is left alone: it also reads the base weight outside
        matmuls (for its weight norm).
        """
        for module in self.model.modules():
            # (quantized Linears hold packed integers: they stay as they are)
            if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad \
                    and module.weight.dtype.is_floating_point and not _is_quantized(module):
                module.to(dtype)

    # ---------------------------------------------------------------------------------- early stopping
    def _track_best(self, metrics: StepMetrics) -> bool:
        """At a checkpoint with full validation: is this the best adapter so far? (Keeps it if so.)"""
        if self.spec.early_stopping is None or metrics.full_valid_loss is None:
            return False
        state = self._stopping
        if state.best_loss is None or metrics.full_valid_loss < state.best_loss - self.spec.early_stopping.min_delta:
            state.best_loss, state.best_step = metrics.full_valid_loss, metrics.step
            state.evaluations_without_improvement = 0
            whole = self._whole_adapter()
            if self.dist.is_main:
                shutil.rmtree(self.best_dir, ignore_errors=True)
                adapters.save(self.model, self.spec.adapter, self.best_dir, self.initial_dir, state_dict=whole)
            return True
        state.evaluations_without_improvement += 1
        return False

    def _should_stop_early(self) -> bool:
        stopping = self.spec.early_stopping
        return bool(stopping and self._stopping.evaluations_without_improvement >= stopping.patience)

    # ------------------------------------------------------------------------------------------ steps
    def _epoch_order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.spec.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train_examples), generator=generator).tolist()

    def _autocast(self) -> Any:
        if self.dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _rehearsal_batch(self, step: int) -> list[int]:
        """Indices of the rehearsal examples of optimizer step `step` (0-based): a batch_size window that cycles
        through them, a pure function of the step so that a resumed run rehearses exactly what it would have."""
        if not self.rehearsal:
            return []
        size = min(self.spec.batch_size, len(self.rehearsal))
        return [(step * size + i) % len(self.rehearsal) for i in range(size)]

    def _train_step(self, examples: list[Any], rehearsal: Sequence[int] = ()) -> tuple[float, float, int, int]:
        """(mean loss, accuracy, real tokens processed, trained tokens or examples), over every process.

        The loss reported is the user batch's; with rehearsal (indices into the rehearsal examples), the
        rehearsal batch's mean KL to the base model is added to the objective with equal weight."""
        self.optimizer.zero_grad(set_to_none=True)
        local = self.dist.shard(examples)
        with self._autocast():
            if self.spec.method == "dpo":
                loss_sum, count, correct, tokens = self._dpo_sums(local or examples[:1], self.network)
                if not local:
                    loss_sum, count, correct, tokens = loss_sum * 0, 0, 0, 0
                total = self.dist.sum_int(count)
            else:
                loss_sum, count, correct, tokens = self._sft_sums(local or examples[:1], self.network)
                if not local:  # more processes than examples: take part in the collectives, contribute nothing
                    loss_sum, count, correct, tokens = loss_sum * 0, 0, 0, 0
                total = self.dist.sum_int(count)
        # Each process divides its sum by the global count; the data-parallel wrapper averages gradients over
        # the processes, so scaling by their number makes the result the single-process gradient.
        (loss_sum * self.dist.world_size / max(1, total)).backward()
        if rehearsal:
            # A second backward adds the rehearsal gradient to the user batch's. Under DDP each backward
            # averages over processes; averaging is linear, so the sum is still the single-process gradient.
            own = self.dist.shard(list(rehearsal))
            with self._autocast():
                kept_sum, kept_count, kept_tokens = self._anchor_sums(own or list(rehearsal[:1]))
            if not own:
                kept_sum, kept_count, kept_tokens = kept_sum * 0, 0, 0
            (kept_sum * self.dist.world_size / max(1, self.dist.sum_int(kept_count))).backward()
            tokens += kept_tokens
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        loss_total, correct_total, tokens_total = self.dist.sum_floats(float(loss_sum.detach()), float(correct), float(tokens))
        return loss_total / max(1, total), correct_total / max(1, total), int(tokens_total), int(total)

    def _batch(self, examples: list[TokenizedExample]) -> Batch:
        if self.packing:
            return pack(examples, self.pad_id, self.capacity).to(self.device)
        return pad(examples, self.pad_id).to(self.device)

    def _logits(self, network: Any, batch: Batch) -> torch.Tensor:
        logits = network(**batch.model_inputs(), use_cache=False).logits
        if logits.shape[1] > batch.input_ids.shape[1]:  # prompt tuning: outputs for the virtual tokens first
            logits = logits[:, -batch.input_ids.shape[1]:]
        return logits

    def _sft_sums(self, examples: list[TokenizedExample], network: Any) -> tuple[torch.Tensor, int, int, int]:
        """(sum of token losses, trained tokens, correctly predicted tokens, real tokens processed)."""
        batch = self._batch(examples)
        targets = batch.labels[:, 1:]
        if self._keeps_positions and batch.input_ids.shape[0] == 1:
            # One packed row: logits only where a token is predicted (a prompt's are never used).
            scored = torch.nonzero(targets[0] != IGNORE).flatten()
            targets = targets[0, scored]
            if self._head is not None:
                with head_outputs_hidden(self._head):
                    hidden = network(**batch.model_inputs(), use_cache=False, logits_to_keep=scored).logits[0]
                loss_sum, correct = linear_cross_entropy(hidden, self._head, targets,
                                                         self.dtype or torch.float32)
                return loss_sum, len(targets), correct, batch.tokens
            logits = network(**batch.model_inputs(), use_cache=False, logits_to_keep=scored).logits[0]
        else:
            logits = self._logits(network, batch)[:, :-1]
            logits, targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
        trained = targets != IGNORE
        # The loss in fp32 whatever the head computed in; the argmax needs no copy (a cast keeps the order).
        loss_sum = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="sum")
        correct = int(((logits.argmax(-1) == targets) & trained).sum())
        return loss_sum, int(trained.sum()), correct, batch.tokens

    def _anchor_sums(self, indices: list[int]) -> tuple[torch.Tensor, int, int]:
        """Rehearsal: (sum over the answer tokens of KL(base || tuned) of the next-token distributions, answer
        tokens, real tokens processed) for the rehearsal examples at `indices`.

        The whole distribution, not just the base model's greedy token, is held in place: a cross-entropy on
        its own greedy answers pulls only on the top token, which the model already predicts, so it barely
        resists drift (measured: as many general answers lost as without rehearsal; docs/training.md).
        Padded rows (not packed) keep the answer positions in example order, matching the references."""
        examples = [self.rehearsal[i] for i in indices]
        batch = pad(examples, self.pad_id).to(self.device)
        logits = self._logits(self.network, batch)[:, :-1].float().log_softmax(-1)
        answer = batch.labels[:, 1:] != IGNORE
        reference = torch.cat([self._references[i] for i in indices]).to(self.device, torch.float32)
        divergence = F.kl_div(logits[answer], reference, log_target=True, reduction="sum")
        return divergence, int(answer.sum()), batch.tokens

    @torch.no_grad()
    def _reference_distributions(self) -> list[torch.Tensor]:
        """The base model's next-token log-probabilities at every answer position of each rehearsal example,
        computed once (bf16, [answer tokens, vocabulary] each) with the adapter disabled."""
        references = []
        with self.model.disable_adapter():
            self.model.eval()
            for example in self.rehearsal:
                batch = pad([example], self.pad_id).to(self.device)
                with self._autocast():
                    logits = self._logits(self.model, batch)[:, :-1].float().log_softmax(-1)
                references.append(logits[batch.labels[:, 1:] != IGNORE].to(torch.bfloat16).cpu())
            self.model.train()
        return references

    def _sequence_logps(self, network: Any, sequences: list[TokenizedExample]) -> tuple[torch.Tensor, int]:
        batch = pad(sequences, self.pad_id).to(self.device)
        logits = self._logits(network, batch)[:, :-1].float()
        targets = batch.labels[:, 1:]
        trained = targets != IGNORE
        logps = torch.gather(logits.log_softmax(-1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (logps * trained).sum(-1), batch.tokens

    def _dpo_sums(self, examples: list[PreferenceExample], network: Any) -> tuple[torch.Tensor, int, int, int]:
        """(sum of example losses, examples, examples whose chosen reply wins, real tokens processed)."""
        sequences = [e.chosen for e in examples] + [e.rejected for e in examples]
        policy, tokens = self._sequence_logps(network, sequences)
        with torch.no_grad(), self.model.disable_adapter():
            reference, _ = self._sequence_logps(self.model, sequences)
        n = len(examples)
        margin = (policy[:n] - reference[:n]) - (policy[n:] - reference[n:])
        loss_sum = -F.logsigmoid(self.spec.beta * margin).sum()
        return loss_sum, n, int((margin > 0).sum()), tokens

    @torch.no_grad()
    def _evaluate(self, examples: list[Any]) -> tuple[float, float]:
        """Loss and accuracy over `examples` (split across processes), in eval mode."""
        self.network.eval()
        try:
            loss_total = correct_total = count_total = 0.0
            local = self.dist.shard(examples)
            step = max(1, self.spec.batch_size)
            # Under FSDP every forward pass gathers weights with every process, so all make as many passes
            # (a process with fewer examples scores one again and counts nothing).
            most = -(-len(examples) // self.dist.world_size) if self.dist.fsdp else len(local)
            for start in range(0, most, step):
                chunk = local[start:start + step]
                with self._autocast():
                    sums = self._dpo_sums(chunk or examples[:1], self.model) if self.spec.method == "dpo" else \
                        self._sft_sums(chunk or examples[:1], self.model)
                if not chunk:
                    continue
                loss_total += float(sums[0])
                count_total += sums[1]
                correct_total += sums[2]
            loss_total, correct_total, count_total = self.dist.sum_floats(loss_total, correct_total, count_total)
            return loss_total / max(1.0, count_total), correct_total / max(1.0, count_total)
        finally:
            self.network.train()

    def _next_valid_batch(self) -> list[Any]:
        size = max(1, self.spec.batch_size)
        batch = [self.valid_examples[(self._valid_cursor + i) % len(self.valid_examples)] for i in range(size)]
        self._valid_cursor = (self._valid_cursor + size) % len(self.valid_examples)
        return batch

    def _probe_ids(self) -> list[int]:
        """A few tokens of the first training example (supervised: packing is), to run through the model once."""
        return list(self.train_examples[0].input_ids[:8])

    def _calibrate(self, model: Any) -> None:
        """CorDA calibration: forward passes over the first training examples (deterministic), one example
        per pass, as peft's covariance hooks expect."""
        sample = [e for e in self.train_examples[:CALIBRATION_EXAMPLES] if isinstance(e, TokenizedExample)]
        for example in sample:
            model(**pad([example], self.pad_id).to(self.device).model_inputs(), use_cache=False)

    # ------------------------------------------------------------------------------------ persistence
    def _whole_adapter(self) -> dict[str, torch.Tensor] | None:
        """Under FSDP, the adapter's parameters gathered whole (a collective: every process calls it);
        otherwise None (the model's own are whole)."""
        if not self.dist.fsdp:
            return None
        return self.dist.full_tensors(dict(zip(self._trainable_names, self.trainable, strict=True)))

    def _optimizer_tensors(self) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
        """The optimizer's state as whole tensors named `state.<parameter index>.<slot>` (gathered under FSDP,
        a collective then), and its parameter groups."""
        optimizer_state = self.optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        for index, slots in optimizer_state["state"].items():
            for name, value in slots.items():
                tensors[f"state.{index}.{name}"] = value
        return self.dist.full_tensors(tensors), optimizer_state["param_groups"]

    def _checkpoint(self, position: _Position, metrics: StepMetrics, *, best: bool) -> None:
        rng = self.dist.gather_objects(torch.random.get_rng_state())
        whole = self._whole_adapter()
        optimizer_tensors = self._optimizer_tensors()
        if self.dist.is_main:
            directory = self._save_state(position, rng, whole, optimizer_tensors)
            if self.control is not None:
                self.control.on_checkpoint(directory, metrics, best=best)
        self.dist.barrier()

    def _save_state(self, position: _Position, rng_states: list[torch.Tensor],
                    adapter_state: dict[str, torch.Tensor] | None,
                    optimizer: tuple[dict[str, torch.Tensor], list[dict[str, Any]]]) -> Path:
        directory = self.work_dir / f"state-step-{position.step}"
        adapters.save(self.model, self.spec.adapter, directory, self.initial_dir, state_dict=adapter_state)
        optimizer_tensors, param_groups = optimizer
        save_file(optimizer_tensors, str(directory / OPTIMIZER_TENSORS))
        rng = {f"torch_cpu_rank{rank}": state for rank, state in enumerate(rng_states)}
        if torch.cuda.is_available():
            for device_index, state in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"torch_cuda_{device_index}"] = state
        save_file(rng, str(directory / RNG_TENSORS))
        if self.best_dir.exists():
            for path in self.best_dir.iterdir():
                shutil.copy(path, directory / (BEST_PREFIX + path.name))
        state = {
            "position": asdict(position),
            "optimizer_param_groups": param_groups,
            "scheduler": self.scheduler.state_dict(),
            "valid_cursor": self._valid_cursor,
            "early_stopping": asdict(self._stopping),
            "epoch_tally": asdict(self._tally),
            "world_size": self.dist.world_size,
            "spec": self.spec.to_json(),
        }
        (directory / STATE_FILE).write_text(json.dumps(state, indent=2))
        return directory

    def _load_state(self, directory: Path) -> _Position:
        state = json.loads((directory / STATE_FILE).read_text())
        if state.get("world_size", 1) != self.dist.world_size:
            raise ValueError(f"checkpoint written by {state.get('world_size')} processes, resuming with "
                             f"{self.dist.world_size}: the data order would differ")
        for name in (adapters.INITIAL_WEIGHTS, adapters.INITIAL_CONFIG):
            if (directory / name).exists():
                shutil.copy(directory / name, self.initial_dir / name)
        adapters.load_raw(self.model, directory, self.dist.distribute_like)
        tensors = load_file(str(directory / OPTIMIZER_TENSORS))
        slots: dict[int, dict[str, torch.Tensor]] = {}
        entries = sorted((int(index), name, key) for key in tensors for _, index, name in [key.split(".", 2)])
        for index, name, key in entries:  # one order on every process: FSDP splits collectively
            slots.setdefault(index, {})[name] = self.dist.distribute_like(tensors[key].to(self.device),
                                                                          self.trainable[index])
        self.optimizer.load_state_dict({"state": slots, "param_groups": state["optimizer_param_groups"]})
        self.scheduler.load_state_dict(state["scheduler"])
        rng = load_file(str(directory / RNG_TENSORS))
        torch.random.set_rng_state(rng[f"torch_cpu_rank{self.dist.rank}"])
        if torch.cuda.is_available():
            for device_index in range(torch.cuda.device_count()):
                if f"torch_cuda_{device_index}" in rng:
                    torch.cuda.set_rng_state(rng[f"torch_cuda_{device_index}"], device_index)
        self._valid_cursor = int(state["valid_cursor"])
        self._stopping = _EarlyStopping(**state.get("early_stopping", {}))
        self._tally = _EpochTally(**state.get("epoch_tally", {}))
        best_files = [p for p in directory.iterdir() if p.name.startswith(BEST_PREFIX)]
        if best_files:
            self.best_dir.mkdir(parents=True, exist_ok=True)
            for path in best_files:
                shutil.copy(path, self.best_dir / path.name[len(BEST_PREFIX):])
        return _Position(**state["position"])

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The trained adapter as peft saves it (whole tensors; under FSDP a collective every process calls)."""
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.model, state_dict=self._whole_adapter())

