"""Precisions chosen by measuring them on this machine, for this model's own shapes, not by CPU flags.

Why: the flags say what a CPU can do, not what wins. Machines of one kind have had an Intel Xeon with AMX
(bf16 far faster), an AMD EPYC with AVX-512 BF16 (bf16 wins for decoding, by less) and an AMD EPYC with AVX2
only (bf16 emulated: slower than fp32). `measured_dtype` times each candidate on the products the work
actually runs (the model's layer shapes: one row for a decode step and a batch of rows for a prompt; for
training, a one-layer model of the family, forward and backward over `rows` tokens: `time_training`) and takes the fastest (`bf16_wins`); bf16 must win by
`MARGIN` to be chosen, since fp32 is the exact one. For decoding, a third candidate: int8 weights with bf16
activations (serving.model.Int8Weight), taken where bf16 does not win and int8 does (`decode_path`): on a CPU
without native bf16 it halves the bytes a decode step reads (measured on an AVX2-only EPYC: one stream 1.7x
fp32's speed, 16 streams and the first token no slower). And for the bf16 or int8 path chosen, whether the
decode kernels (serving.kernels, compiled for this CPU) compute one row faster than the library's products:
the engine then takes them for products of few rows (`DecodeChoice`).

A measurement costs 0.1-0.4 s on a Zen 4 (about 1.3 s on a slow AVX2-only EPYC, where int8 weights are timed
too); its result is cached per machine (CPU model, cores, torch version), model shapes and work in
`<cache>/fast-paths.json`, so a process pays it once per machine and model. GPUs are not
measured: bf16 where the device supports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from contracts.machine import OTHER, ThreadGovernor
from serving.kernels import Products
from serving.kernels import load as load_kernels

log = logging.getLogger(__name__)

Work = Literal["decode", "train"]
#: What a decode step computes with: float32 or bfloat16 weights and activations, or int8 weights with bfloat16
#: activations. A training measurement's result is float32 or bfloat16.
DecodePath = Literal["float32", "bfloat16", "int8"]
CACHE_FILE = "fast-paths.json"
#: bf16 is chosen only when it is at least this much faster than fp32 (fp32 is exact; a tie keeps it).
MARGIN = 1.1
#: For training, by this much: a one-layer pass leaves out the optimizer and the step's fixed costs, which bf16
#: does not speed up (the demo model: one-layer passes within 0.8-1.23x of each other between runs, whole runs
#: 1.1-1.8x slower in bf16 on a loaded 2-core Zen 4; SmolLM2-135M: 1.74x faster in bf16, whole runs too).
TRAIN_MARGIN = 1.3
#: Timed repetitions per candidate (the fastest is kept), after one warm-up.
REPEATS = 5
#: A training measurement's products have at most this many outputs (the output layer's vocabulary is cut).
TRAIN_OUTPUTS = 4096
#: Rows of a decode measurement's batch pass (a prompt's prefill, concurrent streams).
BATCH_ROWS = 64
#: Random rows drawn per candidate weight, repeated to its shape (`_weights`).
WEIGHT_BLOCK_ROWS = 256


@dataclass(frozen=True)
class DecodeChoice:
    """How the engine decodes on this machine: the precision (`decode_path`) and whether its few-row products
    run on the decode kernels (serving.kernels; `uses_kernels`)."""

    path: DecodePath
    kernels: bool = False


def model_shapes(config: dict[str, Any]) -> list[tuple[int, int]]:
    """(in, out) of the linear products of one transformer layer, then the output layer (decoder-only
    families with llama-like projections; the sizes come from the config)."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    kv = int(config.get("num_key_value_heads") or heads) * head_dim
    inner = int(config["intermediate_size"])
    return [(hidden, heads * head_dim), (hidden, kv), (hidden, kv), (heads * head_dim, hidden),
            (hidden, inner), (hidden, inner), (inner, hidden), (hidden, int(config["vocab_size"]))]


def _machine_key() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}|threads={torch.get_num_threads()}|torch={torch.__version__}"


def _weights(shapes: list[tuple[int, int]], generator: torch.Generator) -> list[torch.Tensor]:
    """Random fp32 weights of `shapes` ([out, in] each, scaled as trained weights are). A block of rows is drawn
    and repeated: a product's time depends on the bytes it reads, not on their values, and drawing the output
    layer's 28 M values alone took 0.3-0.6 s of a measurement that should take a few hundred milliseconds."""
    weights = []
    for inp, out in shapes:
        block = torch.randn(min(out, WEIGHT_BLOCK_ROWS), inp, generator=generator) * 0.02
        weights.append(block.repeat(-(-out // block.shape[0]), 1)[:out])  # leading rows: contiguous
    return weights


def _time(runs: dict[str, Callable[[], Any]]) -> dict[str, float]:
    """Each candidate's fastest of REPEATS runs after a warm-up: other work on the machine only ever adds time.
    The candidates take turns (one run of each per round), so a burst of other work (a process starting beside
    this one) slows every candidate alike instead of the one it fell on: measured in `ftaas up` on a Xeon with
    AMX, timed one after the other, the kernels' pass came out 1.26x the library's in one start and 0.86x in
    the next."""
    for run in runs.values():
        run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(REPEATS):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - started)
    return {name: min(times) for name, times in samples.items()}


def prepacks_bf16() -> bool:
    """Whether the engine pre-packs bf16 weights for oneDNN on this CPU (serving.model.LlamaForward)."""
    from serving.placement import native_bfloat16

    return (native_bfloat16("cpu") and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def _products(inputs: list[torch.Tensor], weights: list[torch.Tensor], packed: bool) -> None:
    """Each input times its weight (pairs up to the shorter list), as the engine multiplies them."""
    for x, w in zip(inputs, weights, strict=False):
        if isinstance(w, tuple):  # (the decode kernels' bf16 product, plain weight)
            w[0](x, w[1])
        elif packed:
            torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
        else:
            torch.nn.functional.linear(x, w)


def time_candidates(shapes: list[tuple[int, int]], work: Work, *, rows: int = 128,
                    kernels: Products | None = None) -> dict[str, float]:
    """Seconds for one pass over `shapes` in each candidate precision: a one-row product per shape for
    `decode` (what a decode step streams from memory: every weight once), and `<dtype>_batch`, BATCH_ROWS rows
    through the layer's products (what a prompt or a batch of streams computes); with `kernels`, also
    `bfloat16_kernel`, the one-row pass by the decode kernels (serving.kernels; a batch's rows are more than
    they compute, so the library's batch pass stands for both); for `train`, `rows` rows forward
    and backward through frozen weights (a LoRA step's base) under bf16 autocast (the trainer's way) or in
    fp32, outputs capped at TRAIN_OUTPUTS (the ratio of the two is what is compared, and a full vocabulary
    would make the measurement seconds long)."""
    generator = torch.Generator().manual_seed(0)
    if work == "train":
        shapes = [(inp, min(out, TRAIN_OUTPUTS)) for inp, out in shapes]
    weights = _weights(shapes, generator)
    runs: dict[str, Callable[[], Any]] = {}
    with torch.inference_mode(work == "decode"):
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            if work == "decode":
                # bf16 as the engine computes it: weights pre-packed for oneDNN where it pre-packs them
                # (serving.model.LlamaForward.prepacked), else F.linear.
                packed = dtype == torch.bfloat16 and prepacks_bf16()
                cast = [torch.ops.mkldnn._reorder_linear_weight(w.to(dtype).contiguous(), 16) if packed
                        else w.to(dtype) for w in weights]
                inputs = [torch.randn(1, inp, generator=generator).to(dtype) for inp, _ in shapes]
                # A batch: BATCH_ROWS rows through one layer (no output layer: a prompt's rows skip it), what
                # a prompt's prefill and concurrent streams cost.
                batch = [torch.randn(BATCH_ROWS, inp, generator=generator).to(dtype) for inp, _ in shapes[:-1]]

                runs[f"{name}_batch"] = lambda cast=cast, batch=batch, packed=packed: _products(batch, cast, packed)

                def run(cast: list[torch.Tensor] = cast, inputs: list[torch.Tensor] = inputs,
                        packed: bool = packed) -> None:
                    _products(inputs, cast, packed)

                if kernels is not None and dtype == torch.bfloat16:
                    plain = [(kernels.bf16, w.to(dtype).contiguous()) for w in weights]
                    runs["bfloat16_kernel"] = lambda plain=plain, inputs=inputs: _products(inputs, plain, False)
            else:
                # As a LoRA step computes the frozen base: its weights stored in the precision (the trainer keeps
                # them in bf16 under autocast), the gradient flowing through them to the activations only.
                frozen = [w.to(dtype) for w in weights]
                inputs = [torch.randn(rows, inp, generator=generator).requires_grad_(True) for inp, _ in shapes]
                autocast = dtype == torch.bfloat16

                def run(frozen: list[torch.Tensor] = frozen, inputs: list[torch.Tensor] = inputs,
                        autocast: bool = autocast) -> None:
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                        total = torch.stack([torch.nn.functional.linear(x, w).float().square().mean()
                                             for x, w in zip(inputs, frozen, strict=True)]).sum()
                    total.backward()
            runs[name] = run
        return _time(runs)


def time_training(config: dict[str, Any], *, rows: int) -> dict[str, float] | None:
    """Seconds for one training pass in each precision through a one-decoder-layer model of the family, built
    from the config with random weights (vocabulary cut to TRAIN_OUTPUTS): embeddings, a layer's attention,
    norms and MLP, the output layer and the loss, forward and backward with the weights frozen and the gradient
    flowing to the activations (a LoRA step's base), in fp32 or with bf16 weights under bf16 autocast (the
    trainer's way), over `rows` tokens as two sequences. None where transformers cannot build the family from its
    config alone (never custom code): the products are timed instead (`time_candidates`).

    Why a layer and not only its products: the casts, norms, attention and activations around them weigh where
    the shapes are small (measured on the demo model, 2-core AMD EPYC with AVX-512 BF16: its products ran 1.18x
    faster in bf16, a whole training run 1.1-1.8x slower; its one-layer pass 7.3 ms fp32, 8.9 ms bf16), and the
    products where they are large (SmolLM2-135M: 163 ms fp32, 116 ms bf16, as its training runs)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    values = {k: v for k, v in config.items()
              if k not in ("architectures", "auto_map", "quantization_config", "torch_dtype", "dtype")}
    try:
        layer_config = AutoConfig.for_model(values.pop("model_type"), **values)
        layer_config.num_hidden_layers = 1
        layer_config.vocab_size = min(int(layer_config.vocab_size), TRAIN_OUTPUTS)
        layer_config.pad_token_id = None  # may lie beyond the cut vocabulary
        if isinstance(getattr(layer_config, "layer_types", None), list):
            layer_config.layer_types = layer_config.layer_types[:1]
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            models = {name: AutoModelForCausalLM.from_config(layer_config, dtype=dtype).eval()
                      for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))}
        finally:
            hf_logging.set_verbosity(verbosity)
    except Exception as exc:  # noqa: BLE001 - any family transformers cannot build alone falls back to the products
        log.info("training measured on the products only (no one-layer model of %s: %s)", config.get("model_type"), exc)
        return None
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, layer_config.vocab_size, (2, max(1, rows // 2)), generator=generator)
    runs: dict[str, Callable[[], Any]] = {}
    for name, model in models.items():
        model.requires_grad_(False)
        embed = model.get_input_embeddings()

        def run(model: Any = model, embed: Any = embed, autocast: bool = name == "bfloat16") -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = model(inputs_embeds=embed(tokens).requires_grad_(True), labels=tokens).loss
            loss.backward()

        runs[name] = run
    return _time(runs)


def time_int8(shapes: list[tuple[int, int]], kernels: Products | None = None) -> dict[str, float]:
    """`time_candidates`' decode passes (one row through every product, BATCH_ROWS rows through one layer's)
    with int8 weights and bf16 activations (serving.model.Int8Weight), and with `kernels` `int8_kernel`, the
    one-row pass by the decode kernels; empty where torch has no int8 weight-only product."""
    if not _int8_kernel():
        return {}
    from serving.model import Int8Weight

    generator = torch.Generator().manual_seed(0)
    quantized = [Int8Weight.of(w.to(torch.bfloat16)) for w in _weights(shapes, generator)]
    with torch.inference_mode():
        inputs = [torch.randn(1, inp, generator=generator).to(torch.bfloat16) for inp, _ in shapes]
        batch = [torch.randn(BATCH_ROWS, inp, generator=generator).to(torch.bfloat16) for inp, _ in shapes[:-1]]
        runs: dict[str, Callable[[], Any]] = {
            "int8_batch": lambda: [w.multiply(x) for x, w in zip(batch, quantized, strict=False)],
            "int8": lambda: [w.multiply(x) for x, w in zip(inputs, quantized, strict=True)]}
        if kernels is not None:
            runs["int8_kernel"] = lambda: [kernels.int8(x, w.values, w.scales_float)
                                           for x, w in zip(inputs, quantized, strict=True)]
        return _time(runs)


def _int8_kernel() -> bool:
    """Whether this torch has the int8 weight-only product on the CPU (serving.model.refuse_int8)."""
    from serving.model import refuse_int8

    try:
        refuse_int8(torch.bfloat16, False, "cpu")
    except ValueError:
        return False
    return True


def _one_row(timings: dict[str, float], name: str) -> float:
    """A candidate's one-row pass: the faster of the library's products and the decode kernels'."""
    return min(timings[name], timings.get(f"{name}_kernel", timings[name]))


def uses_kernels(timings: dict[str, float], path: DecodePath) -> bool:
    """Whether the engine takes the decode kernels for `path`: there are kernels for it, and their one-row
    product pass was not MARGIN slower than the library's. A tie takes them: the pass times the products only,
    and the kernels also compute the rest of a decode row's layer (RMSNorm, RoPE with the cache write and
    attention, the activation) in one call each where torch makes a dozen (measured on a Xeon with AMX: the
    product passes within 0.86-1.26x of oneDNN's from one measurement to the next, the engine's one stream
    1.5x faster on the kernels, docs/benchmarks.md)."""
    return f"{path}_kernel" in timings and timings[f"{path}_kernel"] <= timings[path] * MARGIN


def bf16_wins(timings: dict[str, float]) -> bool:
    """The rule: bf16 must be MARGIN faster than fp32 for the work's pass, and, for decoding, not more than
    MARGIN slower for a batch (where bf16 is emulated, one row reads half the bytes and wins, while a prompt's
    rows are computed, and lose: measured on an AVX2-only EPYC, one stream 1.6x faster in bf16, 16 streams
    2.4x slower and the first token 3.5x later; docs/benchmarks.md)."""
    if _one_row(timings, "bfloat16") * MARGIN > timings["float32"]:
        return False
    return "float32_batch" not in timings or timings["bfloat16_batch"] <= timings["float32_batch"] * MARGIN


def int8_wins(timings: dict[str, float]) -> bool:
    """int8 weights (bf16 activations) decode: MARGIN faster than fp32 for one row, and not more than MARGIN
    slower for a batch (its kernel dequantizes as it multiplies, which a prompt's many rows pay for)."""
    return ("int8" in timings and _one_row(timings, "int8") * MARGIN <= timings["float32"]
            and timings["int8_batch"] <= timings["float32_batch"] * MARGIN)


def decode_path(timings: dict[str, float]) -> DecodePath:
    """bf16 where it wins (`bf16_wins`), else int8 weights where they win (`int8_wins`), else fp32. bf16 comes
    first: its answers are closer to fp32's than int8's are (docs/serving.md, "int8 weights")."""
    if bf16_wins(timings):
        return "bfloat16"
    return "int8" if int8_wins(timings) else "float32"


def measured_in_thread(config: dict[str, Any], work: Work, *, cache_dir: Path | None, threads: int,
                       governor: ThreadGovernor | None = None) -> DecodeChoice:
    """`measured_choice` on `threads` threads, in a thread of its own that then ends: the caller's thread
    keeps its thread count, and no OpenMP team outlives the measurement (serving.threads.single_threaded_torch
    says why a second team costs the engine)."""
    import concurrent.futures

    from serving.threads import set_torch_threads

    def run() -> DecodeChoice:
        set_torch_threads(threads)
        return measured_choice(config, work, cache_dir=cache_dir, governor=governor)

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ftaas-fast-path") as pool:
        return pool.submit(run).result()


def measured_dtype(config: dict[str, Any], work: Work, *, cache_dir: Path | None, rows: int = 128,
                   governor: ThreadGovernor | None = None) -> torch.dtype:
    """The faster of fp32 and bf16 for `work` with full weights (`measured_path`; where int8 weights won a
    decode measurement, bf16 had not: fp32)."""
    path = measured_path(config, work, cache_dir=cache_dir, rows=rows, governor=governor)
    return torch.bfloat16 if path == "bfloat16" else torch.float32


def measured_path(config: dict[str, Any], work: Work, *, cache_dir: Path | None, rows: int = 128,
                  governor: ThreadGovernor | None = None) -> DecodePath:
    """The fastest of fp32, bf16 and, for decoding, int8 weights (`measured_choice`'s path)."""
    return measured_choice(config, work, cache_dir=cache_dir, rows=rows, governor=governor).path


def measured_choice(config: dict[str, Any], work: Work, *, cache_dir: Path | None, rows: int = 128,
                    governor: ThreadGovernor | None = None) -> DecodeChoice:
    """The fastest of fp32, bf16 and, for decoding, int8 weights (`decode_path`) for `work` on this machine's
    CPU and this model, and for decoding whether the decode kernels compute it faster (`uses_kernels`; they are
    built first, under `cache_dir`), cached (see the module).
    With the caller's `governor` (contracts.machine) the measurement is marked as that kind of work, so that
    the other kind yields while it is timed, and one made while the other kind computed anyway is used by this
    process but not cached, since contention skews memory-bound and compute-bound passes differently
    (measured: bf16 chosen under a training job on an AVX2-only CPU where it computes prompts 3.9x slower)."""
    shapes = model_shapes(config)
    kernels = load_kernels(cache_dir) if work == "decode" else None
    key = cache_key(shapes, work, rows=rows, kernels=kernels is not None)
    path = cache_dir / CACHE_FILE if cache_dir is not None else None
    cached: dict[str, Any] = {}
    if path is not None and path.is_file():
        try:
            cached = json.loads(path.read_text())
        except ValueError:
            cached = {}
    if "path" in cached.get(key, {}):
        return DecodeChoice(cached[key]["path"], bool(cached[key].get("kernels", False)))
    started = time.perf_counter()
    with governor.working() if governor is not None else contextlib.nullcontext():
        contended = governor is not None and governor.board is not None and governor.board.active(
            OTHER[governor.kind])
        timings = ((time_training(config, rows=rows) if work == "train" else None)
                   or time_candidates(shapes, work, rows=rows, kernels=kernels))
        if work == "decode" and not bf16_wins(timings):  # int8 is the candidate only where bf16 lost
            timings.update(time_int8(shapes, kernels))
    chosen: DecodePath = (decode_path(timings) if work == "decode"
                          else "bfloat16" if timings["float32"] >= timings["bfloat16"] * TRAIN_MARGIN else "float32")
    choice = DecodeChoice(chosen, uses_kernels(timings, chosen))
    record = {"path": chosen, "kernels": choice.kernels, "seconds": {k: round(v, 6) for k, v in timings.items()},
              "measured_in": round(time.perf_counter() - started, 3), "at": int(time.time())}
    log.info("fast path for %s (%s): %s%s (per pass, ms: %s; measured in %.2f s)", work, key.split("|")[0], chosen,
             " on the decode kernels" if choice.kernels else "",
             ", ".join(f"{k} {v * 1e3:.2f}" for k, v in timings.items()), record["measured_in"])
    if path is not None and not contended:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            cached[key] = record
            temporary = path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(cached, indent=2))
            temporary.replace(path)  # atomic: two processes measuring at once each write a whole file
        except OSError as exc:  # a read-only cache costs a measurement per process, nothing else
            log.warning("fast-path cache not written: %s", exc)
    return choice


def cache_key(shapes: list[tuple[int, int]], work: Work, *, rows: int = 128, kernels: bool = False) -> str:
    """The cache entry of a measurement: this machine, the work and its passes (the decode kernels' among
    them where they could be built), the model's shapes."""
    passes = f"layer{rows}" if work == "train" else f"1+{BATCH_ROWS}+int8" + ("+kernels" if kernels else "")
    return f"{_machine_key()}|{work}|rows={passes}|" + hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]
