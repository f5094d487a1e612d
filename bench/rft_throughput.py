"""Reinforcement fine-tuning, a whole job: ftaas's GRPO against TRL's `GRPOTrainer`, side by side in one run.

The task of tests/e2e/test_reinforcement.py: "What is a + b?" answered with the bare equation ("2 + 3 = 5"),
rewarded 1 for exactly the right equation, else 0. Both runs take the packaged real model
(SmolLM2-135M-Instruct), the same LoRA (r=8, alpha 16, all linear layers), the same prompts, samples per
prompt, prompts per step, steps, sample length, temperature, learning rate and KL weight, and time the whole
job from the model folder on disk and the JSONL lines to the saved adapter:

* ftaas: what a worker runs for a job (worker.jobs.execution `execute`, less the database and storage):
  encode the prompts, load the model, train with `Trainer` (samples from ftaas's engine over the trainer's
  weights, graded by the python grader in its sandbox), save the adapter;
* TRL: `GRPOTrainer` (its samples from `model.generate`), the reward as an in-process Python function (no
  sandbox), bf16 where this CPU computes bf16 natively (as ftaas's autocast), one update per batch of
  samples (`num_iterations` 1, as ftaas), no validation.

Printed: each side's wall time, its final training reward (mean of the last three steps), and the ratio.

    python bench/rft_throughput.py [--steps 8] [--prompts-per-step 4] [--samples 8] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SYSTEM = "Reply with the equation and its result only. Example:\nUser: What is 2 + 3?\nAssistant: 2 + 3 = 5"
GRADER_SOURCE = (
    "import re\n\n"
    "def grade(sample, item):\n"
    "    equation = r'\\s*%d\\s*\\+\\s*%d\\s*=\\s*%d\\s*\\.?\\s*' % (item['a'], item['b'], item['a'] + item['b'])\n"
    "    return 1.0 if re.fullmatch(equation, sample['output_text']) else 0.0\n")
LEARNING_RATE, BETA, TEMPERATURE, COMPLETION_TOKENS, RANK = 5e-4, 0.04, 1.0, 16, 8


def pairs(count: int) -> list[tuple[int, int]]:
    every = [(a, b) for a in range(2, 13) for b in range(2, 13)]
    random.Random(11).shuffle(every)
    return every[:count]


def rows(count: int) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"What is {a} + {b}?"}],
             "a": a, "b": b} for a, b in pairs(count)]


def reward(text: str, a: int, b: int) -> float:
    return 1.0 if re.fullmatch(rf"\s*{a}\s*\+\s*{b}\s*=\s*{a + b}\s*\.?\s*", text) else 0.0


def run_ftaas(model_dir: Path, data: list[dict[str, Any]], args: argparse.Namespace, work: Path) -> tuple[float, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from contracts.training.spec import AdapterSettings, TrainingSpec
    from graders.grading import GradingContext
    from worker.training.control import Directive
    from worker.training.data import encode_lines
    from worker.training.trainer import Trainer

    rewards: list[float] = []

    class Control:
        def after_step(self, metrics: Any) -> Directive:
            rewards.append(metrics.train_reward_mean)
            return Directive.CONTINUE

        def on_checkpoint(self, *args: Any, **kwargs: Any) -> None:
            pass

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = encode_lines([json.dumps(row) for row in data], "reinforcement", tokenizer, 512).examples
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    spec = TrainingSpec(base_model="smollm2", method="reinforcement", n_epochs=1, batch_size=args.prompts_per_step,
                        learning_rate=LEARNING_RATE, seed=1, adapter=AdapterSettings(r=RANK, alpha=2 * RANK),
                        max_seq_len=512, lr_scheduler="constant", n_checkpoints=1,
                        grader={"type": "python", "name": "equation", "source": GRADER_SOURCE},
                        samples_per_prompt=args.samples, max_completion_tokens=COMPLETION_TOKENS,
                        temperature=TEMPERATURE, kl_beta=BETA)
    trainer = Trainer(spec, model, tokenizer, prompts, [], Control(), work, grading=GradingContext())
    outcome = trainer.run()
    assert outcome.adapter_dir is not None
    shutil.copytree(outcome.adapter_dir, work / "saved", dirs_exist_ok=True)
    return time.perf_counter() - started, sum(rewards[-3:]) / 3


def run_trl(model_dir: Path, data: list[dict[str, Any]], args: argparse.Namespace, work: Path) -> tuple[float, float]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from worker.training.kernels import autocast_dtype

    rewards: list[float] = []

    def equation_reward(completions: list[Any], a: list[int], b: list[int], **_: Any) -> list[float]:
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [reward(text, x, y) for text, x, y in zip(texts, a, b, strict=True)]

    class Rewards(TrainerCallback):
        def on_log(self, _args: Any, _state: Any, _control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
            if logs and "reward" in logs:
                rewards.append(float(logs["reward"]))

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = Dataset.from_list([{"prompt": row["messages"], "a": row["a"], "b": row["b"]} for row in data])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    bf16 = autocast_dtype(torch.device("cpu")) is not None
    config = GRPOConfig(
        output_dir=str(work), max_steps=args.steps, learning_rate=LEARNING_RATE, lr_scheduler_type="constant",
        per_device_train_batch_size=args.prompts_per_step * args.samples, num_generations=args.samples,
        max_completion_length=COMPLETION_TOKENS, temperature=TEMPERATURE, beta=BETA, num_iterations=1,
        use_cpu=True, bf16=bf16, logging_steps=1, report_to=[], save_strategy="no", seed=1,
        dataloader_num_workers=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=equation_reward, args=config,
                          train_dataset=dataset, callbacks=[Rewards()],
                          peft_config=LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    trainer.train()
    trainer.save_model(str(work / "saved"))
    return time.perf_counter() - started, sum(rewards[-3:]) / max(1, len(rewards[-3:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    from basemodels import smollm2
    from contracts.settings import Settings

    model_dir = smollm2.ensure_built(Settings().models.cache_path)
    data = rows(args.steps * args.prompts_per_step)
    results: dict[str, list[tuple[float, float]]] = {"ftaas": [], "trl": []}
    for repeat in range(args.repeats):
        for name, run in (("ftaas", run_ftaas), ("trl", run_trl)):
            with tempfile.TemporaryDirectory() as work:
                seconds, final = run(model_dir, data, args, Path(work))
            results[name].append((seconds, final))
            print(f"repeat {repeat + 1}: {name:5s} {seconds:7.1f} s, final training reward {final:.2f}", flush=True)
    best = {name: min(s for s, _ in runs) for name, runs in results.items()}
    print(f"steps {args.steps}, {args.prompts_per_step} prompts x {args.samples} samples, {COMPLETION_TOKENS} tokens; "
          f"ftaas {best['ftaas']:.1f} s, TRL {best['trl']:.1f} s: ftaas is {best['trl'] / best['ftaas']:.2f}x TRL's speed")


if __name__ == "__main__":
    main()
