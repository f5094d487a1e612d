"""A request's running choices: engine events -> text deltas and results.

Text is assembled here, not in the engine: incremental detokenization that never emits half a UTF-8
character, and stop sequences that end the sequence (held back while they could still be forming).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

from basemodels.conversations import ToolCallStream
from contracts.errors import DeadlineExceeded, FTaaSError
from contracts.inference.backend import ChoiceResult, Delta
from serving.adapters import AdapterLease
from serving.engine import Engine, Event, FinishEvent, Sequence, TokenEvent


class Generation:
    """The running choices of one request. Iterate `deltas()` (streaming) or await `collect()`."""

    def __init__(self, engine: Engine, tokenizer: Any, sequences: list[Sequence], choice_stops: list[list[str]],
                 queue: asyncio.Queue[tuple[int, Event]], prompt_tokens: int, want_logprobs: bool,
                 min_tokens: int = 0, parse_tool_calls: bool = False) -> None:
        """`parse_tool_calls`: the output's tool calls (ftaas tool format) become `tool_calls`, not text."""
        self.engine = engine
        self.tokenizer = tokenizer
        self.sequences = sequences
        self.queue = queue
        self.prompt_tokens = prompt_tokens
        self.want_logprobs = want_logprobs
        self.results = [ChoiceResult(i) for i in range(len(sequences))]
        self._texts = [TextAssembler(tokenizer, stops, min_tokens=min_tokens) for stops in choice_stops]
        self._calls = [ToolCallStream() if parse_tool_calls else None for _ in sequences]
        self._open = len(sequences)

    @property
    def completion_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.results)

    def cancel(self) -> None:
        for sequence in self.sequences:
            self.engine.cancel(sequence)

    async def deltas(self) -> AsyncIterator[Delta]:
        try:
            while self._open:
                index, event = await self.queue.get()
                result = self.results[index]
                if isinstance(event, TokenEvent):
                    if result.finish_reason is not None:
                        continue  # generated past a stop sequence before the cancel took effect
                    result.token_ids.append(event.token_id)
                    if event.logprob is not None:
                        result.token_logprobs.append(float(event.logprob))
                    if event.stop:
                        continue  # the stop token itself (kept for token-level clients): no text
                    delta = Delta(index)
                    if self.want_logprobs and event.logprob is not None:
                        entry = (self._token_text(event.token_id), event.logprob,
                                 [(self._token_text(t), lp) for t, lp in event.top_logprobs])
                        result.logprobs.append(entry)
                        delta.logprobs.append(entry)
                    piece, stopped = self._texts[index].add(event.token_id)
                    self._add_text(index, delta, piece)
                    if stopped:
                        self._end(index, delta, "stop")
                        self.engine.cancel(self.sequences[index])
                    if delta.text or delta.logprobs or delta.tool_calls or delta.finish_reason:
                        yield delta
                    continue
                assert isinstance(event, FinishEvent)
                self._open -= 1
                result.completion_tokens = event.completion_tokens
                result.prompt_logprobs = event.prompt_logprobs
                if event.reason == "timeout":
                    raise DeadlineExceeded("The completion did not finish within the server's request deadline.")
                if event.reason == "error":
                    raise FTaaSError("The inference engine failed on this request.", code="engine_error")
                if result.finish_reason is None:
                    delta = Delta(index)
                    self._add_text(index, delta, self._texts[index].flush())
                    self._end(index, delta, "length" if event.reason == "length" else "stop")
                    yield delta
        finally:
            if self._open:
                self.cancel()  # the consumer went away: free the batch slots now

    def _add_text(self, index: int, delta: Delta, piece: str) -> None:
        calls = self._calls[index]
        if calls is not None:
            piece, delta.tool_calls = calls.feed(piece)
            self.results[index].tool_calls.extend(delta.tool_calls)
        self.results[index].text += piece
        delta.text += piece

    def _end(self, index: int, delta: Delta, reason: str) -> None:
        """The choice ended (`reason`: stop or length): held text is content, and a choice that called tools
        and stopped of itself ends with `tool_calls`, as OpenAI's does."""
        result = self.results[index]
        calls = self._calls[index]
        if calls is not None:
            tail = calls.finish()
            result.text += tail
            delta.text += tail
            if calls.calls:
                result.text = result.text.strip()
        result.finish_reason = "tool_calls" if reason == "stop" and result.tool_calls else reason
        delta.finish_reason = result.finish_reason

    async def collect(self) -> list[ChoiceResult]:
        async for _ in self.deltas():
            pass
        return self.results

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])


class TextAssembler:
    """Token ids -> text deltas: whole characters only, stop sequences cut and held back.

    Incremental: each token decodes a short window of ids (from `prefix` on), not the whole completion,
    and the text it adds is the window's growth. Decoding a window rather than the new token alone keeps
    tokenizers that mark word starts (leading spaces) right; a window ending in half a UTF-8 character adds
    nothing until the character is complete.
    """

    def __init__(self, tokenizer: Any, stops: list[str], *, min_tokens: int = 0) -> None:
        """`min_tokens`: stop sequences are looked for only in text that arrives once this many tokens
        were generated (vLLM's `min_tokens` applies to them too)."""
        self.tokenizer = tokenizer
        self.all_stops = stops
        self.min_tokens = min_tokens
        self.ids: list[int] = []
        self.prefix = 0  # window start
        self.read = 0  # ids before this are in `text`
        self.emitted = 0
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _advance(self, *, final: bool = False) -> None:
        known = self._decode(self.ids[self.prefix:self.read])
        window = self._decode(self.ids[self.prefix:])
        if len(window) > len(known) and (final or not window.endswith("\ufffd")):
            self.text += window[len(known):]
            self.prefix, self.read = self.read, len(self.ids)

    @property
    def stops(self) -> list[str]:
        return self.all_stops if len(self.ids) >= self.min_tokens else []

    def add(self, token_id: int) -> tuple[str, bool]:
        self.ids.append(token_id)
        self._advance()
        for stop in self.stops:
            # A stop cannot start inside emitted text: a suffix that could begin one is always held back.
            found = self.text.find(stop, self.emitted)
            if found >= 0:
                piece = self.text[self.emitted:found]
                self.emitted = found
                return piece, True
        safe = len(self.text)
        for stop in self.stops:
            for size in range(min(len(stop) - 1, safe - self.emitted), 0, -1):
                if self.text.endswith(stop[:size]):
                    safe -= size
                    break
        if safe <= self.emitted:
            return "", False
        piece = self.text[self.emitted:safe]
        self.emitted = safe
        return piece, False

    def flush(self) -> str:
        self._advance(final=True)
        piece = self.text[self.emitted:]
        self.emitted = len(self.text)
        return piece


class SharedRelease:
    """Releases a lease when the last of `count` sequences using it is done."""

    def __init__(self, lease: AdapterLease | None, count: int) -> None:
        self.lease = lease
        self.count = count
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.count -= 1
            done = self.count == 0
        if done and self.lease is not None:
            self.lease.release()



def event_sink(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[tuple[int, Event]], index: int) -> Any:
    def deliver(event: Event) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (index, event))
        except RuntimeError:  # the request's event loop is gone (server shutting down)
            pass

    return deliver
