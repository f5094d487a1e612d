"""Constrained decoding's cost in a mixed batch, on the real model: grammar rows beside free rows.

SmolLM2-135M-Instruct, the engine as the server runs it (serving dtype for this machine), 16 sequences at
once, greedy, at most 48 tokens each. k of the 16 follow a `response_format` JSON schema (llguidance masks
each of their steps, serving.grammar); the rest are free. Prints, for k = 0, 1, 4, 8, 16: generated tokens,
seconds, tokens/s and its ratio to k = 0, the engine's mean step time, and the grammar's own time per
constrained row and step (mask computation + applying it + following the chosen token), measured inside the
engine. Then one stream alone: free vs constrained, mean inter-token latency.

    python bench/serve_grammar.py [--tokens 48]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve_latency import load  # noqa: E402

from contracts.inference.schemas import ChatCompletionRequest  # noqa: E402
from serving.engine import Engine, FinishEvent, SamplingParams, Sequence, TokenEvent  # noqa: E402
from serving.grammar import GrammarCompiler, GrammarConstraint, output_grammar  # noqa: E402
from serving.model import LlamaForward  # noqa: E402
from serving.placement import serving_placement  # noqa: E402
from serving.service import stop_token_ids  # noqa: E402
from serving.threads import single_threaded_torch  # noqa: E402

SCHEMA = {"type": "object", "properties": {
    "town": {"type": "string"}, "year": {"type": "integer"}, "facts": {"type": "array", "items": {"type": "string"}}},
    "required": ["town", "year", "facts"], "additionalProperties": False}
QUESTIONS = ["Describe the river town's library.", "When did the port open, and what was traded there?",
             "List three facts about the old mill.", "Who founded the school in the river town?"]


class TimedConstraint(GrammarConstraint):
    """The engine's grammar constraint, timing its own work (on the engine thread)."""

    spent: list[float] = []

    def mask(self, logits: Any) -> Any:
        started = time.perf_counter()
        try:
            return super().mask(logits)
        finally:
            TimedConstraint.spent.append(time.perf_counter() - started)

    def advance(self, token_id: int) -> bool:
        started = time.perf_counter()
        try:
            return super().advance(token_id)
        finally:
            TimedConstraint.spent[-1] += time.perf_counter() - started


def run(engine: Engine, prompts: list[list[int]], constraints: list[Any], tokens: int, stops: frozenset[int]
        ) -> tuple[float, int, float]:
    """(seconds, generated tokens, mean inter-token latency) for the batch submitted at once."""
    finished = threading.Semaphore(0)
    stamps: list[list[float]] = [[] for _ in prompts]
    sequences = []
    for index, (ids, constraint) in enumerate(zip(prompts, constraints, strict=True)):
        def sink(event: Any, index: int = index) -> None:
            if isinstance(event, TokenEvent):
                stamps[index].append(time.perf_counter())
            elif isinstance(event, FinishEvent):
                finished.release()
        sequences.append(Sequence(ids, SamplingParams(max_new_tokens=tokens, temperature=0.0, stop_token_ids=stops),
                                  sink, constraint=constraint))
    started = time.perf_counter()
    engine.submit(sequences)
    for _ in prompts:
        finished.acquire()
    gaps = [b - a for s in stamps for a, b in zip(s, s[1:], strict=False)]
    return time.perf_counter() - started, sum(len(s) for s in stamps), statistics.mean(gaps) if gaps else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    single_threaded_torch()
    dtype, device = serving_placement("auto", "auto")
    model, tokenizer = load(Path(tempfile.mkdtemp(prefix="ftaas-bench-")), dtype, device)
    stops = stop_token_ids(tokenizer, model)
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], response_format={
        "type": "json_schema", "json_schema": {"name": "town", "schema": SCHEMA, "strict": True}})
    grammar, _ = output_grammar(request)
    assert grammar is not None
    compiler = GrammarCompiler(tokenizer, stops, model.config.vocab_size)
    compiler.constraint(grammar, param="response_format")  # wraps the tokenizer once (as the first request does)

    def constraint() -> TimedConstraint:
        made = compiler.constraint(grammar, param="response_format")
        return TimedConstraint(made.matcher, made.vocab_size)

    prompts = [list(tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + " Answer in JSON."}], add_generation_prompt=True,
        tokenize=True, return_dict=False)) for i in range(16)]
    forward = LlamaForward(model, max_slots=16, max_context=1024, tile_rows=1)
    engine = Engine(forward, name="bench", max_queue=64, prefill_tokens=4096, max_rank=8)
    try:
        run(engine, prompts[:2], [None, None], 4, stops)  # warm-up
        print(f"SmolLM2-135M-Instruct, {dtype}, {device}: 16 sequences, greedy, <= {args.tokens} tokens; k follow "
              f"a JSON schema (llguidance)")
        print(f"{'k':>3} {'tokens':>7} {'s':>7} {'tok/s':>8} {'x k=0':>7} {'step ms':>8} {'grammar us/row-step':>20}")
        baseline = None
        for k in (0, 1, 4, 8, 16):
            TimedConstraint.spent = []
            steps_before = engine.steps
            seconds, generated, _ = run(engine, prompts, [constraint() if i < k else None for i in range(16)],
                                        args.tokens, stops)
            rate = generated / seconds
            baseline = baseline or rate
            grammar_us = statistics.mean(TimedConstraint.spent) * 1e6 if TimedConstraint.spent else 0.0
            step_ms = seconds / max(1, engine.steps - steps_before) * 1e3
            print(f"{k:>3} {generated:>7} {seconds:>7.2f} {rate:>8.1f} {rate / baseline:>7.2f} {step_ms:>8.1f} "
                  f"{grammar_us:>20.0f}")
        print("one stream alone:")
        for label, made in (("free", None), ("JSON schema", constraint())):
            TimedConstraint.spent = []
            seconds, generated, itl = run(engine, prompts[:1], [made], args.tokens, stops)
            print(f"  {label:<12} {generated:>3} tokens, inter-token latency {itl * 1e3:.2f} ms")
    finally:
        engine.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
