"""Serving latency on the real model: the ftaas engine vs plain transformers `generate`, side by side in one run.

SmolLM2-135M-Instruct (the packaged real model, built offline from its GGUF), greedy, 64 new tokens per
request (end-of-sequence ignored, so every run produces the same number of tokens), prompts of ~40 tokens:

  baseline  transformers `generate` in fp32 with its KV cache, one request: what a user would write;
  ftaas     the engine (in process, no HTTP), one stream and 16 concurrent streams, in each configuration:
            dtype (fp32; bf16 where it is native here) x batch invariance (rows padded to 64-row tiles, or
            not padded).

Prints tokens/s (one stream: inter-token latency too; 16 streams: aggregate) and the ratios to the baseline,
then a profile of one decode step of one stream (torch.profiler, top operators by self CPU time), which
says where a step's time goes.

    python bench/serve_latency.py [--tokens 64] [--streams 16] [--repeats 3] [--device cpu|cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
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
from serving.engine import Engine, FinishEvent, SamplingParams, Sequence, TokenEvent  # noqa: E402
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", default="auto", help="comma-separated: float32,bfloat16 (auto: bf16 if native)")
    parser.add_argument("--model", choices=["smollm2", "llama-1b"], default="smollm2",
                        help="llama-1b: ~1.1B parameters built from a config, random weights (no download)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = args.device
    dtypes = (["float32", "bfloat16"] if native_bf16(device) else ["float32"]) if args.dtypes == "auto" \
        else args.dtypes.split(",")
    cache = Path(tempfile.mkdtemp(prefix="ftaas-bench-"))
    base32, tokenizer = load(cache, torch.float32, device, args.model)
    batch = prompts(tokenizer, args.streams)
    print(f"{'SmolLM2-135M-Instruct' if args.model == 'smollm2' else 'random Llama, 1.1B'} on {device} ({torch.get_num_threads()} threads), {args.tokens} greedy tokens, "
          f"prompts of {min(map(len, batch))}-{max(map(len, batch))} tokens, median of {args.repeats}", flush=True)

    run_transformers(base32, batch[0], 4)  # warm-up
    baseline = statistics.median(run_transformers(base32, batch[0], args.tokens) for _ in range(args.repeats))
    rows: list[dict[str, Any]] = [{"name": "transformers generate, fp32, 1 request", "streams": 1,
                                   "tokens_per_second": args.tokens / baseline}]
    profiles: dict[str, str] = {}
    for dtype_name in dtypes:
        model = base32 if dtype_name == "float32" else load(cache, getattr(torch, dtype_name), device, args.model)[0]
        for invariant in (True, False):
            forward = LlamaForward(model, max_slots=max(args.streams, 1), max_context=512,
                                   tile_rows=64 if invariant else 1)
            engine = Engine(forward, name="bench", max_queue=args.streams, prefill_tokens=4096, max_rank=8)
            label = f"ftaas, {dtype_name}, {'batch-invariant (64-row tiles)' if invariant else 'unpadded'}"
            try:
                run_engine(engine, batch[:1], 4)  # warm-up
                for streams in (1, args.streams):
                    runs = [run_engine(engine, batch[:streams], args.tokens) for _ in range(args.repeats)]
                    seconds = statistics.median(r["seconds"] for r in runs)
                    rows.append({"name": label, "streams": streams,
                                 "tokens_per_second": streams * args.tokens / seconds,
                                 "itl_ms": 1000 * statistics.median(r["itl"] for r in runs),
                                 "ttft_ms": 1000 * statistics.median(r["ttft"] for r in runs)})
                    print(f"  {label}, {streams} stream(s): {rows[-1]['tokens_per_second']:.1f} tokens/s", flush=True)
            finally:
                engine.stop()
            if device == "cpu":
                profiles[label] = profile_decode_step(
                    LlamaForward(model, max_slots=1, max_context=512, tile_rows=64 if invariant else 1), batch[0])

    reference = rows[0]["tokens_per_second"]
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
