"""Adapter merges and compression on a real model: do soups of two fact adapters keep both sets, and at which
density does ComPEFT start losing facts?

Trains two LoRA adapters with "auto" hyperparameters (the job's own trainer, `worker.training`) on disjoint
fact sets (the built-in `designers` suite with two seeds: invented works and designers, trained as
sentences), then builds with ftaas's own operations (`adapters`): linear soup (0.5/0.5), task
arithmetic (1/1), TIES (density 0.5, 1/1), DARE-TIES (density 0.5, 1/1), and ComPEFT compressions of adapter
A at several densities. Every model answers greedily (base + adapter merged in float32, transformers'
`generate`) and is scored with the knowledge evals' `contains` matching: memorization of set A and of set B
(the trained questions), and the general-knowledge probes (`world_knowledge`) the base model answers right.

    python bench/adapter_operations.py [--model smollm2-135m-instruct] [--size 16] [--json out.json]

Results for this repository: docs/adapters.md ("Measured on a real model").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fact_learning import FactSet, answers, correct, parse_setting, train_adapter

from adapters.compress import compress_adapter_dir
from adapters.files import CONFIG, WEIGHTS, load_tensors
from adapters.lora_files import merge_adapters, read_lora, write_lora
from basemodels.loader import BaseModelLoader
from basemodels.registry import BaseModelRegistry
from contracts.settings import PACKAGED_BASE_MODEL, Settings
from evals import builtin

DENSITIES = (0.5, 0.3, 0.2, 0.1, 0.05)


def tuned_model(loader: BaseModelLoader, model_name: str, adapter_dir: Path) -> Any:
    """Base + adapter (dense or ComPEFT-stored), merged in float32."""
    from peft import PeftModel
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as dense:
        (Path(dense) / CONFIG).write_bytes((adapter_dir / CONFIG).read_bytes())
        save_file({k: v.contiguous() for k, v in load_tensors(adapter_dir).items()},
                  str(Path(dense) / WEIGHTS))
        model = PeftModel.from_pretrained(loader.load_model(model_name), dense)
        return model.merge_and_unload().eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=PACKAGED_BASE_MODEL)
    parser.add_argument("--size", type=int, default=16, help="works per fact set")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    settings = Settings()
    loader = BaseModelLoader(BaseModelRegistry(settings.models.sources()), settings.models.cache_path)
    tokenizer = loader.load_tokenizer(args.model)
    sets = {}
    for label, seed in (("A", 5), ("B", 6)):
        items = builtin.generate_suite("designers", size=args.size, seed=seed)
        sets[label] = FactSet(f"designers:{args.size}:seed{seed}", [i for i in items if i.split_id == "memorization"],
                              [i for i in items if i.split_id == "rephrased"])
    assert not {i.prompt for i in sets["A"].memorization} & {i.prompt for i in sets["B"].memorization}
    control = builtin.generate_suite("world_knowledge")
    base = loader.load_model(args.model).eval()
    control_base = correct(control, answers(base, tokenizer, [i.prompt for i in control]))
    del base

    def score(name: str, model: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {"model": name, **(extra or {})}
        for label, facts in sets.items():
            replies = answers(model, tokenizer, [i.prompt for i in facts.memorization])
            row[f"set_{label}"] = sum(correct(facts.memorization, replies)) / len(facts.memorization)
        kept = correct(control, answers(model, tokenizer, [i.prompt for i in control]))
        row["control_kept"] = f"{sum(b and t for b, t in zip(control_base, kept, strict=True))}/{sum(control_base)}"
        print(json.dumps(row), flush=True)
        return row

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ftaas-adapter-bench-") as folder:
        work = Path(folder)
        trained = {label: train_adapter(loader, args.model, tokenizer, facts.training_lines(), parse_setting("auto"),
                                        work / label) for label, facts in sets.items()}
        print(json.dumps({"trained": trained}), flush=True)
        for label in sets:
            rows.append(score(f"parent {label}", tuned_model(loader, args.model, work / label)))
        parents = [read_lora(work / "A"), read_lora(work / "B")]
        template = json.loads((work / "A" / CONFIG).read_text())
        merges = {"linear soup (0.5 / 0.5)": {"weights": [0.5, 0.5], "method": "linear"},
                  "task arithmetic (1 / 1)": {"weights": [1.0, 1.0], "method": "linear"},
                  "TIES (density 0.5, 1 / 1)": {"weights": [1.0, 1.0], "method": "ties", "density": 0.5},
                  "DARE-TIES (density 0.5, 1 / 1)": {"weights": [1.0, 1.0], "method": "dare_ties", "density": 0.5}}
        for index, (name, options) in enumerate(merges.items()):
            weights = options.pop("weights")
            merged = merge_adapters(parents, weights, **options)
            target = work / f"merge{index}"
            write_lora(target, merged.modules, template=template)
            rows.append(score(name, tuned_model(loader, args.model, target),
                              {"truncation_error": round(merged.max_error, 4)}))
        for density in DENSITIES:
            target = work / f"compeft{density}"
            ratio = compress_adapter_dir(work / "A", target, density=density)
            rows.append(score(f"parent A, ComPEFT density {density}", tuned_model(loader, args.model, target),
                              {"stored_ratio": round(ratio, 1)}))
    print(f"\nfact sets: {args.size} invented works each (designers, seeds 5 and 6); model {args.model}; "
          f"auto resolved to {trained['A']}")
    print("\n| model | set A | set B | control kept | note |\n|---|---|---|---|---|")
    for row in rows:
        note = (f"stored {row['stored_ratio']}x smaller" if "stored_ratio" in row else
                f"max truncation error {row['truncation_error']}" if "truncation_error" in row else "")
        print(f"| {row['model']} | {row['set_A']:.2f} | {row['set_B']:.2f} | {row['control_kept']} | {note} |")
    if args.json:
        args.json.write_text(json.dumps({"trained": trained, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
