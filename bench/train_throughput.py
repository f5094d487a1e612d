"""Training throughput: the ftaas trainer vs a plain transformers.Trainer + peft baseline, side by side.

Both train the same LoRA adapter (r=8, all linear layers) on the same model and the same variable-length chat
dataset, for the same number of optimizer steps of the same batch size, in one process, one after the other.
`--model bench-28m` (default): a ~28M-parameter Llama-style model (random initialisation, the demo
tokenizer). `--model smollm2-135m-instruct`: the packaged real model (SmolLM2-135M-Instruct, its own
tokenizer; built once into the model cache that `ftaas up` uses). `--model llama-1b`: a ~1.1B-parameter
Llama-style model (TinyLlama's shape, random initialisation, the demo tokenizer), for a GPU (`--device cuda`,
run by bench/gpu_check.sh; peak memory is printed there).

* ftaas: `worker.training.trainer.Trainer`, packing on, bf16 autocast where the CPU runs bf16 natively (fp32 otherwise);
* baseline: `transformers.Trainer` with peft, fp32, dynamic padding to the longest example of each batch
  (DataCollatorForSeq2Seq), no packing.

Throughput counts real (non-padding) tokens per second over the timed steps (after warm-up steps).
MFU = useful model FLOPs per second / the matmul peak measured in this run, in the dtype the ftaas trainer
computes in (bf16 where the CPU has native bf16, fp32 otherwise). Useful FLOPs per token:
4 x (parameters in matmuls) for a frozen base (forward 2N, activation gradients 2N; no weight gradients
except the adapter's, counted too), plus causal attention within each example (3 x 2 x length x width per
layer). Compute that padding or packing wastes is not counted as useful.

    python bench/train_throughput.py [--model bench-28m|smollm2-135m-instruct|llama-1b] [--examples 384]
                                     [--batch-size 16] [--steps 10] [--warmup 3] [--device cpu|cuda]

`--job`: the whole job as a user sees it, against the baseline users pick today, TRL's `SFTTrainer`: from
a model folder on disk and the chat data as JSONL lines to the saved adapter, model load and tokenisation
included, one epoch over `--examples` chats, `--repeats` times alternating, ranges printed.

* ftaas: what a worker runs for a job (worker.jobs.execution `execute`, less the database and storage):
  load the tokenizer, encode the chats (chat template, loss on assistant tokens), load the model, train with
  packing, score the final pass over the training data, save the adapter;
* TRL: `SFTTrainer` with the same LoRA, learning rate, batch and epoch; its best settings here: the data
  in TRL's conversational prompt-completion form, so the loss is on the completion (the assistant reply)
  only; bf16 autocast where this CPU runs bf16 natively, as ftaas (fp32 elsewhere: emulated bf16 is
  slower); no packing: TRL's packing over SDPA attends across examples' boundaries only with FlashAttention
  (its `padding_free` needs it) and ran 3.6x slower than no packing on a CPU (measured on 2026-12-01), so
  dynamic padding to each batch's longest example is its fastest exact choice here.

Tokens per second count the data's real tokens (one epoch) over the whole job's wall time. MFU of a job =
useful FLOPs of its epoch / wall time / the measured matmul peak.

    python bench/train_throughput.py --job [--model ...] [--examples 128] [--batch-size 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.files import WEIGHTS  # noqa: E402
from basemodels import smollm2, tiny  # noqa: E402
from contracts.files.formats import CHAT  # noqa: E402
from contracts.settings import PACKAGED_BASE_MODEL, Settings  # noqa: E402
from contracts.training.spec import AdapterSettings, TrainingSpec  # noqa: E402
from worker.training.control import Directive, StepMetrics  # noqa: E402
from worker.training.data import TokenizedExample, encode_lines  # noqa: E402
from worker.training.kernels import autocast_dtype  # noqa: E402
from worker.training.trainer import Trainer  # noqa: E402

WORDS = ("the model learns what the data shows about agents cities rivers colours numbers and dates "
         "while the baseline pads every batch to its longest example").split()


#: the random models' shapes
SHAPES = {"bench-28m": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8,
                        "num_attention_heads": 8, "num_key_value_heads": 8},
          "llama-1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
                       "num_attention_heads": 32, "num_key_value_heads": 4}}


def model_config(tokenizer: Any, shape: str = "bench-28m") -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), **SHAPES[shape], max_position_embeddings=2048,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)


#: --model choices -> the folder holding the real model, or None for the random bench model.
MODELS = ("bench-28m", PACKAGED_BASE_MODEL, "llama-1b")
REAL_MODEL_DIR: Path | None = None  # set by main() for a real model
SHAPE = "bench-28m"  # set by main() for a random model
DEVICE = torch.device("cpu")  # set by main()


def new_model(tokenizer: Any) -> Any:
    """A fresh copy of the benchmarked model (float32), the same for every trainer."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    torch.manual_seed(0)
    if REAL_MODEL_DIR is not None:
        model = AutoModelForCausalLM.from_pretrained(REAL_MODEL_DIR, dtype=torch.float32, use_safetensors=True)
    else:
        model = LlamaForCausalLM(model_config(tokenizer, SHAPE))
    return model.to(DEVICE)


def chats(n: int, seed: int = 0) -> list[str]:
    """Conversations from ~20 to ~900 tokens (a long-tailed mix, as real chat data is)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        length = int(min(900, rng.lognormvariate(4.6, 0.8)))
        answer = " ".join(rng.choice(WORDS) for _ in range(max(3, length)))
        rows.append(json.dumps({"messages": [{"role": "user", "content": f"Question {i}: tell me more."},
                                             {"role": "assistant", "content": answer}]}))
    return rows


def matmul_peak(dtype: torch.dtype, seconds: float = 3.0) -> float:
    """Matrix-multiply FLOP/s in `dtype` on this machine, now (best of several 2048^3 products)."""
    size = 8192 if DEVICE.type == "cuda" else 2048  # a GPU needs a larger product to reach its peak
    a = torch.randn(size, size, dtype=dtype, device=DEVICE)
    b = torch.randn(size, size, dtype=dtype, device=DEVICE)
    for _ in range(3):
        a @ b
    best, deadline = math.inf, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def useful_flops(lengths: list[int], model: Any, adapter_params: int) -> float:
    """Model FLOPs that the examples of these lengths need (see the module docstring)."""
    matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    config = model.config
    flops = 0.0
    for n in lengths:
        attention = 3 * 2 * n * config.hidden_size * config.num_hidden_layers  # causal: ~n/2 keys, fwd + 2 bwd
        flops += n * (4 * matmul_params + 6 * adapter_params) + n * attention
    return flops


class Timer:
    """Times the optimizer steps after the warm-up ones (the TrainingControl of the ftaas run)."""

    def __init__(self) -> None:
        self.marks: list[float] = []
        self.tokens: list[int] = []

    def after_step(self, metrics: StepMetrics) -> Directive:
        self.marks.append(time.perf_counter())
        self.tokens.append(metrics.trained_tokens)  # cumulative real tokens
        return Directive.CONTINUE

    def on_checkpoint(self, state_dir: Path, metrics: StepMetrics, *, best: bool) -> None:
        pass


GRADIENT_CHECKPOINTING = False  # set by main()


def ftaas_spec(batch: int, checkpointing: bool) -> TrainingSpec:
    """The ftaas side of every comparison: one epoch of LoRA r=8 on all linear layers, packed."""
    return TrainingSpec(base_model="bench", method="supervised", n_epochs=1, batch_size=batch, learning_rate=2e-4,
                        seed=1, packing=True, max_seq_len=2048, adapter=AdapterSettings(type="lora", r=8, alpha=16),
                        gradient_checkpointing=checkpointing)


def run_ftaas(tokenizer: Any, examples: list[TokenizedExample], batch: int, steps: int, warmup: int,
              work: Path) -> tuple[float, int, list[list[int]]]:
    """(seconds, real tokens, per-step example lengths) of the timed steps."""
    spec = ftaas_spec(batch, GRADIENT_CHECKPOINTING)
    timer = Timer()
    subset = examples[:batch * (steps + warmup)]
    trainer = Trainer(spec, new_model(tokenizer), tokenizer, subset, [], timer, work)
    trainer.run()
    order = trainer._epoch_order(0)
    lengths = [[len(subset[order[s * batch + i]].input_ids) for i in range(batch)] for s in range(warmup, steps + warmup)]
    return timer.marks[-1] - timer.marks[warmup - 1], timer.tokens[-1] - timer.tokens[warmup - 1], lengths


def run_baseline(tokenizer: Any, examples: list[TokenizedExample], batch: int, steps: int, warmup: int,
                 work: Path) -> tuple[float, int, list[list[int]]]:
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, TrainerCallback, TrainingArguments
    from transformers import Trainer as HFTrainer

    model = get_peft_model(new_model(tokenizer), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                            task_type="CAUSAL_LM"))
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples[:batch * (steps + warmup)]]
    marks: list[float] = []

    class Marks(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            marks.append(time.perf_counter())

    padding = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    batches: list[list[int]] = []

    def collate(features: list[dict[str, Any]]) -> Any:
        batches.append([len(f["input_ids"]) for f in features])  # the real tokens of each step, in order
        return padding(features)

    arguments = TrainingArguments(output_dir=str(work), per_device_train_batch_size=batch, max_steps=steps + warmup,
                                  learning_rate=2e-4, logging_strategy="no", save_strategy="no", report_to=[],
                                  use_cpu=DEVICE.type == "cpu", dataloader_num_workers=0, seed=1, remove_unused_columns=False)
    trainer = HFTrainer(model=model, args=arguments, train_dataset=rows, callbacks=[Marks()], data_collator=collate)
    trainer.train()
    timed = batches[warmup:steps + warmup]
    return marks[-1] - marks[warmup - 1], sum(sum(b) for b in timed), timed


def save_model_folder(tokenizer: Any, folder: Path) -> Path:
    """The benchmarked model as a user has it: a folder with safetensors weights and the tokenizer."""
    if REAL_MODEL_DIR is not None:
        return REAL_MODEL_DIR
    if not (folder / "config.json").exists():
        new_model(tokenizer).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def _load_model(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True).to(DEVICE)


def ftaas_job(folder: Path, lines: list[str], batch: int, work: Path) -> dict[str, Any]:
    """The ftaas job, timed from nothing loaded to the adapter saved."""
    from transformers import AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    examples = encode_lines(lines, CHAT, tokenizer, 2048).examples
    spec = ftaas_spec(batch, checkpointing=False)
    outcome = Trainer(spec, _load_model(folder), tokenizer, examples, [], Timer(), work).run()
    assert outcome.adapter_dir is not None and (outcome.adapter_dir / WEIGHTS).exists()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": sum(len(e.input_ids) for e in examples),
            "lengths": [len(e.input_ids) for e in examples]}


def trl_job(folder: Path, lines: list[str], batch: int, work: Path) -> dict[str, Any]:
    """The TRL SFTTrainer job (see the module docstring), timed from nothing loaded to the adapter saved."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = []
    for line in lines:
        messages = json.loads(line)["messages"]
        rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    config = SFTConfig(output_dir=str(work), per_device_train_batch_size=batch, num_train_epochs=1, learning_rate=2e-4,
                       lr_scheduler_type="linear", max_length=2048, packing=False, completion_only_loss=True,
                       bf16=autocast_dtype(DEVICE) is not None, use_cpu=DEVICE.type == "cpu", seed=1,
                       logging_strategy="no", save_strategy="no", report_to=[], dataloader_num_workers=0,
                       disable_tqdm=True)
    trainer = SFTTrainer(model=_load_model(folder), args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer,
                         peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer.train()
    trainer.save_model(str(work / "adapter"))
    seconds = time.perf_counter() - start
    assert (work / "adapter" / WEIGHTS).exists()
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    return {"seconds": seconds, "tokens": sum(lengths), "lengths": lengths}


def compare_jobs(args: Any, tokenizer: Any, tmp: Path) -> int:
    """`--job`: ftaas vs TRL SFTTrainer, whole jobs, alternating, `--repeats` times."""
    lines = chats(args.examples)
    folder = save_model_folder(tokenizer, tmp / "model")
    probe = new_model(tokenizer)
    adapter_params = 8 * sum(m.in_features + m.out_features for name, m in probe.named_modules()
                             if isinstance(m, torch.nn.Linear) and name != "lm_head")
    compute = autocast_dtype(DEVICE) or torch.float32
    peak = matmul_peak(compute)
    runs: dict[str, list[dict[str, Any]]] = {"ftaas": [], "trl": []}
    for repeat in range(args.repeats):
        for name, job in (("ftaas", ftaas_job), ("trl", trl_job)):
            result = job(folder, lines, args.batch_size, tmp / f"{name}-{repeat}")
            result["tokens_per_second"] = result["tokens"] / result["seconds"]
            result["mfu"] = useful_flops(result.pop("lengths"), probe, adapter_params) / result["seconds"] / peak
            runs[name].append(result)
            print(f"run {repeat + 1}/{args.repeats} {name:<6} {result['seconds']:7.1f} s  "
                  f"{result['tokens_per_second']:7.0f} tokens/s  MFU {100 * result['mfu']:.1f}%", flush=True)
    params = sum(p.numel() for p in probe.parameters())
    print(f"\nmodel: {args.model}, {params / 1e6:.1f}M parameters; LoRA r=8 on all linear layers; "
          f"{args.examples} chats, batch {args.batch_size}, one epoch; "
          f"{str(compute).removeprefix('torch.')} matmul peak {peak / 1e12:.3f} TFLOP/s "
          f"({torch.get_num_threads()} threads)")
    print(f"tokens in the data: ftaas {runs['ftaas'][0]['tokens']}, TRL {runs['trl'][0]['tokens']} "
          f"(each job's own tokenisation)\n")
    print(f"{'whole job':<34} {'seconds':>15} {'tokens/s':>15} {'MFU %':>11}")

    def span(values: list[float], fmt: str) -> str:
        return f"{min(values):{fmt}}-{max(values):{fmt}}" if len(values) > 1 else f"{values[0]:{fmt}}"

    labels = {"ftaas": "ftaas (packing)", "trl": "TRL SFTTrainer (completion loss)"}
    for name, results in runs.items():
        print(f"{labels[name]:<34} {span([r['seconds'] for r in results], '.1f'):>15} "
              f"{span([r['tokens_per_second'] for r in results], '.0f'):>15} "
              f"{span([100 * r['mfu'] for r in results], '.1f'):>11}")
    ratios = [f["tokens_per_second"] / t["tokens_per_second"] for f, t in zip(runs["ftaas"], runs["trl"], strict=True)]
    print(f"\nratio ftaas / TRL (tokens/s, each repeat): {span(ratios, '.2f')}x "
          f"(goal >= 2.5x: {'met' if min(ratios) >= 2.5 else 'NOT met'})")
    out = ROOT / ".bench-out"
    out.mkdir(exist_ok=True)
    (out / f"train_job-{args.model}.json").write_text(json.dumps(
        {"model": args.model, "peak_flops": peak, "parameters": params, "runs": runs, "ratios": ratios}, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODELS, default=MODELS[0])
    parser.add_argument("--examples", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="the ftaas trainer recomputes activations in the backward pass")
    parser.add_argument("--ftaas-only", action="store_true", help="skip the baseline")
    parser.add_argument("--job", action="store_true", help="whole jobs: ftaas vs TRL SFTTrainer")
    parser.add_argument("--repeats", type=int, default=3, help="--job: runs of each, alternating")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    global REAL_MODEL_DIR, SHAPE, DEVICE, GRADIENT_CHECKPOINTING
    DEVICE = torch.device(args.device)
    GRADIENT_CHECKPOINTING = args.gradient_checkpointing
    SHAPE = args.model if args.model in SHAPES else SHAPE
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = tiny.ensure_built(Path(tmp) / "cache")
        if args.model == PACKAGED_BASE_MODEL:
            cache = Settings().models.cache_path  # where `ftaas up` keeps it
            assert cache is not None
            tokenizer_dir = REAL_MODEL_DIR = smollm2.ensure_built(cache)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        if args.job:
            return compare_jobs(args, tokenizer, Path(tmp))
        examples = encode_lines(chats(args.examples), CHAT, tokenizer, 2048).examples
        probe = new_model(tokenizer)
        params = sum(p.numel() for p in probe.parameters())
        # The trainer autocasts to bf16 only where the CPU runs it natively (AVX512-BF16 or AMX); elsewhere
        # bf16 products are emulated and slower than fp32 (measured 0.3 against 90 GFLOP/s on an EPYC
        # without them), so the peak is the dtype the trainer computes in.
        compute = autocast_dtype(DEVICE) or torch.float32
        peak = matmul_peak(compute)
        label = "bf16 autocast" if compute == torch.bfloat16 else "fp32: no native bf16 here"
        results = {}
        ftaas_name = f"ftaas (packing, {label}{', checkpointing' if args.gradient_checkpointing else ''})"
        runners = [(ftaas_name, run_ftaas), ("baseline (transformers.Trainer + peft, fp32, padding)", run_baseline)]
        for name, runner in runners[:1] if args.ftaas_only else runners:
            if DEVICE.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds, tokens, steps = runner(tokenizer, examples, args.batch_size, args.steps, args.warmup,
                                            Path(tmp) / name[:5])
            peak_memory = torch.cuda.max_memory_allocated() if DEVICE.type == "cuda" else None
            assert tokens == sum(sum(step) for step in steps)
            adapter_params = 8 * sum(m.in_features + m.out_features for name, m in probe.named_modules()
                                     if isinstance(m, torch.nn.Linear) and name != "lm_head")
            flops = useful_flops([n for step in steps for n in step], probe, adapter_params)
            results[name] = {"seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds,
                             "mfu": flops / seconds / peak, "peak_memory_bytes": peak_memory}
    ftaas = results[ftaas_name]
    lengths = [len(e.input_ids) for e in examples]
    shape = f"{probe.config.num_hidden_layers} layers, width {probe.config.hidden_size}"
    print(f"\nmodel: {args.model}, {params / 1e6:.1f}M parameters ({shape}); LoRA r=8 on all linear layers")
    print(f"data: {len(examples)} chats, {min(lengths)}-{max(lengths)} tokens (median {sorted(lengths)[len(lengths) // 2]}); "
          f"batch {args.batch_size} examples, {args.steps} timed steps after {args.warmup} warm-up steps")
    print(f"{str(compute).removeprefix('torch.')} matmul peak measured now: {peak / 1e12:.3f} TFLOP/s "
          f"({torch.get_num_threads()} threads)\n")
    print(f"{'trainer':<55} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9}")
    for name, r in results.items():
        memory = f"{r['peak_memory_bytes'] / 2 ** 30:.1f}" if r["peak_memory_bytes"] is not None else "-"
        print(f"{name:<55} {r['tokens_per_second']:>10.0f} {100 * r['mfu']:>6.1f}% {memory:>9}")
    if not args.ftaas_only:
        baseline = results[runners[1][0]]
        ratio = ftaas["tokens_per_second"] / baseline["tokens_per_second"]
        print(f"\nratio ftaas / baseline = {ratio:.2f}x (goal >= 3x: {'met' if ratio >= 3 else 'NOT met'}); "
              f"ftaas MFU {100 * ftaas['mfu']:.1f}% (goal >= 25%: {'met' if ftaas['mfu'] >= 0.25 else 'NOT met'})")
    out = ROOT / ".bench-out"
    out.mkdir(exist_ok=True)
    (out / f"train_throughput-{args.model}.json").write_text(json.dumps(
        {"model": args.model, "peak_flops": peak, "parameters": params, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
