"""SPIN against plain SFT on the same data and the same number of passes, on the packaged real model.

The task: "What is a + b?" answered with the bare equation ("7 + 5 = 12"), taught from supervised chat lines
(the answers are the targets here, unlike the reinforcement task). Three models are scored on held-out pairs
the training never saw, greedy, exact equation: the base (SmolLM2-135M-Instruct), an SFT LoRA trained for
`rounds x epochs` passes, and a SPIN LoRA trained for `rounds` rounds of `epochs` passes each (the
model's own answers as rejected, ftaas's `self_play` option). Each side also reports its wall time. Run at
the SFT learning rate ftaas's "auto" picks for small files (1e-3) and at the rate SPIN's "auto" picks
(2e-4, DPO's), so neither is compared at the other's setting only.

    python bench/spin_measure.py [--train 24] [--held-out 24] [--rounds 2] [--epochs 2] [--temperature 1]
                                 [--learning-rates 1e-3,2e-4]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SYSTEM = "Reply with the equation and its result only."


def pairs(count: int, skip: int = 0) -> list[tuple[int, int]]:
    every = [(a, b) for a in range(2, 30) for b in range(2, 30)]
    random.Random(7).shuffle(every)
    return every[skip:skip + count]


def chat(a: int, b: int) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"What is {a} + {b}?"},
                         {"role": "assistant", "content": f"{a} + {b} = {a + b}"}]}


def accuracy(model: Any, tokenizer: Any, held_out: list[tuple[int, int]]) -> float:
    from worker.training.kernels import autocast_dtype

    right = 0
    model.eval()
    model.config._attn_implementation = "sdpa"  # the SFT trainer's packed-row kernel takes packed rows only
    for a, b in held_out:
        messages = chat(a, b)["messages"][:2]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        # autocast: the SFT trainer keeps the frozen base in bf16 where the CPU computes bf16 natively
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_dtype(torch.device("cpu")) is not None):
            out = model.generate(**ids, max_new_tokens=16, do_sample=False)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        right += bool(re.fullmatch(rf"\s*{a}\s*\+\s*{b}\s*=\s*{a + b}\s*\.?\s*", text))
    return right / len(held_out)


def train(model_dir: Path, lines: list[str], *, rounds: int, epochs: int, learning_rate: float,
          self_play: bool, temperature: float, sft_epochs: int) -> tuple[Any, Any, float, list[float]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from contracts.training.spec import AdapterSettings, TrainingSpec
    from worker.training.control import Directive
    from worker.training.data import encode_lines
    from worker.training.trainer import Trainer

    matches: list[float] = []

    class Control:
        def after_step(self, metrics: Any) -> Directive:
            if metrics.self_play_matches is not None and (not matches or metrics.self_play_round > len(matches)):
                matches.append(metrics.self_play_matches)
            return Directive.CONTINUE

        def on_checkpoint(self, *args: Any, **kwargs: Any) -> None:
            pass

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = encode_lines(lines, "chat", tokenizer, 512).examples
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    spec = TrainingSpec(base_model="smollm2", method="supervised", n_epochs=sft_epochs + rounds * epochs, batch_size=4,
                        learning_rate=learning_rate, seed=1, adapter=AdapterSettings(r=8, alpha=16),
                        lr_scheduler="linear", n_checkpoints=1, packing=not self_play,
                        self_play_iterations=rounds if self_play else 0, beta=0.1,
                        self_play_temperature=temperature, self_play_sft_epochs=sft_epochs if self_play else 0)
    with tempfile.TemporaryDirectory() as work:
        trainer = Trainer(spec, model, tokenizer, examples, [], Control(), Path(work))
        trainer.run()
    return trainer.model, tokenizer, time.perf_counter() - started, matches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=24)
    parser.add_argument("--held-out", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=1.0, help="SPIN's sampling temperature (0: greedy)")
    parser.add_argument("--learning-rates", default="1e-3,2e-4")
    parser.add_argument("--sft-epochs", type=int, default=0,
                        help="supervised passes before SPIN's rounds (the SFT side trains as many more)")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from basemodels import smollm2
    from contracts.settings import Settings

    model_dir = smollm2.ensure_built(Settings().models.cache_path)
    lines = [json.dumps(chat(a, b)) for a, b in pairs(args.train)]
    held_out = pairs(args.held_out, skip=args.train)
    base = accuracy(AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir), held_out)
    print(f"{args.train} training lines, {args.held_out} held-out; base: {base:.2f}", flush=True)
    for learning_rate in map(float, args.learning_rates.split(",")):
        for self_play in (False, True):
            model, tokenizer, seconds, matches = train(model_dir, lines, rounds=args.rounds, epochs=args.epochs,
                                                       learning_rate=learning_rate, self_play=self_play,
                                                       temperature=args.temperature, sft_epochs=args.sft_epochs)
            sft = f"SFT {args.sft_epochs} + " if args.sft_epochs else ""
            name = (f"{sft}SPIN {args.rounds} rounds x {args.epochs} epochs" if self_play
                    else f"SFT {args.sft_epochs + args.rounds * args.epochs} epochs")
            extra = f", own answers equal to the data's per round: {matches}" if self_play else ""
            print(f"lr {learning_rate:g}: {name:28s} held-out {accuracy(model, tokenizer, held_out):.2f} "
                  f"({seconds:.0f} s{extra})", flush=True)


if __name__ == "__main__":
    main()
