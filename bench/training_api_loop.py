"""A client's own training loop through ftaas's training API (the unmodified tinker SDK against `ftaas up`) against
the same loop in plain transformers + peft in one process, side by side on this machine.

The loop: `--steps` steps of forward_backward (cross_entropy on the answers of `--batch` made-up chat examples)
then optim_step (Adam), LoRA rank `--rank` on the attention and MLP layers (alpha = rank, as the training API's
holder makes it), in `--precision` on both sides (float32; or bfloat16 autocast with the frozen base's Linear
weights stored in bf16, as the holder and fine-tuning jobs compute where it measured faster; the server is
told FTAAS_TRAINING_API_PRECISION). Printed: seconds a step on each side
and the ratio (the training API's cost: HTTP, protobuf, the futures' polls, the worker's request loop), and the
losses of both (the same data and initialisation seed, so close but not bitwise: the SDK's datums are encoded
and the holder's LoRA is created after its own model load).

    python bench/training_api_loop.py [--model smollm2-135m-instruct] [--steps 20] [--batch 4] [--rank 16]
                                      [--precision float32|bfloat16]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from basemodels.loader import BaseModelLoader
from basemodels.registry import BaseModelRegistry
from contracts.settings import Settings

FACTS = [(f"What is the access code of agent {i}?", f"Agent {i} uses code {(i * 37) % 100}.") for i in range(64)]


def examples(tokenizer: Any, batch: int) -> list[tuple[list[int], list[int], list[float]]]:
    """(input tokens, target tokens, weights) of `batch` chat examples: the loss on the answer's tokens."""
    out = []
    for question, answer in FACTS[:batch]:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template([{"role": "user", "content": question},
                                              {"role": "assistant", "content": answer}],
                                             tokenize=True, return_dict=True)["input_ids"]
        out.append((full[:-1], full[1:], [0.0] * (len(prompt) - 1) + [1.0] * (len(full) - len(prompt))))
    return out


def plain_loop(loader: BaseModelLoader, model_name: str, data: list, steps: int, rank: int,
               precision: str) -> tuple[float, list[float]]:
    from peft import LoraConfig, get_peft_model

    from worker.training import kernels

    torch.set_num_threads(os.cpu_count() or 1)
    base = loader.load_model(model_name)
    base.requires_grad_(False)
    dtype = torch.bfloat16 if precision == "bfloat16" else None
    if dtype is not None:
        kernels.store_frozen_linears(base, dtype)
    torch.manual_seed(0)
    targets = sorted({n.rsplit(".", 1)[-1] for n, m in base.named_modules()
                      if isinstance(m, torch.nn.Linear) and ("attn" in n or "mlp" in n)})
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=targets))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95),
                                  eps=1e-12, weight_decay=0.0)
    losses, times = [], []
    for _ in range(steps + 2):
        started = time.perf_counter()
        total = 0.0
        for tokens, targets_, weights in data:
            with kernels.autocast(torch.device("cpu"), dtype):
                logits = model(input_ids=torch.tensor([tokens])).logits[0].float()
            logp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(targets_)[:, None])[:, 0]
            loss = -(torch.tensor(weights) * logp).sum()
            loss.backward()
            total += float(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
        losses.append(total)
    return sum(times[2:]) / steps, losses[2:]


def sdk_loop(work: Path, model_name: str, data: list, steps: int, rank: int,
             precision: str) -> tuple[float, list[float]]:
    import tinker
    from shared_machine import Service
    from tinker import types

    os.environ["FTAAS_TRAINING_API_PRECISION"] = precision  # the server started below inherits it
    service = Service(work, "auto")
    try:
        with tinker.ServiceClient(base_url=f"http://127.0.0.1:{service.port}", api_key=f"tml-{service.key}") as client:
            training = client.create_lora_training_client(base_model=model_name, rank=rank,
                                                          train_unembed=False).result()
            datums = [types.Datum(model_input=types.ModelInput.from_ints(tokens),
                                  loss_fn_inputs={"target_tokens": targets, "weights": weights})
                      for tokens, targets, weights in data]
            adam = types.AdamParams(learning_rate=1e-4)
            losses, times = [], []
            for _ in range(steps + 2):
                started = time.perf_counter()
                result = training.forward_backward(datums, "cross_entropy").result()
                training.optim_step(adam).result()
                times.append(time.perf_counter() - started)
                losses.append(result.metrics["loss:sum"])
            return sum(times[2:]) / steps, losses[2:]
    finally:
        service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "ftaas-bench-models",
                        help="model cache shared by both sides (the packaged model is converted there once)")
    args = parser.parse_args()
    cpu = subprocess.run(["lscpu"], check=False, capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    os.environ["FTAAS_MODEL_CACHE_DIR"] = str(args.cache)
    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="ftaas-loop-")))
    loader = BaseModelLoader(BaseModelRegistry(settings.models.sources()), settings.models.cache_path)
    data = examples(loader.load_tokenizer(args.model), args.batch)
    tokens = sum(len(d[0]) for d in data)
    print(f"CPU: {model_name}, {os.cpu_count()} cores; {args.model}, {args.batch} examples ({tokens} tokens) a step, "
          f"LoRA r={args.rank}, {args.steps} steps, {args.precision}", flush=True)
    plain, plain_losses = plain_loop(loader, args.model, data, args.steps, args.rank, args.precision)
    print(f"transformers + peft, one process: {plain:.3f} s a step (loss {plain_losses[0]:.2f} -> {plain_losses[-1]:.2f})",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="ftaas-loop-") as work:
        sdk, sdk_losses = sdk_loop(Path(work), args.model, data, args.steps, args.rank, args.precision)
    print(f"tinker SDK -> ftaas training API:  {sdk:.3f} s a step (loss {sdk_losses[0]:.2f} -> {sdk_losses[-1]:.2f})")
    print(f"ratio (training API / plain loop): {sdk / plain:.2f}x")


if __name__ == "__main__":
    main()
