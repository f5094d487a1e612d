"""Run an eval: generate every answer of the base and the tuned model, score, report.

Generation goes through a `Generator`: in a worker, the serving engine's own code path
(worker.knowledge_evals.engine.EngineGenerator); in a test, anything that answers conversations.
`EvalRun.execute()` is the whole run, callable from a Celery task, a job's final phase, the CLI or a test:

    load items -> base answers (if the spec evaluates the base model) -> tuned answers
    -> scores (LLM judge requests batched too) -> report + per-item records
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from evals.items import EvalItem
from evals.report import Answer, ItemResult, assess, build_report, item_lines
from evals.scoring import Scorer, build_scorers
from evals.spec import EvalSpec

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


class Generator(Protocol):
    """Answers conversations with a model, greedily or as the decoding settings say."""

    def generate(self, model: str, conversations: Sequence[list[dict[str, str]]], *, max_new_tokens: int,
                 temperature: float, top_p: float, seed: int | None, progress: Progress | None = None) -> list[str]: ...


def conversation(item: EvalItem, system_prompt: str | None) -> list[dict[str, str]]:
    """FineTuneBench sends the prompt as the only (user) turn; a system prompt only when the spec has one."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": item.prompt}]


@dataclass
class EvalRun:
    """One evaluation: `tuned_model` against `base_model` under `spec` (see the module docstring)."""

    spec: EvalSpec
    items: list[EvalItem]
    controls: list[EvalItem]
    generator: Generator
    base_model: str
    tuned_model: str
    judge: Any = None
    run_id: str = "local"
    tuned_model_info: Mapping[str, Any] = field(default_factory=dict)
    #: Whether the base model is answered too (off when the evaluated model is itself the base model).
    evaluate_base: bool = True
    #: Called with the number of generations finished (progress bars, the eval's progress field).
    progress: Progress | None = None

    @property
    def total_generations(self) -> int:
        questions = len(self.items) + len(self.controls)
        return questions * (2 if self._with_base else 1)

    @property
    def _with_base(self) -> bool:
        return self.evaluate_base and bool(self.spec.baseline.get("evaluate_base_model"))

    def _answers(self, model: str, questions: Sequence[EvalItem]) -> list[str]:
        generation = self.spec.generation
        system_prompt = generation.get("system_prompt")
        return self.generator.generate(
            model, [conversation(item, system_prompt) for item in questions],
            max_new_tokens=int(generation["max_new_tokens"]), temperature=float(generation["temperature"]),
            top_p=float(generation.get("top_p", 1.0)), seed=generation.get("seed"), progress=self.progress)

    def _score(self, questions: Sequence[EvalItem], responses: Sequence[str], scorers: Mapping[str, Scorer]
               ) -> list[Answer]:
        """Score each item with its split's scorer (batched per scorer), in the items' order."""
        scorer_of = {(d["id"], s["id"]): s["scorer"] for d in self.spec.datasets for s in d["splits"]}
        scorer_of.update({(c["id"], c["id"]): c["scorer"] for c in self.spec.controls})
        answers: list[Answer | None] = [None] * len(questions)
        by_scorer: dict[str, list[int]] = {}
        for index, item in enumerate(questions):
            by_scorer.setdefault(scorer_of[(item.dataset_id, item.split_id)], []).append(index)
        for name, indexes in by_scorer.items():
            scored = assess([questions[i] for i in indexes], [responses[i] for i in indexes], scorers[name],
                            self.spec.scorers[name])
            for index, answer in zip(indexes, scored, strict=True):
                answers[index] = answer
        scored_all = [answer for answer in answers if answer is not None]
        assert len(scored_all) == len(questions)  # every item's split has a scorer (the spec is validated)
        return scored_all

    def execute(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The report and the per-item records."""
        scorers = build_scorers(self.spec.scorers, judge=self.judge)
        questions = [*self.items, *self.controls]
        warnings: list[str] = []
        base_answers: list[Answer | None] = [None] * len(questions)
        if self._with_base:
            base_answers = list(self._score(questions, self._answers(self.base_model, questions), scorers))
        elif self.spec.baseline.get("evaluate_base_model"):
            warnings.append(f"The evaluated model is the base model {self.base_model}: no separate baseline run.")
        tuned_answers = self._score(questions, self._answers(self.tuned_model, questions), scorers)
        results = [ItemResult(item, tuned, base) for item, tuned, base in
                   zip(questions, tuned_answers, base_answers, strict=True)]
        split_results, control_results = results[:len(self.items)], results[len(self.items):]
        report = build_report(
            self.spec, split_results, control_results, run_id=self.run_id,
            created_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            base_model={"id": self.base_model, "adapter_uri": None},
            tuned_model={"id": self.tuned_model, **self.tuned_model_info},
            scorers=scorers, warnings=warnings)
        return report, item_lines(split_results, control_results)
