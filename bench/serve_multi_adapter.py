"""Multi-adapter serving: the ftaas engine vs one-request-at-a-time peft, side by side in one run.

On the demo model (`ftaas-tiny`, built offline), 32 distinct LoRA adapters (r=8, all linear layers, the
training default) and 64 requests of mixed prompt (8-200 tokens) and output (16-128 tokens) lengths,
two per adapter, all submitted at once:

  (a) ftaas engine: continuous batching, every row with its own adapter, one forward pass per step;
  (b) naive baseline: one peft model holding all 32 adapters; per request `set_adapter` then `generate`
      (greedy, KV cache), one request at a time: what a simple server built on peft does;
  (c) ftaas engine with all 64 requests on the bare base model: the ceiling for (a);
  (d) the stronger baseline: the same peft model, requests in arrival order in batches (`--peft-batch`, 16),
      left-padded, each row with its own adapter through peft's mixed-adapter batched inference
      (`generate(..., adapter_names=[...])`), every batch generating to its longest request.

Every request produces exactly its requested number of tokens in all three (end-of-sequence is ignored),
so the token counts are equal and the rates compare like for like. Prints output tokens/s of each, a/b
(goal >= 10x), LoRA overhead 1 - a/c (goal <= 20%), p50/p99 time to first token for (a) and (b), the
greedy agreement of (a) with (b) (same tokens from the same model and adapter), and the cold-load time of
one adapter from an S3-compatible store (moto server over HTTP: download, SHA-256 verification, conversion).

    python bench/serve_multi_adapter.py [--adapters 32] [--requests 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from basemodels import tiny  # noqa: E402
from serving.adapter_weights import read_adapter  # noqa: E402
from serving.engine import Engine, FinishEvent, SamplingParams, Sequence, TokenEvent  # noqa: E402
from serving.model import LlamaForward  # noqa: E402

WORDS = ("the cat dog river town was born lives in likes music book red blue who what when where city lake "
         "forest teacher doctor engineer writer festival election").split()


def load_base(cache: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = tiny.ensure_built(cache)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).eval()
    return model, AutoTokenizer.from_pretrained(path)


def make_adapters(model: Any, count: int, directory: Path) -> list[Path]:
    from peft import LoraConfig, get_peft_model

    paths = []
    for index in range(count):
        torch.manual_seed(1000 + index)
        peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(
            r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
        path = directory / f"adapter-{index}"
        peft_model.save_pretrained(path)
        paths.append(path)
    return paths


def workload(tokenizer: Any, requests: int, adapters: int, seed: int = 0) -> list[tuple[list[int], int, int]]:
    """(prompt ids, output tokens, adapter index) per request."""
    rng = random.Random(seed)
    plan = []
    for index in range(requests):
        target = rng.randint(8, 200)
        ids: list[int] = []
        while len(ids) < target:
            ids += tokenizer(" ".join(rng.choice(WORDS) for _ in range(16)))["input_ids"]
        plan.append((ids[:target], rng.randint(16, 128), index % adapters))
    return plan


def run_engine(model: Any, plan: list[tuple[list[int], int, int]], adapters: list[Any] | None,
               slots: int, max_rank: int) -> dict[str, Any]:
    forward = LlamaForward(model, max_slots=slots, max_context=512, tile_rows=64)
    engine = Engine(forward, name="bench", max_queue=len(plan), prefill_tokens=4096, max_rank=max_rank)
    try:
        weights = [read_adapter(path, forward, key=str(path), max_rank=max_rank) for path in adapters] \
            if adapters is not None else None
        # Warm-up: one short request, so that one-time allocations are not timed.
        _submit_all(engine, [(plan[0][0], 2, plan[0][2])], weights)
        started = time.perf_counter()
        results = _submit_all(engine, plan, weights)
        elapsed = time.perf_counter() - started
    finally:
        engine.stop()
    tokens = sum(len(r["tokens"]) for r in results)
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_second": tokens / elapsed,
            "ttft": [r["ttft"] for r in results], "outputs": [r["tokens"] for r in results], "steps": engine.steps}


def _submit_all(engine: Engine, plan: list[tuple[list[int], int, int]], weights: list[Any] | None) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    events = []
    sequences = []
    for ids, output, adapter in plan:
        record: dict[str, Any] = {"tokens": [], "ttft": None}
        done = threading.Event()
        submitted = time.perf_counter()

        def sink(event: Any, record: dict[str, Any] = record, done: threading.Event = done,
                 submitted: float = submitted) -> None:
            if isinstance(event, TokenEvent):
                if record["ttft"] is None:
                    record["ttft"] = time.perf_counter() - submitted
                record["tokens"].append(event.token_id)
            elif isinstance(event, FinishEvent):
                done.set()

        params = SamplingParams(max_new_tokens=output, temperature=0.0)  # no stop tokens: exact lengths
        sequences.append(Sequence(ids, params, sink, adapter=weights[adapter] if weights is not None else None))
        results.append(record)
        events.append(done)
    engine.submit(sequences)
    for done in events:
        done.wait()
    return results


def run_baseline(model: Any, plan: list[tuple[list[int], int, int]], adapters: list[Path]) -> dict[str, Any]:
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), str(adapters[0]), adapter_name="a0")
    for index, path in enumerate(adapters[1:], start=1):
        peft_model.load_adapter(str(path), adapter_name=f"a{index}")
    peft_model.eval()
    outputs, ttfts = [], []
    started = time.perf_counter()
    queue_wait = 0.0
    for ids, output, adapter in plan:
        request_start = time.perf_counter()
        peft_model.set_adapter(f"a{adapter}")
        with torch.inference_mode():
            generated = peft_model.generate(
                input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=output, min_new_tokens=output, do_sample=False, pad_token_id=0)
        # All requests arrive at t=0: a request's first token comes after everything before it, plus its
        # own prefill (measured as the time of a 1-token generate would be; approximated by the share of
        # one token of its total time, which overstates nothing for the baseline).
        duration = time.perf_counter() - request_start
        ttfts.append(queue_wait + duration / output)
        queue_wait += duration
        outputs.append(generated[0, len(ids):].tolist())
    elapsed = time.perf_counter() - started
    tokens = sum(len(o) for o in outputs)
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_second": tokens / elapsed, "ttft": ttfts,
            "outputs": outputs}


def run_peft_batched(model: Any, plan: list[tuple[list[int], int, int]], adapters: list[Path],
                     batch_size: int) -> dict[str, Any]:
    """peft's mixed-adapter batched `generate`: rows of one batch use different adapters (`adapter_names`)."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), str(adapters[0]), adapter_name="a0")
    for index, path in enumerate(adapters[1:], start=1):
        peft_model.load_adapter(str(path), adapter_name=f"a{index}")
    peft_model.eval()
    outputs: list[list[int]] = [[] for _ in plan]
    ttfts: list[float] = [0.0] * len(plan)
    started = time.perf_counter()
    for first in range(0, len(plan), batch_size):
        chunk = list(range(first, min(first + batch_size, len(plan))))
        longest = max(len(plan[i][0]) for i in chunk)
        ids = torch.tensor([[0] * (longest - len(plan[i][0])) + plan[i][0] for i in chunk])
        mask = torch.tensor([[0] * (longest - len(plan[i][0])) + [1] * len(plan[i][0]) for i in chunk])
        new = max(plan[i][1] for i in chunk)
        chunk_start = time.perf_counter()
        with torch.inference_mode():
            generated = peft_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new,
                                            min_new_tokens=new, do_sample=False, pad_token_id=0,
                                            adapter_names=[f"a{plan[i][2]}" for i in chunk])
        duration = time.perf_counter() - chunk_start
        for row, i in enumerate(chunk):
            outputs[i] = generated[row, longest:longest + plan[i][1]].tolist()
            ttfts[i] = chunk_start - started + duration / new  # as for (b): its share of one token
    elapsed = time.perf_counter() - started
    tokens = sum(len(o) for o in outputs)  # the requested tokens; a batch's extra tokens are not counted
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_second": tokens / elapsed, "ttft": ttfts,
            "outputs": outputs}


def s3_cold_load(model: Any, adapter: Path) -> float:
    """Seconds from an empty cache to a leased adapter, fetched from a moto S3 server over HTTP."""
    import boto3
    from moto.server import ThreadedMotoServer

    from contracts.settings import Settings
    from serving.adapters import AdapterCache, AdapterRef
    from storage.manifest import publish_directory
    from storage.registry import open_store

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        credentials = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench-secret"}
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials).create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as scratch:
            settings = Settings(data_dir=Path(scratch), artifact_uri="s3://bench/ftaas", s3_endpoint_url=endpoint,
                                s3_access_key_id=credentials["aws_access_key_id"],
                                s3_secret_access_key=credentials["aws_secret_access_key"])
            store = open_store("s3://bench/ftaas", settings.storage)
            artifact = publish_directory(store, "models/bench/", adapter, {"kind": "adapter"})
            forward = LlamaForward(model, max_slots=1, max_context=64, tile_rows=64)
            cache = AdapterCache(store, Path(scratch) / "cache", device_bytes=1 << 30, host_bytes=1 << 30,
                                 disk_bytes=1 << 30)
            ref = AdapterRef(artifact.prefix, artifact.manifest_sha256, "bench")
            started = time.perf_counter()
            lease = cache.lease(ref, lambda d: read_adapter(d, forward, key=ref.key, max_rank=32),
                                deadline=time.monotonic() + 60)
            seconds = time.perf_counter() - started
            lease.release()
            return seconds
    finally:
        server.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", type=int, default=32)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--slots", type=int, default=64, help="engine batch slots")
    parser.add_argument("--max-rank", type=int, default=None, help="engine max LoRA rank (default: the setting's)")
    parser.add_argument("--peft-batch", type=int, default=16, help="batch size of baseline (d)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    # Set-up runs single-threaded (as ftaas's request threads do: serving.threads.single_threaded_torch) so
    # that the engine thread's OpenMP team is the only one; the baseline gets every thread back below.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    from contracts.settings import Settings

    max_rank = args.max_rank or Settings.model_fields["serving_max_lora_rank"].default

    with tempfile.TemporaryDirectory() as scratch:
        model, tokenizer = load_base(Path(scratch) / "models")
        print(f"building {args.adapters} adapters (r=8, all-linear) ...", file=sys.stderr)
        adapters = make_adapters(model, args.adapters, Path(scratch))
        plan = workload(tokenizer, args.requests, args.adapters)
        print(f"{args.requests} requests: prompts {min(len(p) for p, _, _ in plan)}-{max(len(p) for p, _, _ in plan)} "
              f"tokens, outputs {min(o for _, o, _ in plan)}-{max(o for _, o, _ in plan)} tokens; "
              f"{threads} threads; slot rank {max_rank}", file=sys.stderr)

        print("(a) ftaas engine, mixed adapters ...", file=sys.stderr)
        engine = run_engine(model, plan, adapters, args.slots, max_rank)
        print("(c) ftaas engine, bare base model ...", file=sys.stderr)
        base = run_engine(model, plan, None, args.slots, max_rank)
        print("(b) peft set_adapter + generate, one at a time ...", file=sys.stderr)
        torch.set_num_threads(threads)
        baseline = run_baseline(model, plan, adapters)
        print(f"(d) peft mixed-adapter batched generate, batches of {args.peft_batch} ...", file=sys.stderr)
        batched = run_peft_batched(model, plan, adapters, args.peft_batch)
        cold = s3_cold_load(model, adapters[0])

    agree = sum(a == b for a, b in zip(engine["outputs"], baseline["outputs"], strict=True))
    figures = {
        "engine_tokens_per_second": engine["tokens_per_second"],
        "baseline_tokens_per_second": baseline["tokens_per_second"],
        "base_only_tokens_per_second": base["tokens_per_second"],
        "ratio_engine_vs_baseline": engine["tokens_per_second"] / baseline["tokens_per_second"],
        "peft_batched_tokens_per_second": batched["tokens_per_second"],
        "ratio_engine_vs_peft_batched": engine["tokens_per_second"] / batched["tokens_per_second"],
        "lora_overhead": 1 - engine["tokens_per_second"] / base["tokens_per_second"],
        "engine_ttft_p50_ms": 1000 * percentile(engine["ttft"], 0.5),
        "engine_ttft_p99_ms": 1000 * percentile(engine["ttft"], 0.99),
        "baseline_ttft_p50_ms": 1000 * percentile(baseline["ttft"], 0.5),
        "baseline_ttft_p99_ms": 1000 * percentile(baseline["ttft"], 0.99),
        "greedy_outputs_equal_to_peft": f"{agree}/{len(plan)}",
        "s3_cold_load_ms": 1000 * cold,
        "tokens": engine["tokens"],
        "engine_steps": engine["steps"],
    }
    print()
    print(f"{'':34}{'tokens/s':>12}{'seconds':>10}{'TTFT p50':>12}{'TTFT p99':>12}")
    for label, run in (("(a) ftaas engine, 32 adapters", engine), ("(b) peft one at a time", baseline),
                       ("(c) ftaas engine, base only", base), ("(d) peft batched, mixed adapters", batched)):
        print(f"{label:34}{run['tokens_per_second']:12.0f}{run['seconds']:10.2f}"
              f"{1000 * percentile(run['ttft'], 0.5):10.0f}ms{1000 * percentile(run['ttft'], 0.99):10.0f}ms")
    print()
    print(f"a/b speed-up          {figures['ratio_engine_vs_baseline']:6.1f}x   (goal >= 10x)")
    print(f"a/d speed-up          {figures['ratio_engine_vs_peft_batched']:6.1f}x   (the stronger baseline)")
    print(f"LoRA overhead 1 - a/c {100 * figures['lora_overhead']:6.1f}%   (goal <= 20%)")
    print(f"greedy outputs equal to peft's: {figures['greedy_outputs_equal_to_peft']}")
    print(f"cold load of one adapter from S3 (moto over HTTP): {figures['s3_cold_load_ms']:.0f} ms")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
