"""Prefix caching on the real model: 64 requests sharing a system prompt, with and without the cache, side by side.

SmolLM2-135M-Instruct, the engine as the server runs it (serving dtype for this machine, unpadded), 16
sequences at a time, 32 greedy tokens each (end-of-sequence ignored), eval-style questions. Two prompt
shapes: the chat template's own system prompt (26 shared tokens), and a 200-token system prompt (205 shared
tokens). Prints seconds for the 64 requests with the prefix cache off and on, the ratio, and how many
prompt positions the cache saved.

    python bench/serve_prefix.py [--requests 64] [--tokens 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve_latency import load, run_engine  # noqa: E402

from serving.engine import Engine  # noqa: E402
from serving.model import LlamaForward  # noqa: E402
from serving.placement import serving_placement  # noqa: E402
from serving.threads import single_threaded_torch  # noqa: E402

SYSTEM = " ".join(["You answer questions about the history of river towns precisely and briefly."] * 15)
SUBJECTS = ["mayor", "teacher", "baker", "council", "school", "guild", "museum", "port"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    single_threaded_torch()  # as the server does: only the engine thread runs parallel torch work
    dtype, device = serving_placement("auto", "auto")
    model, tokenizer = load(Path(tempfile.mkdtemp(prefix="ftaas-bench-")), dtype, device)
    questions = [f"Question {i}: in which year did the {SUBJECTS[i % len(SUBJECTS)]} of the river town open its "
                 "library?" for i in range(args.requests)]
    print(f"SmolLM2-135M-Instruct, {dtype}, {device}, {args.requests} requests x {args.tokens} tokens, 16 at a time")
    print(f"{'system prompt':<26} {'prompt':>6} {'shared':>6} {'no cache s':>10} {'cache s':>8} {'x':>6} {'saved':>7}")
    for name, system in (("template default", None), ("200-token system prompt", SYSTEM)):
        prompts = []
        for question in questions:
            messages = ([{"role": "system", "content": system}] if system else []) + \
                [{"role": "user", "content": question}]
            prompts.append(list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                              return_dict=False)))
        shared = 0
        while all(p[shared] == prompts[0][shared] for p in prompts):
            shared += 1
        seconds = {}
        saved = 0
        for cache_bytes in (0, 256 * 1024 ** 2):
            forward = LlamaForward(model, max_slots=16, max_context=1024, tile_rows=1)
            engine = Engine(forward, name="bench", max_queue=args.requests, prefill_tokens=4096, max_rank=8,
                            prefix_cache_bytes=cache_bytes)
            try:
                run_engine(engine, [p[:-1] for p in prompts[:2]], 3)  # warm-up (and a first cache entry)
                started = time.perf_counter()
                run_engine(engine, prompts, args.tokens)
                seconds[cache_bytes] = time.perf_counter() - started
                saved = engine.prefixes.positions_saved
            finally:
                engine.stop()
        off, on = seconds[0], seconds[256 * 1024 ** 2]
        print(f"{name:<26} {len(prompts[0]):>6} {shared:>6} {off:>10.2f} {on:>8.2f} {off / on:>6.2f} {saved:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
