"""The training loop: a PEFT adapter on a frozen base model, stepped over the job's examples.

`Trainer` puts the parts together and owns the order of a step, which exact resume depends on (`_step`):
optimizer step -> metrics -> validation -> best-adapter tracking -> the caller's directive -> the epoch's
end -> checkpoint -> the rules that end a run (early stopping, stop_when_learned, pause or preemption).
It knows nothing of Celery or the database: it reports every step to a `TrainingControl`
(worker.training.control), which answers whether to go on, and publishes the checkpoints it is handed.

The parts, each with its own contract:

    kernels       precision, the attention kernel of packed rows, the loss path
    adapters      the peft model and the adapter files
    objectives    the SFT, DPO and rehearsal (anchor) losses, as sums with their counts
    reinforcement GRPO: samples from the policy (serving's engine on these weights), grades, the loss
    self_play     SPIN: each round's own answers (the same sampler) and the pairs they make with the data's
    optimization  AdamW, the learning-rate schedule, steps and checkpoint steps
    distributed   data-parallel processes: DDP or FSDP wrapping, sharding examples, collectives
    evaluation    validation, the final pass over the training data
    checkpoints   the state a run resumes from, as safetensors and JSON

Loss is the mean over every trained token of the step's examples (or over the examples, for DPO), however
they are laid out: each process divides its sum by the global count (objectives), so the averaged gradients
equal the single-process gradient.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from contracts.machine import ThreadGovernor
from contracts.training.spec import LEARNED_ACCURACY, TrainingSpec
from worker.training import adapters, checkpoints, kernels
from worker.training.batching import pad
from worker.training.checkpoints import AdapterSaver, EpochTally, LoopState, Optimization, Position
from worker.training.control import Directive, StepMetrics, TrainingControl, TrainingOutcome
from worker.training.data import TokenizedExample
from worker.training.distributed import DistributedContext, sharding_unsupported
from worker.training.evaluation import ValidationCursor, evaluate, final_pass_sample
from worker.training.objectives import Objectives, reference_distributions
from worker.training.optimization import Schedule, build_optimizer
from worker.training.reinforcement import GroupPolicyOptimization
from worker.training.self_play import STATE_FILE, SelfPlay
from worker.training.thread_budget import apply_budget, follow_budget_within_steps

if TYPE_CHECKING:
    from graders.grading import GradingContext

#: CorDA's calibration runs the first this many training examples through the model.
CALIBRATION_EXAMPLES = 64


class Trainer:
    def __init__(self, spec: TrainingSpec, model: Any, tokenizer: Any, train: Sequence[Any],
                 valid: Sequence[Any], control: TrainingControl | None, work_dir: Path,
                 *, precision: str = "auto", distributed: DistributedContext | None = None,
                 rehearsal: Sequence[TokenizedExample] = (), device: str | None = None,
                 grading: GradingContext | None = None, governor: ThreadGovernor | None = None) -> None:
        """`rehearsal`: the base model's own answers to general prompts (worker.training.rehearsal); every step
        also pulls the model's next-token distributions on a batch of them toward the base model's (KL), so it
        keeps what it knew. They never count toward accuracy, the epoch tally or the final pass.
        `device`: where training runs, default where the model is; under FSDP the model may be loaded on the
        CPU and its shards are moved there. `precision` "fp32" turns bf16 autocast off. `grading`: how a
        reinforcement job's grader runs (its examples are then `PromptExample`s). `governor`: this process's
        threads, looked up before every step and at every decoder layer within one (contracts.machine: fewer
        while serving computes on the machine; worker.training.thread_budget);
        None: the threads are left as they are."""
        self.governor = governor
        if not train:
            raise ValueError("no training examples")
        self.spec = spec
        self.tokenizer = tokenizer
        self.train_examples = list(train)
        self.valid_examples = list(valid)
        self.control = control
        self.work_dir = work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.dist = distributed or DistributedContext.single()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        loaded_on = next(model.parameters()).device
        training_device = torch.device(device) if device else loaded_on
        self.kernels = kernels.choose(spec, model, training_device, precision=precision)
        dtype = self.kernels.dtype
        torch.manual_seed(spec.seed)  # adapter initialisation depends on it (identical on every process)
        self.model = adapters.build(model, spec.adapter,
                                    calibrate=calibration(self.train_examples, self.pad_id, loaded_on))
        if spec.gradient_checkpointing:
            kernels.enable_gradient_checkpointing(self.model)
        self.initial_dir = self.work_dir / "initial"
        self.initial_dir.mkdir(exist_ok=True)
        adapters.save_initial(self.model, spec.adapter, self.initial_dir)
        samples = spec.method == "reinforcement" or spec.self_play_iterations > 0
        if samples and self.dist.world_size > 1:
            raise ValueError("reinforcement and self-play fine-tuning run in one process (their sampler serves one "
                             "model copy)")
        if dtype is not None and spec.adapter.type != "dora":
            kernels.store_frozen_linears(self.model, dtype)
        references = reference_distributions(self.model, rehearsal, self.pad_id, loaded_on, dtype) if rehearsal else []
        # The loss from the output layer chunk by chunk (worker.training.loss) needs its weight whole in this
        # process: not under FSDP.
        head = None
        if self.kernels.keeps_positions and not self.dist.fsdp:
            head = kernels.probe_head(self.model, list(self.train_examples[0].input_ids[:8]), loaded_on, dtype)
        if self.dist.fsdp and (reason := sharding_unsupported(spec)):
            raise ValueError(reason)
        self.network = self.dist.wrap(self.model, training_device)
        # FSDP moves the shards to the training device (the model may have been loaded on the CPU)
        self.device = next(self.model.parameters()).device
        self.objectives = Objectives(spec, self.model, self.pad_id, self.kernels, self.device, head=head,
                                     rehearsal=rehearsal, references=references)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.saver = AdapterSaver(self.model, spec, self.dist, self.initial_dir)
        self.schedule = Schedule.of(spec, len(self.train_examples))
        self.optimizer, self.scheduler = build_optimizer(self.trainable, spec, self.schedule.total_steps)
        self.loop = LoopState()
        self.validation = ValidationCursor(self.valid_examples, spec.batch_size)
        self.best_dir = self.work_dir / "best"
        self.reinforcement: GroupPolicyOptimization | None = None
        if spec.method == "reinforcement":
            self.reinforcement = self._reinforcement(tokenizer, grading)
        self.self_play: SelfPlay | None = None
        if spec.self_play_iterations:
            self.self_play = self._self_play(tokenizer)

    def _policy_sampler(self, tokenizer: Any, *, max_batch: int, longest_prompt: int, max_new_tokens: int) -> Any:
        """ftaas's engine over this model's own weights, sampling with its live adapter (serving.sampler)."""
        from serving.sampler import PolicySampler

        limit = int(getattr(self.model.config, "max_position_embeddings", 0) or self.spec.max_seq_len)
        return PolicySampler(self.model, tokenizer, max_batch=max(1, min(256, max_batch)),
                             max_context=min(limit, longest_prompt + max_new_tokens + 1),
                             max_rank=max(64, self.spec.adapter.r), dtype=self.kernels.dtype)

    def _reinforcement(self, tokenizer: Any, grading: GradingContext | None) -> GroupPolicyOptimization:
        assert grading is not None, "a reinforcement job needs its grading context"
        spec = self.spec
        sampler = self._policy_sampler(
            tokenizer, max_batch=spec.batch_size * spec.samples_per_prompt,
            longest_prompt=max(len(p.prompt_ids) for p in [*self.train_examples, *self.valid_examples]),
            max_new_tokens=spec.max_completion_tokens)
        return GroupPolicyOptimization(spec, self.model, tokenizer, sampler, grading, self.device, self.pad_id,
                                       self.objectives.autocast)

    def _self_play(self, tokenizer: Any) -> SelfPlay:
        from worker.training.self_play import PROMPTS_PER_CALL, max_answer_tokens, split_answer

        sampler = self._policy_sampler(
            tokenizer, max_batch=PROMPTS_PER_CALL,
            longest_prompt=max(len(split_answer(e)[0]) for e in self.train_examples),
            max_new_tokens=max_answer_tokens(self.spec, self.train_examples))
        return SelfPlay(self.spec, self.model, sampler, self.train_examples,
                        lambda sequences: self.objectives.sequence_logps(self.model, sequences)[0],
                        self.objectives.autocast)

    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps

    # -------------------------------------------------------------------------------------------- run
    def run(self, resume_from: Path | None = None) -> TrainingOutcome:
        """Train from the start, or from the checkpoint in `resume_from`, until the run completes, pauses, is
        preempted or stopped; every process of a data-parallel group calls it and gets the same outcome."""
        if resume_from is not None:
            self.loop = checkpoints.load(resume_from, model=self.model, initial_dir=self.initial_dir,
                                         best_dir=self.best_dir, device=self.device, dist=self.dist,
                                         optimization=Optimization(self.optimizer, self.scheduler, self.trainable))
            self.validation.position = self.loop.valid_cursor
            if self.self_play is not None and (resume_from / STATE_FILE).exists():
                self.self_play.restore(json.loads((resume_from / STATE_FILE).read_text()))
        if self.governor is None:
            return self._run()
        handles = follow_budget_within_steps(self.network, self.governor)
        try:
            with self.governor.working():
                return self._run()
        finally:
            for handle in handles:
                handle.remove()

    def _run(self) -> TrainingOutcome:
        history: list[StepMetrics] = []
        metrics: StepMetrics | None = None
        size = self.spec.batch_size
        self.network.train()
        start = self.loop.position
        for epoch in range(start.epoch, self.spec.n_epochs):
            order = self._epoch_order(epoch)
            round_index = self.self_play.round_of(epoch) if self.self_play is not None else None
            if self.self_play is not None and round_index is not None and self.self_play.round != round_index:
                # A round's first epoch (a run resumed inside a round holds its checkpoint's pairs instead)
                self.self_play.prepare(round_index)
            for batch_index in range(start.batch if epoch == start.epoch else 0, self.schedule.steps_per_epoch):
                indices = order[batch_index * size:(batch_index + 1) * size]
                examples = (self.self_play.pairs_at(indices) if self.self_play is not None and round_index is not None
                            else [self.train_examples[i] for i in indices])
                if self.governor is not None:
                    apply_budget(self.governor)
                started = time.perf_counter()
                metrics = self._step(epoch, batch_index, examples)
                metrics.step_seconds = time.perf_counter() - started
                metrics.threads = torch.get_num_threads()
                history.append(metrics)
                ended = self._run_ends(metrics, history, epoch, batch_index)
                if ended is not None:
                    return ended
        return self._finish(metrics, history, stopped_early=False)

    def _step(self, epoch: int, batch_index: int, examples: list[Any]) -> StepMetrics:
        """One optimizer step, its metrics and validation; the loop's position moves past it."""
        if self.reinforcement is not None:
            return self._reinforcement_step(epoch, batch_index, examples)
        loop = self.loop
        loss, accuracy, tokens, trained = self._train_step(examples, rehearsal_batch(loop.position.step, self.spec.batch_size,
                                                                                  len(self.objectives.rehearsal)))
        loop.epoch_tally.correct += accuracy * trained
        loop.epoch_tally.trained += trained
        loop.position = Position(epoch=epoch, batch=batch_index + 1, step=loop.position.step + 1,
                                 trained_tokens=loop.position.trained_tokens + tokens)
        metrics = StepMetrics(step=loop.position.step, total_steps=self.total_steps, epoch=epoch + 1,
                              train_loss=loss, train_mean_token_accuracy=accuracy,
                              trained_tokens=loop.position.trained_tokens)
        if self.self_play is not None and self.self_play.round_of(epoch) is not None \
                and (summary := self.self_play.summary) is not None:
            metrics.self_play_round, metrics.self_play_matches = summary.round, summary.matches
            metrics.response_length = summary.response_length
        if self.valid_examples and metrics.step % self.spec.eval_interval == 0:
            metrics.valid_loss, metrics.valid_mean_token_accuracy = self._evaluate(self.validation.next_batch())
        if self.valid_examples and metrics.step in self.schedule.checkpoints:
            metrics.full_valid_loss, metrics.full_valid_mean_token_accuracy = self._evaluate(self.valid_examples)
            if metrics.valid_loss is None:
                metrics.valid_loss = metrics.full_valid_loss
                metrics.valid_mean_token_accuracy = metrics.full_valid_mean_token_accuracy
        return metrics

    def _reinforcement_step(self, epoch: int, batch_index: int, prompts: list[Any]) -> StepMetrics:
        """One GRPO step (worker.training.reinforcement) and, every eval_interval steps, the validation
        prompts' mean reward; seeded by the step, so a resumed run samples what it would have sampled."""
        assert self.reinforcement is not None
        loop, spec = self.loop, self.spec
        step = loop.position.step + 1
        self.optimizer.zero_grad(set_to_none=True)
        loss, tokens, stats = self.reinforcement.step(prompts, self.network, seed=spec.seed * 1_000_003 + step)
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        loop.position = Position(epoch=epoch, batch=batch_index + 1, step=step,
                                 trained_tokens=loop.position.trained_tokens + tokens)
        metrics = StepMetrics(step=step, total_steps=self.total_steps, epoch=epoch + 1, train_loss=loss,
                              train_mean_token_accuracy=0.0, trained_tokens=loop.position.trained_tokens,
                              train_reward_mean=stats.reward_mean, kl=stats.kl,
                              response_length=stats.response_length,
                              zero_variance_groups=stats.zero_variance_groups, grader_errors=stats.grader_errors)
        if self.valid_examples and (step % spec.eval_interval == 0 or step == self.total_steps):
            metrics.valid_reward_mean, _ = self.reinforcement.rewards(
                self.validation.next_batch(), samples=spec.eval_samples, seed=spec.seed * 7_919 + step)
        return metrics

    def _run_ends(self, metrics: StepMetrics, history: list[StepMetrics], epoch: int,
                  batch_index: int) -> TrainingOutcome | None:
        """After a step: best-adapter tracking, the caller's directive, the epoch's end, the checkpoint, then
        the rules that end the run early. The outcome when the run ends here, else None."""
        at_checkpoint = metrics.step in self.schedule.checkpoints
        best = self._track_best(metrics) if at_checkpoint else False
        directive = self._directive(metrics)
        position = self.loop.position
        if directive is Directive.STOP:
            return TrainingOutcome("stopped", position.step, position.trained_tokens, history=history)
        learned: float | None = None
        if batch_index + 1 == self.schedule.steps_per_epoch:
            # The position after the last batch of an epoch is the start of the next one.
            self.loop.position = position = Position(epoch=epoch + 1, batch=0, step=position.step,
                                                     trained_tokens=position.trained_tokens)
            if self.loop.epoch_tally.accuracy >= LEARNED_ACCURACY:
                learned = self.loop.epoch_tally.accuracy
            self.loop.epoch_tally = EpochTally()
        if at_checkpoint:
            self._checkpoint(metrics, best=best)
        stopping = self.spec.early_stopping
        if stopping and self.loop.early_stopping.evaluations_without_improvement >= stopping.patience:
            return self._finish(metrics, history, stopped_early=True)
        if learned is not None and self.spec.stop_when_learned and position.step < self.total_steps:
            return self._finish(metrics, history, stopped_early=False, learned=(epoch + 1, learned))
        if directive in (Directive.PAUSE, Directive.PREEMPT) and position.step < self.total_steps:
            if not at_checkpoint:
                self._checkpoint(metrics, best=False)
            status = "paused" if directive is Directive.PAUSE else "preempted"
            return TrainingOutcome(status, position.step, position.trained_tokens, history=history)
        return None

    def _finish(self, metrics: StepMetrics | None, history: list[StepMetrics], *, stopped_early: bool,
                learned: tuple[int, float] | None = None) -> TrainingOutcome:
        """The completed run: the published adapter (the best checkpoint's where early stopping kept one),
        and for supervised runs the final pass over the training data."""
        position = self.loop.position
        adapter_dir = self.work_dir / "final"
        best_step = self.loop.early_stopping.best_step
        best_selected = bool(self.spec.early_stopping and best_step is not None)
        if best_selected:
            # Best-checkpoint selection: the adapter with the lowest full validation loss is the model.
            if self.dist.is_main:
                shutil.copytree(self.best_dir, adapter_dir, dirs_exist_ok=True)
        else:
            self.saver.save(adapter_dir)
        self.dist.barrier()
        outcome = TrainingOutcome("completed", position.step, position.trained_tokens, adapter_dir=adapter_dir,
                                  final_metrics=metrics, history=history,
                                  stopped_early_at=position.step if stopped_early else None,
                                  best_step=best_step if self.spec.early_stopping else None)
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

    def _track_best(self, metrics: StepMetrics) -> bool:
        """At a checkpoint with full validation: is this the best adapter so far? (Keeps it if so.)"""
        if self.spec.early_stopping is None or metrics.full_valid_loss is None:
            return False
        state = self.loop.early_stopping
        if state.best_loss is None or metrics.full_valid_loss < state.best_loss - self.spec.early_stopping.min_delta:
            state.best_loss, state.best_step = metrics.full_valid_loss, metrics.step
            state.evaluations_without_improvement = 0
            if self.dist.is_main:
                shutil.rmtree(self.best_dir, ignore_errors=True)
            self.saver.save(self.best_dir)
            return True
        state.evaluations_without_improvement += 1
        return False

    # ------------------------------------------------------------------------------------------ steps
    def _epoch_order(self, epoch: int) -> list[int]:
        return epoch_order(self.spec.seed, epoch, len(self.train_examples))

    def _train_step(self, examples: list[Any], rehearsal: Sequence[int] = ()) -> tuple[float, float, int, int]:
        """(mean loss, accuracy, real tokens processed, trained tokens or examples), over every process.

        The loss reported is the user batch's; with rehearsal (indices into the rehearsal examples), the
        rehearsal batch's mean KL to the base model is added to the objective with equal weight."""
        self.optimizer.zero_grad(set_to_none=True)
        local = self.dist.shard(examples)
        with self.objectives.autocast():
            loss_sum, count, correct, tokens = self.objectives.sums(local or examples[:1], self.network)
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
            with self.objectives.autocast():
                kept_sum, kept_count, kept_tokens = self.objectives.anchor_sums(own or list(rehearsal[:1]),
                                                                                self.network)
            if not own:
                kept_sum, kept_count, kept_tokens = kept_sum * 0, 0, 0
            (kept_sum * self.dist.world_size / max(1, self.dist.sum_int(kept_count))).backward()
            tokens += kept_tokens
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        loss_total, correct_total, tokens_total = self.dist.sum_floats(float(loss_sum.detach()), float(correct),
                                                                       float(tokens))
        return loss_total / max(1, total), correct_total / max(1, total), int(tokens_total), int(total)

    def _evaluate(self, examples: list[Any]) -> tuple[float, float]:
        return evaluate(self.objectives, self.network, examples, batch_size=self.spec.batch_size, dist=self.dist)

    # ------------------------------------------------------------------------------------ persistence
    def _checkpoint(self, metrics: StepMetrics, *, best: bool) -> None:
        """Save the state at the loop's position and hand it to the control (every process calls it)."""
        rng = self.dist.gather_objects(torch.random.get_rng_state())
        whole = self.saver.whole()
        optimizer = checkpoints.optimizer_tensors(self.optimizer, self.dist)
        if self.dist.is_main:
            self.loop.valid_cursor = self.validation.position
            directory = self.work_dir / f"state-step-{self.loop.position.step}"
            checkpoints.save(directory, self.loop, model=self.model, spec=self.spec, initial_dir=self.initial_dir,
                             best_dir=self.best_dir, adapter_state=whole, optimizer=optimizer,
                             scheduler=self.scheduler, rng_states=rng, world_size=self.dist.world_size)
            if self.self_play is not None and self.self_play.round is not None:
                (directory / STATE_FILE).write_text(json.dumps(self.self_play.state()))
            if self.control is not None:
                self.control.on_checkpoint(directory, metrics, best=best)
        self.dist.barrier()

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The trained adapter as peft saves it (whole tensors; under FSDP a collective every process calls)."""
        return self.saver.peft_state()

def epoch_order(seed: int, epoch: int, count: int) -> list[int]:
    """The order of the training examples in `epoch`: a pure function of (seed, epoch), so a resumed run takes
    the batches it would have taken."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(count, generator=generator).tolist()


def rehearsal_batch(step: int, batch_size: int, count: int) -> list[int]:
    """Indices of the rehearsal examples of optimizer step `step` (0-based): a batch_size window that cycles
    through the `count` of them, a pure function of the step so that a resumed run rehearses exactly what it
    would have."""
    if not count:
        return []
    size = min(batch_size, count)
    return [(step * size + i) % count for i in range(size)]


def calibration(examples: Sequence[Any], pad_id: int, device: torch.device) -> Callable[[Any], None]:
    """CorDA calibration: forward passes over the first training examples (deterministic), one example per
    pass, as peft's covariance hooks expect."""
    def calibrate(model: Any) -> None:
        for example in [e for e in examples[:CALIBRATION_EXAMPLES] if isinstance(e, TokenizedExample)]:
            model(**pad([example], pad_id).to(device).model_inputs(), use_cache=False)
    return calibrate
