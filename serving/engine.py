"""Continuous batching over one base model: sequences join and leave between decode steps.

One `Engine` per base model runs a loop on its own thread:

    admit waiting sequences into free slots (bounded by a prompt-token budget per step and by the KV memory
    budget: serving.kvcache)
    -> one forward pass: a decode row for every running sequence + the prompts of the joiners
    -> pick each sequence's next token (greedy, or sampled from its own seeded generator)
    -> emit it; finished, cancelled or expired sequences free their slot and KV memory at once

When a running sequence must grow its KV cache and the budget is spent, the most recently admitted
sequence is preempted (vLLM's recompute policy): its memory is freed, it goes back to the head of the queue
with what it generated so far, and on readmission its prompt and those tokens are prefilled again. Nothing
is lost and the caller sees one uninterrupted stream.

Sequences are independent of each other by construction (serving.model): the same request gives the same
tokens whatever else is running. Callers receive events through a sink they provide (called on the engine
thread; it must not block), and may cancel at any time.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from contracts.errors import Draining, Overloaded
from contracts.machine import ThreadGovernor
from serving.adapter_weights import AdapterWeights
from serving.kvcache import KVBudgetExceeded, PrefixCache
from serving.model import LlamaForward, build_step
from serving.slots import SlotAdapters
from serving.threads import set_torch_threads

log = logging.getLogger(__name__)

#: Intra-op threads of an engine thread: what torch would use by default (the physical cores).
ENGINE_THREADS = torch.get_num_threads()


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    #: None: no log probabilities; k >= 0: the chosen token's and the k most likely alternatives'
    logprobs: int | None = None
    stop_token_ids: frozenset[int] = frozenset()
    #: the stop tokens cannot be chosen before this many tokens were generated (vLLM's `min_tokens`)
    min_new_tokens: int = 0
    #: the prompt's own log probabilities (computed at the first prefill, which then skips the prompt-prefix
    #: cache), reported with the FinishEvent
    prompt_logprobs: bool = False
    #: the stop token that ends the sequence is reported as a TokenEvent too (`stop=True`), as token-level
    #: clients (RL loops) train on it
    keep_stop_token: bool = False


class TokenConstraint(Protocol):
    """What a sequence's output must follow (serving.grammar implements it): the engine masks each next
    token's logits with it and tells it the token chosen."""

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits with every token not allowed next set to -inf."""

    def advance(self, token_id: int) -> bool:
        """Follow the chosen token; True when nothing more may follow (the sequence stops)."""


@dataclass
class TokenEvent:
    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)
    #: the stop token that ended the sequence (reported only with `keep_stop_token`): not part of the text
    stop: bool = False


@dataclass
class FinishEvent:
    #: stop | length | cancelled | timeout | error
    reason: str
    prompt_tokens: int
    completion_tokens: int
    error: BaseException | None = None
    #: with `prompt_logprobs`: each prompt token's log probability given the ones before it (None for the first)
    prompt_logprobs: list[float | None] | None = None


Event = TokenEvent | FinishEvent


class Sequence:
    """One completion choice: a prompt, its sampling parameters, its adapter, and where its events go."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, sink: Callable[[Event], None], *,
                 adapter: AdapterWeights | None = None, deadline: float | None = None, label: str = "",
                 on_release: Callable[[], None] | None = None, constraint: TokenConstraint | None = None) -> None:
        self.prompt_ids = prompt_ids
        self.constraint = constraint
        self.params = params
        self.sink = sink
        self.adapter = adapter
        #: positions an adapter's virtual prefix takes before the prompt (prompt learning; 0: none)
        self.offset = adapter.virtual_tokens if adapter is not None else 0
        self.deadline = deadline
        self.label = label
        self.on_release = on_release
        self.generated: list[int] = []
        self.slot: int | None = None
        self.cancelled = False
        self.enqueued_at = time.monotonic()
        self.first_token_at: float | None = None
        #: the engine step at which the sequence last took a slot (preemption picks the newest)
        self.admitted_at = 0
        #: prompt positions copied from the prefix cache at this admission (None: not looked up yet)
        self.cached_prefix: int | None = None
        #: with `params.prompt_logprobs`, once the first prefill computed them
        self.prompt_logprobs: list[float | None] | None = None
        self.finished_at: float | None = None
        self.generator: torch.Generator | None = None
        if params.temperature > 0:
            self.generator = torch.Generator()
            self.generator.manual_seed(params.seed if params.seed is not None else random.getrandbits(63))

    @property
    def prefill_ids(self) -> list[int]:
        """What joining computes: the prompt, and the tokens generated before a preemption."""
        return self.prompt_ids + self.generated if self.generated else self.prompt_ids

    @property
    def position(self) -> int:
        """Position of the newest token (the one the next decode step feeds in), after any virtual prefix."""
        return self.offset + len(self.prompt_ids) + len(self.generated) - 1


class EngineObserver:
    """What the engine reports (serving.metrics implements it); the default does nothing."""

    def step(self, *, waiting: int, running: int) -> None: ...

    def finished(self, sequence: Sequence, reason: str) -> None: ...

    def threads(self, count: int) -> None:
        """The engine's loop now computes on `count` threads."""


class Engine:
    # Long on purpose: the batching loop, admission, preemption and slot moves share one lock and one state.
    def __init__(self, forward: LlamaForward, *, name: str, max_queue: int, prefill_tokens: int, max_rank: int,
                 observer: EngineObserver | None = None, prefix_cache_bytes: int = 0, prefix_block: int = 64,
                 threaded: bool = True, governor: ThreadGovernor | None = None) -> None:
        """`threaded` False: no loop thread; the owner drives the engine with `run_until_idle` (or
        `run_step`) from its own thread (a trainer sampling from the model it trains: one thread, one OpenMP
        team). `prefix_block`: the prompt-prefix cache's granularity, in positions. `governor`: the loop
        thread's budget of threads, looked up between steps (contracts.machine); None: ENGINE_THREADS."""
        self.forward = forward
        #: prompt prefixes computed once (never under batch invariance: see PrefixCache)
        self.prefixes = PrefixCache(position_bytes=forward.kv.position_bytes,
                                    budget_bytes=0 if forward.batch_invariant else prefix_cache_bytes,
                                    block=prefix_block)
        self.name = name
        self.max_queue = max_queue
        self.prefill_tokens = prefill_tokens
        self.slot_adapters = SlotAdapters(forward, max_rank=max_rank)
        self.observer = observer or EngineObserver()
        self.governor = governor
        # Slots [0, used) are occupied, always contiguously: a finishing sequence's slot is refilled by the
        # sequence in the last slot (its KV cache and adapter copied exactly). Decode rows are then slots
        # 0..n-1 in order, and the per-slot products run on plain views instead of gathers.
        self._used = 0
        self._slots: list[Sequence | None] = [None] * forward.max_slots
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._condition = threading.Condition()
        self._stopping = False
        self._draining = False
        self.steps = 0
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._loop, name=f"ftaas-engine-{name}", daemon=True)
            self._thread.start()
        #: sequences sent back to the queue because the KV budget was spent
        self.preemptions = 0

    # ---------------------------------------------------------------------------------- callers
    def submit(self, sequences: list[Sequence]) -> None:
        """Queue sequences (all or none). Raises Overloaded when the queue is full, Draining when shutting down."""
        with self._condition:
            if self._draining or self._stopping:
                raise Draining("This server is shutting down; retry on another replica.")
            if len(self._waiting) + len(sequences) > self.max_queue + self._free():
                raise Overloaded(f"The server is at capacity ({len(self._running)} running, "
                                 f"{len(self._waiting)} waiting); retry shortly.", retry_after=self.retry_after())
            self._waiting.extend(sequences)
            self._condition.notify()

    def cancel(self, sequence: Sequence) -> None:
        """Stop a sequence at the next step boundary; its slot is freed then. Idempotent."""
        with self._condition:
            sequence.cancelled = True
            if sequence in self._waiting:  # never admitted: report it now, it holds no slot
                self._waiting.remove(sequence)
                self._finish(sequence, "cancelled")
            self._condition.notify()

    def _free(self) -> int:
        return self.forward.max_slots - self._used

    def retry_after(self) -> int:
        return max(1, min(30, (len(self._waiting) + 1) // max(1, self.forward.max_slots)))

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    def idle(self) -> bool:
        with self._condition:
            return not self._waiting and not self._running

    def drain(self, timeout: float) -> bool:
        """Refuse new work, let queued and running sequences finish; True if all did within `timeout`."""
        with self._condition:
            self._draining = True
            end = time.monotonic() + timeout
            while self._waiting or self._running:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._condition.wait(min(left, 0.1))
        return True

    def stop(self) -> None:
        with self._condition:
            self._stopping = True
            for sequence in [*self._waiting, *self._running]:
                sequence.cancelled = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        else:
            self._iterate(wait=False)  # report the cancellations

    # ------------------------------------------------------------------------------------- loop
    def _loop(self) -> None:
        count = ENGINE_THREADS if self.governor is None else self.governor.threads(busy=False)
        set_torch_threads(count)
        self.observer.threads(count)
        while self._iterate(wait=True):
            pass

    def _govern_threads(self) -> None:
        """The loop thread's share of the machine now (it computes: other work may yield to it)."""
        assert self.governor is not None
        count = self.governor.threads(busy=True)
        if count != torch.get_num_threads():
            set_torch_threads(count)
            self.observer.threads(count)

    def run_until_idle(self) -> None:
        """Driven mode (`threaded` False): run steps in the calling thread until no sequence waits or runs."""
        if self._thread is not None:
            raise RuntimeError("this engine runs its own loop thread")
        while self._iterate(wait=False):
            pass

    def run_step(self) -> bool:
        """Driven mode: one step (admission, then one forward pass); False when there was nothing to do."""
        if self._thread is not None:
            raise RuntimeError("this engine runs its own loop thread")
        return self._iterate(wait=False)

    def _iterate(self, *, wait: bool) -> bool:
        """One step of the loop (waiting for work first if `wait`); False when the loop should end: the engine
        stops, or (not waiting) there is nothing to do."""
        with self._condition:
            while wait and not self._stopping and not self._waiting and not self._running:
                self._condition.wait()
            if self._stopping:
                self._finish_all("cancelled")
                return False
            if not self._waiting and not self._running:
                return False
            joining = self._admit()
            decoding = [s for s in self._slots[:self._used] if s is not None and s not in joining]
        if self.governor is not None and self._thread is not None:
            self._govern_threads()
        try:
            self._step(decoding, joining)
        except Exception as exc:  # a bug or OOM must not kill the loop silently; fail those sequences
            log.exception("engine step failed")
            with self._condition:
                for sequence in [*decoding, *joining]:
                    self._finish(sequence, "error", error=exc)
        self.steps += 1
        self.observer.step(waiting=len(self._waiting), running=len(self._running))
        return True

    def _admit(self) -> list[Sequence]:
        """Move waiting sequences into free slots (caller holds the condition)."""
        now = time.monotonic()
        for sequence in list(self._running):
            if sequence.cancelled:
                self._finish(sequence, "cancelled")
            elif sequence.deadline is not None and now > sequence.deadline:
                self._finish(sequence, "timeout")
        joining: list[Sequence] = []
        budget = self.prefill_tokens
        kv = self.forward.kv
        planned = kv.used_bytes  # the KV memory held, plus what this step's joiners will reserve
        while self._waiting and self._free():
            sequence = self._waiting[0]
            if sequence.cancelled or (sequence.deadline is not None and now > sequence.deadline):
                self._waiting.popleft()
                self._finish(sequence, "cancelled" if sequence.cancelled else "timeout")
                continue
            needed = len(sequence.prefill_ids)
            if joining and needed > budget:
                break
            reserve = kv.capacity_for(sequence.offset + needed + 1) * kv.position_bytes
            if planned + reserve > kv.budget_bytes and (self._running or joining):
                break  # wait for memory to be freed (alone, a sequence always fits: max_context is capped)
            self._waiting.popleft()
            budget -= needed
            planned += reserve
            sequence.slot = self._used
            sequence.admitted_at = self.steps
            sequence.cached_prefix = None
            self._slots[self._used] = sequence
            self._used += 1
            self.slot_adapters.assign(sequence.slot, sequence.adapter)
            self._running.append(sequence)
            joining.append(sequence)
        return joining

    def _step(self, decoding: list[Sequence], joining: list[Sequence]) -> None:
        while True:
            if not decoding and not joining:
                return
            decode_rows = [(_slot_of(s), s.generated[-1], s.position) for s in decoding]
            try:
                prefill_rows = [self._prefill_row(s) for s in joining]  # may reserve KV memory too
                every_row = [_wants_prompt_logprobs(s) for s in joining]
                batch = build_step(self.forward, decode_rows, prefill_rows, self.slot_adapters, every_row=every_row)
                break
            except KVBudgetExceeded:
                victim = self._preempt()
                decoding = [s for s in decoding if s is not victim]
                joining = [s for s in joining if s is not victim]
        with torch.inference_mode():
            # Sampling runs on the CPU (each sequence's seeded generator lives there): one transfer per step.
            logits = self.forward.forward(batch).cpu()
            for sequence in joining:
                assert sequence.slot is not None
                if not sequence.offset:  # cached prompt prefixes start at position 0
                    self.prefixes.store(_adapter_key(sequence), sequence.prefill_ids, self.forward.kv[sequence.slot])
        now = time.monotonic()
        finished: list[tuple[Sequence, str]] = []
        #: each sequence's first logits row (a prompt whose log probabilities are asked for has one per token)
        rows = list(range(len(decoding)))
        for sequence, (_, ids, _), wanted in zip(joining, prefill_rows, every_row, strict=True):
            start = rows[-1] + 1 if rows else 0
            if wanted:
                sequence.prompt_logprobs = _prompt_logprobs(logits[start:start + len(ids) - 1], ids)
                start += len(ids) - 1
            rows.append(start)
        for row, sequence in zip(rows, [*decoding, *joining], strict=True):
            event = _choose(logits[row], sequence)
            sequence.generated.append(event.token_id)
            if sequence.first_token_at is None:
                sequence.first_token_at = now
            stop = event.token_id in sequence.params.stop_token_ids
            if not stop or sequence.params.keep_stop_token:
                event.stop = stop
                sequence.sink(event)
            if not stop and sequence.constraint is not None and sequence.constraint.advance(event.token_id):
                finished.append((sequence, "complete"))  # the grammar allows nothing more: a natural end
            elif stop:
                finished.append((sequence, "stop"))
            elif len(sequence.generated) >= sequence.params.max_new_tokens or \
                    sequence.position + 1 >= self.forward.max_context:
                finished.append((sequence, "length"))
        if finished:
            with self._condition:
                for sequence, reason in finished:
                    self._finish(sequence, reason)

    def _prefill_row(self, sequence: Sequence) -> tuple[int, list[int], int]:
        """(slot, the ids to compute, positions already in the slot's cache), copying those into the slot: an
        adapter's virtual prefix, or positions taken from the prompt-prefix cache."""
        assert sequence.slot is not None
        ids = sequence.prefill_ids
        if sequence.adapter is not None and sequence.adapter.prefix is not None:
            prefix = sequence.adapter.prefix
            self.forward.kv.reserve(sequence.slot, sequence.offset + len(ids))
            self.forward.kv[sequence.slot][:, :, :, :sequence.offset] = prefix
            return sequence.slot, ids, sequence.offset
        if sequence.cached_prefix is None and _wants_prompt_logprobs(sequence):
            sequence.cached_prefix = 0  # every prompt row computed: each one's logits are asked for
        if sequence.cached_prefix is None:  # once per admission: a step retried after a preemption keeps it
            cached, keys_values = self.prefixes.lookup(_adapter_key(sequence), ids)
            if keys_values is not None:
                self.forward.kv.reserve(sequence.slot, len(ids))
                self.forward.kv[sequence.slot][:, :, :, :cached] = keys_values
            sequence.cached_prefix = cached
        return sequence.slot, ids[sequence.cached_prefix:], sequence.cached_prefix

    def _preempt(self) -> Sequence:
        """Send the most recently admitted running sequence back to the head of the queue, freeing its slot
        and KV memory; it keeps what it generated (prefilled again when it rejoins)."""
        with self._condition:
            victim = max(self._running, key=lambda s: s.admitted_at)
            self._running.remove(victim)
            assert victim.slot is not None
            self._release_slot(victim.slot)
            victim.slot = None
            self._waiting.appendleft(victim)
            self.preemptions += 1
            log.info("KV budget spent: preempted %s after %d tokens", victim.label or "a sequence",
                     len(victim.generated))
            return victim

    def _finish(self, sequence: Sequence, reason: str, error: BaseException | None = None) -> None:
        """Release the slot and report (caller holds the condition). Safe to call twice."""
        if sequence.finished_at is not None:
            return
        sequence.finished_at = time.monotonic()
        if sequence in self._running:
            self._running.remove(sequence)
        if sequence.slot is not None:
            self._release_slot(sequence.slot)
            sequence.slot = None
        completion = len(sequence.generated) - (1 if reason == "stop" else 0)
        reason = "stop" if reason == "complete" else reason
        try:
            sequence.sink(FinishEvent(reason, len(sequence.prompt_ids), max(0, completion), error,
                                      prompt_logprobs=sequence.prompt_logprobs))
        finally:
            if sequence.on_release is not None:
                sequence.on_release()
            self.observer.finished(sequence, reason)
            self._condition.notify_all()

    def _release_slot(self, slot: int) -> None:
        last = self._used - 1
        if slot != last:
            moved = self._slots[last]
            assert moved is not None and moved.slot == last
            self.forward.move_slot(last, slot)
            self.slot_adapters.move(last, slot)
            self._slots[slot] = moved
            moved.slot = slot
        else:
            self.forward.kv.release(slot)
            self.slot_adapters.assign(slot, None)
        self._slots[last] = None
        self._used -= 1

    def _finish_all(self, reason: str) -> None:
        for sequence in [*self._waiting, *self._running]:
            self._finish(sequence, reason)
        self._waiting.clear()


def _slot_of(sequence: Sequence) -> int:
    assert sequence.slot is not None, "a running sequence holds a slot"
    return sequence.slot


def _adapter_key(sequence: Sequence) -> str | None:
    return sequence.adapter.key if sequence.adapter is not None else None


def _wants_prompt_logprobs(sequence: Sequence) -> bool:
    """At its first prefill only (a sequence preempted later is prefilled again without them)."""
    return sequence.params.prompt_logprobs and sequence.prompt_logprobs is None and not sequence.generated


def _prompt_logprobs(logits: torch.Tensor, ids: list[int]) -> list[float | None]:
    """Each prompt token's log probability from the logits of the rows before it ([len(ids) - 1, vocab])."""
    if len(ids) < 2:
        return [None] * len(ids)
    chosen = torch.log_softmax(logits.float(), dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return [None, *(float(v) for v in chosen)]


def _choose(logits: torch.Tensor, sequence: Sequence) -> TokenEvent:
    params = sequence.params
    raw = logits
    if len(sequence.generated) < params.min_new_tokens and params.stop_token_ids:
        logits = logits.clone()
        logits[list(params.stop_token_ids)] = float("-inf")
    if sequence.constraint is not None:
        constrained = sequence.constraint.mask(logits)
        # min_tokens gives way where the grammar allows only an end (the output is complete)
        logits = constrained if not torch.isinf(constrained).all() else sequence.constraint.mask(raw)
    if params.temperature == 0:
        token = int(torch.argmax(logits))
    else:
        scaled = logits / params.temperature
        probabilities = torch.softmax(scaled, dim=-1)
        if params.top_p < 1.0:
            sorted_p, order = torch.sort(probabilities, descending=True)
            keep = torch.cumsum(sorted_p, 0) - sorted_p < params.top_p
            filtered = torch.zeros_like(probabilities)
            filtered[order[keep]] = sorted_p[keep]
            probabilities = filtered
        token = int(torch.multinomial(probabilities, 1, generator=sequence.generator))
    event = TokenEvent(token)
    if params.logprobs is not None:
        logprobs = torch.log_softmax(logits, dim=-1)
        event.logprob = float(logprobs[token])
        if params.logprobs > 0:
            values, ids = torch.topk(logprobs, params.logprobs)
            event.top_logprobs = [(int(i), float(v)) for i, v in zip(ids, values, strict=True)]
    return event

