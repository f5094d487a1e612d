"""Serving latency on the real model: the ftaas engine vs plain transformers `generate`, side by side in one run.

SmolLM2-135M-Instruct (the packaged real model, built offline from its GGUF), greedy, 64 new tokens per
request (end-of-sequence ignored, so every run produces the same number of tokens), prompts of ~40 tokens:

  baseline  transformers `generate` in fp32 with its KV cache, one request: what a user would write (and, where
            bf16 is native, `generate` in bf16 too, for reference; ratios are to fp32);
  ftaas     the engine (in process, no HTTP), one stream and 16 concurrent streams, in each configuration:
            dtype (fp32; bf16 where it is native here) x batch invariance (rows padded to 64-row tiles, or
            not padded).

Each configuration runs in a process of its own (why: `main`). Prints tokens/s (one stream: inter-token
latency too; 16 streams: aggregate) and the ratios to the baseline,
then a profile of one decode step of one stream (torch.profiler, top operators by self CPU time), which
says where a step's time goes.

    python bench/serve_latency.py [--tokens 64] [--streams 16] [--repeats 3] [--device cpu|cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from basemodels import smollm2  # noqa: E402
from serving.engine import (  # noqa: E402
    Engine,
    FinishEvent,
    SamplingParams,
    Sequence,
    TokenEvent,
    single_threaded_torch,
)
from serving.model import LlamaForward, build_step  # noqa: E402

QUESTIONS = ["Who designed the first suspension bridge in your country, and why was it built?",
             "Explain in a few sentences how a river town grows around its harbour over a century.",
             "Write a short note to a colleague about the schedule of the music festival next week.",
             "What should a new teacher know about the library of an old school in a lake city?"]


#: a Llama-style model of about 1.1B parameters (TinyLlama's shape, SmolLM2's vocabulary), random weights
LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
            "num_key_value_heads": 4, "vocab_size": 49152, "max_position_embeddings": 2048, "tie_word_embeddings": False}


def load(cache: Path, dtype: torch.dtype, device: str, model_name: str = "smollm2") -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = smollm2.ensure_built(cache)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if model_name == "llama-1b":
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**LLAMA_1B)).to(dtype).eval()
        return model, tokenizer
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True).to(device).eval()
    return model, tokenizer


def prompts(tokenizer: Any, count: int) -> list[list[int]]:
    out = []
    for index in range(count):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
                                            add_generation_prompt=True, tokenize=True, return_dict=False)
        out.append(list(ids["input_ids"] if isinstance(ids, dict) else ids))
    return out


def run_transformers(model: Any, prompt: list[int], tokens: int) -> float:
    """Seconds for one `generate` of exactly `tokens` new tokens (greedy, KV cache)."""
    ids = torch.tensor([prompt], device=model.device)
    with torch.inference_mode():
        started = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                             min_new_tokens=tokens, do_sample=False, pad_token_id=0)
        _sync(model.device)
        elapsed = time.perf_counter() - started
    assert out.shape[1] - ids.shape[1] == tokens
    return elapsed


def run_engine(engine: Engine, batch: list[list[int]], tokens: int) -> dict[str, float]:
    """Submit every prompt at once; seconds until all finished, and the mean inter-token latency."""
    finished = threading.Semaphore(0)
    stamps: list[list[float]] = [[] for _ in batch]
    sequences = []
    for index, ids in enumerate(batch):
        def sink(event: Any, index: int = index) -> None:  # on the engine thread
            if isinstance(event, TokenEvent):
                stamps[index].append(time.perf_counter())
            elif isinstance(event, FinishEvent):
                finished.release()
        sequences.append(Sequence(ids, SamplingParams(max_new_tokens=tokens, temperature=0.0), sink))
    started = time.perf_counter()
    engine.submit(sequences)
    for _ in batch:
        finished.acquire()
    elapsed = time.perf_counter() - started
    assert all(len(s) == tokens for s in stamps), [len(s) for s in stamps]
    gaps = [b - a for s in stamps for a, b in zip(s, s[1:], strict=False)]
    return {"seconds": elapsed, "itl": statistics.mean(gaps), "ttft": statistics.mean(s[0] - started for s in stamps)}


def profile_decode_step(forward: LlamaForward, prompt: list[int]) -> str:
    """Top operators of one decode step of one stream (after a prefill and a warm-up step)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        forward.forward(build_step(forward, [], [(0, prompt)]))
        position = len(prompt)
        forward.forward(build_step(forward, [(0, 1, position)], []))
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            for step in range(5):
                forward.forward(build_step(forward, [(0, 1, position + 1 + step)], []))
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)


def _sync(device: Any) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def native_bf16(device: str) -> bool:
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)() or
                getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())


def measure(args: argparse.Namespace, key: str) -> dict[str, Any]:
    """One measurement, in a process of its own (see `main`): `generate:<dtype>`, `engine:<dtype>:<mode>` or
    `profile:<dtype>:<mode>`, mode `invariant` (64-row tiles) or `unpadded`."""
    kind, dtype_name, *rest = key.split(":")
    mode = rest[0] if rest else ""
    tile_rows = 64 if mode == "invariant" else 1
    if kind == "engine":
        # As the server does: only the engine thread runs parallel torch work (serving.engine).
        single_threaded_torch()
    cache = Path(tempfile.mkdtemp(prefix="ftaas-bench-"))
    model, tokenizer = load(cache, getattr(torch, dtype_name), args.device, args.model)
    batch = prompts(tokenizer, args.streams)
    if kind == "generate":
        run_transformers(model, batch[0], 4)  # warm-up
        seconds = statistics.median(run_transformers(model, batch[0], args.tokens) for _ in range(args.repeats))
        return {"rows": [{"name": f"transformers generate, {dtype_name}, 1 request", "streams": 1,
                          "tokens_per_second": args.tokens / seconds}],
                "prompt_tokens": [min(map(len, batch)), max(map(len, batch))]}
    if kind == "profile":
        forward = LlamaForward(model, max_slots=1, max_context=512, tile_rows=tile_rows)
        return {"profile": profile_decode_step(forward, batch[0])}
    forward = LlamaForward(model, max_slots=max(args.streams, 1), max_context=512, tile_rows=tile_rows)
    del model
    engine = Engine(forward, name="bench", max_queue=args.streams, prefill_tokens=4096, max_rank=8)
    label = f"ftaas, {dtype_name}, {'batch-invariant (64-row tiles)' if mode == 'invariant' else 'unpadded'}"
    rows = []
    try:
        run_engine(engine, batch[:1], 4)  # warm-up
        for streams in (1, args.streams):
            runs = [run_engine(engine, batch[:streams], args.tokens) for _ in range(args.repeats)]
            seconds = statistics.median(r["seconds"] for r in runs)
            rows.append({"name": label, "streams": streams, "tokens_per_second": streams * args.tokens / seconds,
                         "itl_ms": 1000 * statistics.median(r["itl"] for r in runs),
                         "ttft_ms": 1000 * statistics.median(r["ttft"] for r in runs)})
    finally:
        engine.stop()
    return {"rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", default="auto", help="comma-separated: float32,bfloat16 (auto: bf16 if native)")
    parser.add_argument("--model", choices=["smollm2", "llama-1b"], default="smollm2",
                        help="llama-1b: ~1.1B parameters built from a config, random weights (no download)")
    parser.add_argument("--no-profile", action="store_true", help="skip the decode-step profiles")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement, JSON on stdout
    args = parser.parse_args()
    if args.measure:
        print("\n@@" + json.dumps(measure(args, args.measure)))
        return 0
    device = args.device
    dtypes = (["float32", "bfloat16"] if native_bf16(device) else ["float32"]) if args.dtypes == "auto" \
        else args.dtypes.split(",")
    # Every measurement runs in a fresh process: a process where two threads have run parallel torch work
    # keeps two OpenMP teams, and then every parallel region pays a wake-up (measured: the engine's
    # inter-token latency 33 ms alone, 52 ms after the same process had run `generate`).
    keys = ["generate:float32"] + [f"generate:{d}" for d in dtypes if d != "float32"]
    keys += [f"engine:{d}:{m}" for d in dtypes for m in ("invariant", "unpadded")]
    # The baseline again at the end: a shared machine's speed drifts over minutes, and the ratios use the mean
    # of the two runs (both printed).
    keys += ["generate:float32"]
    if device == "cpu" and not args.no_profile:
        keys += [f"profile:{d}:{m}" for d in dtypes for m in ("invariant", "unpadded")]
    forwarded = ["--tokens", str(args.tokens), "--streams", str(args.streams), "--repeats", str(args.repeats),
                 "--device", device, "--model", args.model]
    print(f"{'SmolLM2-135M-Instruct' if args.model == 'smollm2' else 'random Llama, 1.1B'} on {device} "
          f"({torch.get_num_threads()} threads), {args.tokens} greedy tokens, median of {args.repeats}, "
          "each configuration in its own process", flush=True)
    rows: list[dict[str, Any]] = []
    profiles: dict[str, str] = {}
    for key in keys:
        done = subprocess.run([sys.executable, __file__, *forwarded, "--measure", key], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0 or "\n@@" not in done.stdout:
            print(f"  {key}: failed\n{done.stderr[-3000:]}", flush=True)
            continue
        result = json.loads(done.stdout.rsplit("\n@@", 1)[1])
        for row in result.get("rows", []):
            if row["name"] == rows[0]["name"] if rows else False:
                row["name"] += " (again, at the end)"
            rows.append(row)
            print(f"  {row['name']}, {row['streams']} stream(s): {row['tokens_per_second']:.1f} tokens/s", flush=True)
        if "prompt_tokens" in result:
            print(f"  prompts of {result['prompt_tokens'][0]}-{result['prompt_tokens'][1]} tokens", flush=True)
        if "profile" in result:
            _, dtype_name, mode = key.split(":")
            profiles[f"ftaas, {dtype_name}, {mode}"] = result["profile"]
    baselines = [r["tokens_per_second"] for r in rows if r["name"].startswith("transformers generate, float32")]
    reference = statistics.mean(baselines)
    print(f"\nbaseline: the mean of {len(baselines)} runs of transformers generate in float32 ({reference:.1f} tokens/s)")
    print(f"\n{'configuration':<62} {'streams':>7} {'tokens/s':>9} {'x generate':>10} {'ITL ms':>7} {'TTFT ms':>8}")
    for row in rows:
        print(f"{row['name']:<62} {row['streams']:>7} {row['tokens_per_second']:>9.1f} "
              f"{row['tokens_per_second'] / reference:>10.2f} {row.get('itl_ms', float('nan')):>7.1f} "
              f"{row.get('ttft_ms', float('nan')):>8.1f}")
    for label, table in profiles.items():
        print(f"\none decode step of one stream, {label} (5 steps profiled):\n{table}")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
