"""A comparison run as a knowledge eval: the evaluated model (the copy) and an original answer the same held-out
prompts, and evals.comparison measures how alike they are.

The original's answers come from the spec's reference file (each line's last assistant turn) or, with a
`reference_model`, from that model of the project, answered by the same in-process engine. Both answer greedily
with the spec's token limit, so a run is reproducible. A judge, when the spec names one, is the knowledge
evals' judge: the external endpoint when FTAAS_EVAL_JUDGE_BASE_URL is set, else ftaas's own engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from evals.comparison import REPORT_OBJECT, ReferenceItem, compare, reference_items
from worker.knowledge_evals.engine import EngineGenerator


def held_out_items(document: dict[str, Any], reference_content: bytes) -> list[ReferenceItem]:
    return reference_items(reference_content, with_answers=document.get("reference_model") is None,
                           param="comparison.reference_file")


def generations(document: dict[str, Any], items: list[ReferenceItem]) -> int:
    return len(items) * (2 if document.get("reference_model") else 1)


def run_comparison(generator: EngineGenerator, judge: Any, document: dict[str, Any], items: list[ReferenceItem], *,
                   eval_id: str, model: str, progress: Callable[[int], None]) -> tuple[dict[str, Any],
                                                                                      list[dict[str, Any]]]:
    """(report, per-item records) of comparing `model` with the spec's original."""
    reference_model = document.get("reference_model")
    requests = [item.request for item in items]
    decoding = {"max_new_tokens": int(document["max_new_tokens"]), "temperature": float(document["temperature"]),
                "seed": int(document["seed"])}
    started = time.monotonic()
    if reference_model:
        references = generator.answer(reference_model, requests, progress=progress, **decoding)
    else:
        references = [item.answer or {} for item in items]
    candidates = generator.answer(model, requests, progress=progress, **decoding)
    judge_model = document.get("judge_model")
    asked = None
    if judge_model:
        def asked(prompts: list[tuple[str, str]]) -> list[str]:
            return judge.complete_many(judge_model, prompts, temperature=0.0, max_tokens=4)

    result = compare(requests, references, candidates, judge=asked, seed=int(document["seed"]))
    report = {"object": REPORT_OBJECT, "run_id": eval_id, "created_at": int(time.time()),
              "models": {"candidate": model,
                         "reference": reference_model or f"the answers in {document['reference_file']}"},
              "reference_file": document["reference_file"], "judge_model": judge_model,
              "generation": {k: document[k] for k in ("max_new_tokens", "temperature", "seed")},
              "summary": result["summary"], "seconds": round(time.monotonic() - started, 3)}
    return report, result["items"]
