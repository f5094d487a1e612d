"""Does a fine-tune learn a fact file? Hyperparameters ("auto" or fixed) against memorization, rephrased
questions and forgetting, on a real base model, in one process.

For each fact set and each hyperparameter setting it trains a LoRA adapter with the ftaas trainer (the job's
own code: `worker.training`), then answers greedily with the base model plus the adapter (merged, float32,
as the serving engine computes it) and scores with the knowledge evals' `contains` matching:

* memorization: the trained questions, verbatim;
* rephrased: the same facts asked another way (never trained on);
* control: general-knowledge probes (the built-in `world_knowledge` suite) that the *base* model answers right;
  "kept" counts those the tuned model still answers right.

Fact sets: `designers:N` (built-in designers: N invented works, trained as sentences), `people:N`
(built-in fictional_people, N people, 6 facts each, one-word answers), `renames:N` (api_renames),
`events:N` (dated_events), `ftb-people` (FineTuneBench's fictional people, read from
../shared/data/finetunebench; never copied). Settings: `auto`, or `e=EPOCHS,b=BATCH,lr=MULTIPLIER` with
any of the three left out meaning "auto" for it.

    python bench/fact_learning.py --facts people:4 people:8 --settings auto e=10,lr=5 [--json out.json]

Results for this repository are in docs/training.md ("How auto was chosen").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.files import CONFIG, WEIGHTS  # noqa: E402
from basemodels.loader import BaseModelLoader  # noqa: E402
from basemodels.registry import BaseModelRegistry  # noqa: E402
from contracts.files.formats import CHAT  # noqa: E402
from contracts.settings import Settings  # noqa: E402
from contracts.training.spec import Method, TrainingSpec, resolve_hyperparameters  # noqa: E402
from evals import builtin  # noqa: E402
from evals.items import EvalItem  # noqa: E402
from evals.scoring import answer_matches  # noqa: E402
from evals.spec import DEFAULT_NORMALIZE  # noqa: E402
from worker.training.data import encode_lines  # noqa: E402
from worker.training.rehearsal import rehearsal_examples  # noqa: E402
from worker.training.trainer import Trainer  # noqa: E402

FINETUNEBENCH = ROOT.parent / "shared" / "data" / "finetunebench"


@dataclass
class FactSet:
    name: str
    memorization: list[EvalItem]
    rephrased: list[EvalItem]

    def training_lines(self) -> list[str]:
        return builtin.training_file(self.memorization).decode().splitlines()


def fact_set(name: str) -> FactSet:
    kind, _, size = name.partition(":")
    if kind == "ftb-people":
        from evals.finetunebench import import_finetunebench

        items = import_finetunebench(FINETUNEBENCH, datasets=["fictional_people"])["fictional_people"]
    else:
        suite = {"people": "fictional_people", "renames": "api_renames", "events": "dated_events",
                 "designers": "designers"}[kind]
        items = builtin.generate_suite(suite, size=int(size))
    return FactSet(name, [i for i in items if i.split_id == "memorization"],
                   [i for i in items if i.split_id == "rephrased"])


def answers(model: Any, tokenizer: Any, prompts: list[str], *, batch: int = 32, max_new_tokens: int = 24) -> list[str]:
    """Greedy replies, batched with left padding."""
    tokenizer.padding_side = "left"
    replies: list[str] = []
    for start in range(0, len(prompts), batch):
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts[start:start + batch]]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        replies += tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
    return replies


def correct(items: list[EvalItem], replies: list[str]) -> list[bool]:
    return [answer_matches(reply, item.reference, DEFAULT_NORMALIZE) for item, reply in zip(items, replies, strict=True)]


def parse_setting(text: str) -> dict[str, Any]:
    """`auto` or `e=EPOCHS,b=BATCH,lr=MULTIPLIER,s=0|1,k=0|1,r=RANK,t=attn|mlp` (s: stop_when_learned; k:
    rehearsal; r, t: the LoRA
    rank and target modules) -> the method's supervised section."""
    hyper: dict[str, Any] = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    section: dict[str, Any] = {"hyperparameters": hyper}
    if text == "auto":
        return section
    keys = {"e": "n_epochs", "b": "batch_size", "lr": "learning_rate_multiplier"}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key == "s":
            section["stop_when_learned"] = value == "1"
        elif key == "k":
            section["rehearsal"] = value == "1"
        elif key == "r":
            section.setdefault("adapter", {})["r"] = int(value)
        elif key == "t":
            modules = {"attn": ["q_proj", "k_proj", "v_proj", "o_proj"], "mlp": ["gate_proj", "up_proj", "down_proj"]}
            section.setdefault("adapter", {})["target_modules"] = modules[value]
        else:
            hyper[keys[key]] = float(value) if key == "lr" else int(value)
    return section


def train_adapter(loader: BaseModelLoader, model_name: str, tokenizer: Any, lines: list[str],
                  section: dict[str, Any], target: Path) -> dict[str, Any]:
    """Train a LoRA adapter on chat `lines` with the job's own trainer and the method's supervised `section`
    (`parse_setting`), as a job would resolve it; its files go to `target`. Returns what ran."""
    method = Method.model_validate({"type": "supervised", "supervised": section})
    resolved = resolve_hyperparameters(method, len(lines))
    spec = TrainingSpec.for_job(base_model=model_name, method=method.to_json(resolved, data_format=CHAT),
                                hyperparameters=resolved, seed=0)
    encoded = encode_lines(lines, CHAT, tokenizer, spec.max_seq_len)
    started = time.perf_counter()
    model = loader.load_model(model_name)
    rehearsed = rehearsal_examples(model, tokenizer, spec.max_seq_len) if spec.rehearsal else []
    with tempfile.TemporaryDirectory() as work:
        outcome = Trainer(spec, model, tokenizer, encoded.examples, [], None, Path(work), rehearsal=rehearsed).run()
        target.mkdir(parents=True)
        for name in (CONFIG, WEIGHTS):
            (target / name).write_bytes((outcome.adapter_dir / name).read_bytes())
    return {"examples": len(lines), "resolved": {**resolved, "learning_rate": spec.learning_rate},
            "steps": outcome.step, "seconds": round(time.perf_counter() - started, 1),
            "learned_at_epoch": outcome.learned_at_epoch, "rehearsal": len(rehearsed),
            "final_train_accuracy": round(outcome.final_train_accuracy or 0.0, 3)}


def run(model_name: str, facts: list[str], settings_list: list[str], data_dir: Path) -> list[dict[str, Any]]:
    settings = Settings(data_dir=data_dir)
    loader = BaseModelLoader(BaseModelRegistry(settings.models.sources()), settings.models.cache_path)
    tokenizer = loader.load_tokenizer(model_name)
    base = loader.load_model(model_name).eval()
    control = builtin.generate_suite("world_knowledge")
    control_base = correct(control, answers(base, tokenizer, [i.prompt for i in control]))
    rows = []
    for fact_name in facts:
        facts_ = fact_set(fact_name)
        base_mem = sum(correct(facts_.memorization, answers(base, tokenizer, [i.prompt for i in facts_.memorization])))
        for setting in settings_list:
            with tempfile.TemporaryDirectory() as work:
                trained = train_adapter(loader, model_name, tokenizer, facts_.training_lines(),
                                        parse_setting(setting), Path(work) / "adapter")
                from peft import PeftModel

                tuned = PeftModel.from_pretrained(loader.load_model(model_name), str(Path(work) / "adapter"))
                tuned = tuned.merge_and_unload().eval()
            mem = correct(facts_.memorization, answers(tuned, tokenizer, [i.prompt for i in facts_.memorization]))
            reph = correct(facts_.rephrased, answers(tuned, tokenizer, [i.prompt for i in facts_.rephrased]))
            ctl_replies = answers(tuned, tokenizer, [i.prompt for i in control])
            ctl = correct(control, ctl_replies)
            kept = sum(1 for b, t in zip(control_base, ctl, strict=True) if b and t)
            row = {
                "facts": fact_name, "examples": trained["examples"], "setting": setting,
                "resolved": trained["resolved"], "steps": trained["steps"], "train_seconds": trained["seconds"],
                "learned_at_epoch": trained["learned_at_epoch"], "rehearsal": trained["rehearsal"],
                "final_train_accuracy": trained["final_train_accuracy"],
                "base_memorization": base_mem / len(mem),
                "memorization": sum(mem) / len(mem),
                "rephrased": sum(reph) / max(1, len(reph)),
                "control_kept": f"{kept}/{sum(control_base)}",
                "control_kept_fraction": kept / max(1, sum(control_base)),
                "control_lost": [f"{item.prompt} -> {reply[:60]!r}" for item, b, t, reply in
                                 zip(control, control_base, ctl, ctl_replies, strict=True) if b and not t],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--facts", nargs="+", default=["people:4"])
    parser.add_argument("--settings", nargs="+", default=["auto"])
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "ftaas-bench")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = run(args.model, args.facts, args.settings, args.data_dir)
    print("\n| facts | examples | setting | epochs | batch | lr | steps | train s | final acc | mem | rephrased | control kept |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        h = r["resolved"]
        print(f"| {r['facts']} | {r['examples']} | {r['setting']} | {h['n_epochs']} | {h['batch_size']} | "
              f"{h['learning_rate']:.0e} | {r['steps']}{' (learned)' if r['learned_at_epoch'] else ''} | "
              f"{r['train_seconds']} | {r['final_train_accuracy']:.3f} | {r['memorization']:.2f} | "
              f"{r['rephrased']:.2f} | {r['control_kept']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
