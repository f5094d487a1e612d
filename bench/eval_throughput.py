"""Knowledge-eval throughput: the batched runner vs one request at a time, side by side in one run.

On the demo model (`ftaas-tiny`, built offline) with one random LoRA adapter (r=8, all linear layers)
registered as a fine-tuned model, a built-in suite of about 500 items (fictional_people with 24 people:
144 memorization + 144 rephrased + 144 yes/no inference + 72 comparison questions) is evaluated end to
end: every item answered by the base and the tuned model (greedy, the spec's decoding), scored, reported.

  (a) batched: every question submitted at once; the serving engine batches them continuously;
  (b) baseline: the same runner with one request in flight at a time (what a loop over a chat endpoint does).

Prints items/s (items fully evaluated: both answers and the verdicts) for each, the ratio a/b, and checks
that both runs produced identical responses and verdicts (batching must not change a greedy answer).

    python bench/eval_throughput.py [--people 24] [--max-new-tokens 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup(directory: Path) -> tuple[Any, Any, str]:
    """An InferenceService over a migrated SQLite database and a local store, with one registered adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers.utils import logging as hf_logging

    from api.app import build_services
    from basemodels.loader import BaseModelLoader
    from contracts.settings import DEMO_BASE_MODEL, Settings
    from db import migrate, models, projects
    from serving.service import InferenceService
    from storage.manifest import publish_directory

    hf_logging.set_verbosity_error()
    settings = Settings(data_dir=directory / "data", model_cache_dir=directory / "models")
    settings.data_dir.mkdir(parents=True)
    services = build_services(settings)
    migrate.upgrade(services.db)
    with services.db.write() as session:
        project = projects.ensure_project(session, "bench")
        principal = projects.Principal(project_id=project.id, project_name="bench", api_key_id="")
    loader = BaseModelLoader(services.registry, settings.models.cache_path)
    torch.manual_seed(7)
    peft_model = get_peft_model(loader.load_model(DEMO_BASE_MODEL), LoraConfig(
        r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    adapter_dir = directory / "adapter"
    peft_model.save_pretrained(adapter_dir)
    uid = uuid.uuid4().hex[:12]
    published = publish_directory(services.store, f"models/{uid}/", adapter_dir, {"kind": "adapter"})
    name = models.fine_tuned_model_name(DEMO_BASE_MODEL, "bench", "eval", uid[:8])
    with services.db.write() as session:
        models.add(session, name=name, uid=uid, project_id=project.id, job_id=None, base_model=DEMO_BASE_MODEL,
                   storage_prefix=published.prefix, manifest_sha256=published.manifest_sha256)
    inference = InferenceService(services.db, services.store, services.registry, loader, settings.serving)
    return inference, principal, name


def run(inference: Any, principal: Any, tuned: str, spec: Any, items: list, controls: list,
        concurrency: int | None) -> tuple[float, dict, list]:
    from contracts.settings import DEMO_BASE_MODEL
    from evals.run import EvalRun
    from worker.knowledge_evals.engine import EngineGenerator

    generator = EngineGenerator(inference, principal, concurrency=concurrency)
    start = time.perf_counter()
    report, lines = EvalRun(spec, items, controls, generator, base_model=DEMO_BASE_MODEL, tuned_model=tuned).execute()
    return time.perf_counter() - start, report, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from evals.builtin import generate_suite
    from evals.sources import CallableResolver, load_items, read_builtin
    from evals.spec import suite_spec, validate_spec

    uri = f"builtin://fictional_people?seed=0&size={args.people}"
    document = suite_spec([(uri, generate_suite("fictional_people", seed=0, size=args.people))], name="bench")
    document["generation"]["max_new_tokens"] = args.max_new_tokens
    spec = validate_spec(document)
    items, controls = load_items(spec, CallableResolver({"builtin": read_builtin}))
    with tempfile.TemporaryDirectory() as tmp:
        inference, principal, tuned = setup(Path(tmp))
        try:
            # Warm-up: load the base model and the adapter, so neither run pays for it.
            run(inference, principal, tuned, spec, items[:4], [], None)
            batched_s, batched_report, batched_lines = run(inference, principal, tuned, spec, items, controls, None)
            single_s, _, single_lines = run(inference, principal, tuned, spec, items, controls, 1)
        finally:
            inference.close()
    n = len(items) + len(controls)
    same = [(a["base"], a["tuned"]) for a in batched_lines] == [(b["base"], b["tuned"]) for b in single_lines]
    result = {
        "items": n, "generations": 2 * n, "max_new_tokens": args.max_new_tokens,
        "batched_seconds": round(batched_s, 2), "batched_items_per_second": round(n / batched_s, 2),
        "one_at_a_time_seconds": round(single_s, 2), "one_at_a_time_items_per_second": round(n / single_s, 2),
        "ratio": round(single_s / batched_s, 2), "identical_responses_and_verdicts": same,
        "memorization_tuned": batched_report["summary"]["memorization"]["mean_tuned"],
    }
    print(f"suite: {n} items ({2 * n} generations, <= {args.max_new_tokens} tokens each)")
    print(f"(a) batched runner        {result['batched_items_per_second']:8.2f} items/s  ({batched_s:.1f} s)")
    print(f"(b) one request at a time {result['one_at_a_time_items_per_second']:8.2f} items/s  ({single_s:.1f} s)")
    print(f"a/b = {result['ratio']:.2f}x   identical responses and verdicts: {same}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if not same:
        sys.exit("batched and one-at-a-time runs disagree")


if __name__ == "__main__":
    main()
