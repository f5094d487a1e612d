"""Serving latency on the real model: the ftaas engine vs plain transformers `generate`, side by side in one run.

SmolLM2-135M-Instruct (the packaged real model, built offline from its GGUF), greedy, 64 new tokens per
request (end-of-sequence ignored, so every run produces the same number of tokens), prompts of ~40 tokens:

  baseline  transformers `generate` in fp32 with its KV cache, one request: what a user would write (and, where
            bf16 is native, `generate` in bf16 too, for reference; ratios are to fp32);
  ftaas     the engine (in process, no HTTP), one stream and 16 concurrent streams, in each configuration:
            dtype (fp32; bf16 where it is native here) x batch invariance (rows padded to 64-row tiles, or
            not padded), and unpadded with the decode kernels (serving.kernels: what `auto` serves where they
            measured faster); int8 weights with and without them;
  llama.cpp the same weights as bf16 and q8_0 GGUFs, one request (where llama-cpp-python is installed:
            bench/llama_cpp_setup.sh).

Each configuration runs in a process of its own (why: `main`). Prints tokens/s (one stream: inter-token
latency too; 16 streams: aggregate) and the ratios to the baseline,
then a profile of one decode step of one stream (torch.profiler, top operators by self CPU time), which
says where a step's time goes.

    python bench/serve_latency.py [--tokens 64] [--streams 16] [--repeats 3] [--device cpu|cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from basemodels import smollm2  # noqa: E402
from serving import kernels as decode_kernels  # noqa: E402
from serving.engine import (  # noqa: E402
    Engine,
    FinishEvent,
    SamplingParams,
    Sequence,
    TokenEvent,
)
from serving.model import LlamaForward, build_step  # noqa: E402
from serving.threads import single_threaded_torch  # noqa: E402

QUESTIONS = ["Who designed the first suspension bridge in your country, and why was it built?",
             "Explain in a few sentences how a river town grows around its harbour over a century.",
             "Write a short note to a colleague about the schedule of the music festival next week.",
             "What should a new teacher know about the library of an old school in a lake city?"]


#: a Llama-style model of about 1.1B parameters (TinyLlama's shape, SmolLM2's vocabulary), random weights
#: The converted model, kept between runs (building it takes ~20 s; safe across concurrent processes).
CACHE = Path(os.environ.get("FTAAS_BENCH_CACHE", Path.home() / ".cache" / "ftaas-bench" / "models"))

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


#: Where bench/llama_cpp_setup.sh keeps llama-cpp-python's unpacked sdist (its GGUF converter).
LLAMA_CPP_SOURCE = Path(os.environ.get("FTAAS_BENCH_LLAMA_CPP",
                                       Path.home() / ".cache" / "ftaas-bench" / "llama-cpp-python-0.3.36"))
#: Prompts of the quality comparison (int8 and bf16 against fp32): varied, so that divergences show.
QUALITY_QUESTIONS = QUESTIONS + [
    "List three uses of copper and say why each needs it.", "What is 17 times 23? Show the steps.",
    "Translate 'the train leaves at seven' into French and Spanish.",
    "Write a Python function that reverses the words of a sentence.",
    "Summarise the plot of a detective story set on a night ferry.",
    "Give a recipe for a simple bread with four ingredients.",
    "Why is the sky blue? Answer for a ten-year-old.", "Name the planets in order from the sun.",
    "Describe the rules of chess in two paragraphs.", "What causes tides on the coast?",
    "Write a haiku about an old lighthouse keeper.", "How does a bicycle stay upright while moving?"]


def gguf_file(model_dir: Path, outtype: str) -> Path:
    """The served weights written as GGUF by llama.cpp's own converter (cached next to the model)."""
    out = model_dir.parent / f"{model_dir.name}.{outtype}.gguf"
    if not out.is_file():
        converter = LLAMA_CPP_SOURCE / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
        env = {**os.environ, "PYTHONPATH": str(converter.parent / "gguf-py")}
        done = subprocess.run([sys.executable, str(converter), str(model_dir), "--outtype", outtype,
                               "--outfile", str(out) + ".tmp"], env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"convert_hf_to_gguf.py failed: {done.stderr[-2000:]}")
        Path(str(out) + ".tmp").replace(out)
    return out


def llama_cpp_missing() -> str | None:
    """Why the llama.cpp baseline cannot run here, or None."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama-cpp-python is not installed (bash bench/llama_cpp_setup.sh builds it, ~10 min)"
    if not (LLAMA_CPP_SOURCE / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py").is_file():
        return f"llama.cpp's converter is not at {LLAMA_CPP_SOURCE} (bash bench/llama_cpp_setup.sh)"
    return None


def measure_llama_cpp(args: argparse.Namespace, outtype: str, plain: bool = False) -> dict[str, Any]:
    """One stream of llama.cpp (llama-cpp-python) on a GGUF of the same weights: `args.tokens` greedy tokens
    after a fresh prefill of the same prompt (its KV cache reset, so no prefix is reused), on as many threads
    as torch uses here. `plain`: without llama.cpp's extra buffer types (its AMX and repacked weight layouts;
    `use_extra_bufts`), for a machine where they crash (`main` retries so)."""
    import llama_cpp
    from transformers import AutoTokenizer

    if plain:  # llama-cpp-python's Llama has no argument for it: its default model parameters, changed
        defaults = llama_cpp.llama_cpp.llama_model_default_params

        def without_extra_buffers() -> Any:
            params = defaults()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama.llama_cpp.llama_model_default_params = without_extra_buffers  # type: ignore[attr-defined]  # untyped module
    model_dir = smollm2.ensure_built(CACHE)
    prompt = prompts(AutoTokenizer.from_pretrained(model_dir), 1)[0]
    llm = llama_cpp.Llama(model_path=str(gguf_file(model_dir, outtype)), n_ctx=512, n_batch=512,
                          n_threads=torch.get_num_threads(), n_threads_batch=torch.get_num_threads(), verbose=False)

    def once(tokens: int) -> float:
        llm.reset()
        started = time.perf_counter()
        # greedy; end-of-sequence ignored
        for produced, _ in enumerate(llm.generate(prompt, top_k=1, temp=0.0, reset=True), start=1):
            if produced == tokens:
                break
        return time.perf_counter() - started

    once(4)  # warm-up
    seconds = statistics.median(once(args.tokens) for _ in range(args.repeats))
    variant = ", no extra buffer types" if plain else ""
    return {"rows": [{"name": f"llama.cpp {llama_cpp.__version__}, {outtype} GGUF{variant}, 1 request", "streams": 1,
                      "tokens_per_second": args.tokens / seconds}]}


def _greedy(forward: LlamaForward, prompt: list[int], tokens: int, forced: list[int] | None = None
            ) -> tuple[list[int], torch.Tensor]:
    """Greedy decoding of one prompt through `forward` (slot 0): the tokens chosen and each step's logits;
    with `forced`, those tokens are fed instead of the chosen ones (teacher forcing)."""
    chosen: list[int] = []
    logits = []
    with torch.inference_mode():
        step = forward.forward(build_step(forward, [], [(0, prompt)]))[0]
        position = len(prompt)
        for index in range(tokens):
            logits.append(step)
            chosen.append(int(step.argmax()))
            if index + 1 == tokens:
                break
            fed = forced[index] if forced is not None else chosen[-1]
            step = forward.forward(build_step(forward, [(0, fed, position)], []))[0]
            position += 1
    return chosen, torch.stack(logits)


def measure_quality(args: argparse.Namespace) -> dict[str, Any]:
    """bf16 and int8 weights against fp32 on the real model, as the engine computes them (unpadded), over
    QUALITY_QUESTIONS x `args.tokens` greedy tokens: teacher-forced on fp32's greedy tokens, the share of
    positions whose top token agrees and the logit error; free-running, the completions identical to fp32's
    and the mean position of the first different token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2.ensure_built(CACHE)
    tokenizer = AutoTokenizer.from_pretrained(path)
    asked = [list(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                tokenize=True, return_dict=True)["input_ids"]) for q in QUALITY_QUESTIONS]

    products = decode_kernels.load(CACHE)

    def forward_of(dtype: torch.dtype, weights: str, kernels: bool = False) -> LlamaForward:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True).eval()
        return LlamaForward(model, max_slots=1, max_context=512, tile_rows=1, weights=weights,
                            kernels=products if kernels else None)

    reference = forward_of(torch.float32, "model")
    truth = [_greedy(reference, prompt, args.tokens) for prompt in asked]
    scale = torch.cat([logits for _, logits in truth]).std().item()
    results = []
    candidates = [("bf16", "model", False), ("int8 weights, bf16 activations", "int8", False)]
    if products is not None:
        candidates += [("bf16, decode kernels", "model", True), ("int8 weights, decode kernels (int8 activations)", "int8", True)]
    for label, weights, kernels in candidates:
        forward = forward_of(torch.bfloat16, weights, kernels)
        agree = total = identical = 0
        errors, first_differences = [], []
        for prompt, (tokens, logits) in zip(asked, truth, strict=True):
            forced_tokens, forced_logits = _greedy(forward, prompt, args.tokens, forced=tokens)
            agree += sum(a == b for a, b in zip(forced_tokens, tokens, strict=True))
            total += len(tokens)
            errors.append((forced_logits - logits).abs())
            free, _ = _greedy(forward, prompt, args.tokens)
            same = [a == b for a, b in zip(free, tokens, strict=True)]
            identical += all(same)
            first_differences.append(same.index(False) if not all(same) else len(tokens))
        error = torch.cat(errors)
        results.append({"name": label, "top1_agreement": agree / total, "positions": total,
                        "identical_completions": identical, "completions": len(asked),
                        "mean_first_difference": statistics.mean(first_differences),
                        "logit_error_mean": error.mean().item(), "logit_error_max": error.max().item(),
                        "logit_std": scale})
    return {"quality": results}


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
    # The kernels' flags name the architecture; they are part of the compiled library's cache key.
    decode_kernels.FLAGS = tuple(f"-march={args.kernels_march}" if flag.startswith("-march") else flag
                                 for flag in decode_kernels.FLAGS)
    kind, dtype_name, *rest = key.split(":")
    mode = rest[0] if rest else ""
    if kind == "llamacpp":
        return measure_llama_cpp(args, dtype_name, plain=mode == "plain")
    if kind == "quality":
        return measure_quality(args)
    tile_rows = 64 if mode == "invariant" else 1
    if kind == "engine":
        # As the server does: only the engine thread runs parallel torch work (serving.engine).
        single_threaded_torch()
    model, tokenizer = load(CACHE, getattr(torch, dtype_name), args.device, args.model)
    batch = prompts(tokenizer, args.streams)
    if kind == "generate":
        run_transformers(model, batch[0], 4)  # warm-up
        seconds = statistics.median(run_transformers(model, batch[0], args.tokens) for _ in range(args.repeats))
        return {"rows": [{"name": f"transformers generate, {dtype_name}, 1 request", "streams": 1,
                          "tokens_per_second": args.tokens / seconds}],
                "prompt_tokens": [min(map(len, batch)), max(map(len, batch))]}
    weights = "int8" if mode.startswith("int8") else "model"
    products = decode_kernels.load(CACHE) if mode.endswith("kernels") else None
    if mode.endswith("kernels") and products is None:
        raise SystemExit("the decode kernels could not be built here (see the log)")
    if kind == "profile":
        forward = LlamaForward(model, max_slots=1, max_context=512, tile_rows=tile_rows, weights=weights,
                               kernels=products)
        return {"profile": profile_decode_step(forward, batch[0])}
    forward = LlamaForward(model, max_slots=max(args.streams, 1), max_context=512, tile_rows=tile_rows,
                           weights=weights, kernels=products)
    del model
    engine = Engine(forward, name="bench", max_queue=args.streams, prefill_tokens=4096, max_rank=8)
    label = f"ftaas, {dtype_name}, " + {"invariant": "batch-invariant (64-row tiles)", "unpadded": "unpadded",
                                        "kernels": "unpadded, decode kernels", "int8": "int8 weights, unpadded",
                                        "int8-kernels": "int8 weights, decode kernels"}[mode]
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
    parser.add_argument("--modes", default="invariant,unpadded,kernels",
                        help="the engine's modes, comma-separated: invariant (64-row tiles), unpadded, kernels "
                             "(unpadded with the decode kernels; bf16 only)")
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                        help="also the engine with int8 weights (bf16 activations)")
    parser.add_argument("--quality", action="store_true",
                        help="also bf16 and int8 weights against fp32: top-token agreement and logit error")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--kernels-march", default="native",
                        help="compile the decode kernels for this -march (x86-64-v3: the AVX2 code an AVX2-only CPU "
                             "runs), to compare instruction sets on one machine")
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
    keys += [f"engine:{d}:{m}" for d in dtypes for m in args.modes.split(",")
             if not (m == "kernels" and d != "bfloat16")]
    if args.int8:
        keys += ["engine:bfloat16:int8"] + (["engine:bfloat16:int8-kernels"] if "kernels" in args.modes else [])
    missing = llama_cpp_missing() if device == "cpu" and args.model == "smollm2" else "not on this device/model"
    if missing is None:
        keys += ["llamacpp:bf16", "llamacpp:q8_0"]
    else:
        print(f"llama.cpp baseline skipped: {missing}", flush=True)
    if args.quality:
        keys += ["quality:float32"]
    # The baseline again at the end: a shared machine's speed drifts over minutes, and the ratios use the mean
    # of the two runs (both printed).
    keys += ["generate:float32"]
    if device == "cpu" and not args.no_profile:
        keys += [f"profile:{d}:{m}" for d in dtypes for m in args.modes.split(",")
                 if not (m == "kernels" and d != "bfloat16")]
    forwarded = ["--tokens", str(args.tokens), "--streams", str(args.streams), "--repeats", str(args.repeats),
                 "--device", device, "--model", args.model, "--kernels-march", args.kernels_march]
    print(f"{'SmolLM2-135M-Instruct' if args.model == 'smollm2' else 'random Llama, 1.1B'} on {device} "
          f"({torch.get_num_threads()} threads), {args.tokens} greedy tokens, median of {args.repeats}, "
          "each configuration in its own process", flush=True)
    rows: list[dict[str, Any]] = []
    profiles: dict[str, str] = {}
    qualities: list[dict[str, Any]] = []
    for key in keys:
        done = subprocess.run([sys.executable, __file__, *forwarded, "--measure", key], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0 or "\n@@" not in done.stdout:
            died = f" (killed by signal {-done.returncode})" if done.returncode < 0 else ""
            print(f"  {key}: failed{died}\n{done.stderr[-3000:]}", flush=True)
            if key.startswith("llamacpp:") and done.returncode < 0 and not key.endswith(":plain"):
                # Seen: llama.cpp 0.3.36 built natively on a Xeon with AMX crashed (a protection fault in
                # libggml-cpu) on q8_0 with its AMX weight buffers; without them it runs.
                keys.insert(keys.index(key) + 1, key + ":plain")
            continue
        result = json.loads(done.stdout.rsplit("\n@@", 1)[1])
        for row in result.get("rows", []):
            if row["name"] == rows[0]["name"] if rows else False:
                row["name"] += " (again, at the end)"
            rows.append(row)
            print(f"  {row['name']}, {row['streams']} stream(s): {row['tokens_per_second']:.1f} tokens/s", flush=True)
        if "prompt_tokens" in result:
            print(f"  prompts of {result['prompt_tokens'][0]}-{result['prompt_tokens'][1]} tokens", flush=True)
        qualities.extend(result.get("quality", []))
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
    llama = {row["name"].split(", ")[1].split()[0]: row["tokens_per_second"] for row in rows
             if row["name"].startswith("llama.cpp")}
    if llama:
        print("\none stream against llama.cpp at the same precision (bf16 GGUF; q8_0 for int8 weights):")
        for row in rows:
            if row["name"].startswith("ftaas") and row["streams"] == 1 and "invariant" not in row["name"]:
                peer = "q8_0" if "int8" in row["name"] else "bf16"
                if peer in llama:
                    print(f"  {row['name']:<58} {row['tokens_per_second'] / llama[peer]:.2f}x llama.cpp {peer}")
    if qualities:
        print(f"\nagainst fp32, {args.tokens} greedy tokens per prompt (engine forward, unpadded):")
        print(f"{'weights':<34} {'top-1 agree':>11} {'identical':>9} {'first diff':>10} {'logit err mean':>14} "
              f"{'max':>6} {'logit std':>9}")
        for q in qualities:
            print(f"{q['name']:<34} {q['top1_agreement']:>11.4f} {q['identical_completions']:>4}/{q['completions']:<4} "
                  f"{q['mean_first_difference']:>10.1f} {q['logit_error_mean']:>14.4f} {q['logit_error_max']:>6.2f} "
                  f"{q['logit_std']:>9.2f}")
    for label, table in profiles.items():
        print(f"\none decode step of one stream, {label} (5 steps profiled):\n{table}")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "rows": rows, "quality": qualities}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
