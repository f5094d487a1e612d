"""Run an eval: generate every answer of the base and the tuned model, score, report.

Generation goes through the serving engine's own code path (`serving.service.InferenceService`: the same
chat template, tokenization, continuous batching, stop handling and detokenization that
`/v1/chat/completions` uses), with the spec's decoding settings for both models. Requests are submitted
together and the engine batches them; `concurrency=1` submits one at a time (the benchmark's baseline).

`EvalRun.execute()` is the whole run, callable from a Celery task, a job's final phase, the CLI or a test:

    load items -> base answers (if the spec evaluates the base model) -> tuned answers
    -> scores (LLM judge requests batched too) -> report + per-item records
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from contracts.errors import InvalidRequest, Overloaded
from contracts.evals.items import EvalItem
from contracts.evals.scoring import Scorer, build_scorers
from contracts.evals.spec import EvalSpec
from worker.evals.report import Answer, ItemResult, assess, build_report, item_lines

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


class Generator(Protocol):
    """Answers conversations with a model, greedily or as the decoding settings say."""

    def generate(self, model: str, conversations: Sequence[list[dict[str, str]]], *, max_new_tokens: int,
                 temperature: float, top_p: float, seed: int | None, progress: Progress | None = None) -> list[str]: ...


class EngineGenerator:
    """Generation through `InferenceService` in this process, on behalf of `principal`'s project.

    `model` may be a base model, an `ft:` model or a checkpoint of that project, or a `ModelOverride`
    registered with `override()` (a job's just-trained adapter, before its model row exists). A base model
    whose family the engine cannot compute, or an adapter type it cannot batch (IA3, prefix tuning), is
    answered by `serving.reference.ReferenceGenerator` instead (slower; the same greedy answers up to
    rounding).
    Runs its asyncio loop on a thread of its own: the serving code sets the calling thread's torch
    threads to one (see serving.engine.single_threaded_torch), which must not leak into a trainer.
    """

    def __init__(self, inference: Any, principal: Any, *, concurrency: int | None = None) -> None:
        self.inference = inference
        self.principal = principal
        # Two batches in flight by default: the engine always has the next sequences waiting to join, and
        # no request waits in the queue long enough to meet the serving request deadline.
        self.concurrency = concurrency or 2 * inference.settings.serving_max_batch
        self._overrides: dict[str, Any] = {}
        self._reference: Any = None

    def override(self, name: str, resolved: Any) -> None:
        self._overrides[name] = resolved

    def generate(self, model: str, conversations: Sequence[list[dict[str, str]]], *, max_new_tokens: int,
                 temperature: float, top_p: float = 1.0, seed: int | None = None,
                 progress: Progress | None = None) -> list[str]:
        resolved = self._overrides.get(model) or self.inference.resolve(self.principal, model)
        if not self.inference.serves(resolved.base_model):
            # A family the batched engine cannot compute: transformers' own generate answers instead.
            return self._reference_answers(resolved, conversations, max_new_tokens=max_new_tokens,
                                           temperature=temperature, top_p=top_p, seed=seed, progress=progress)
        try:
            return self._engine_answers(resolved, model, conversations, max_new_tokens=max_new_tokens,
                                        temperature=temperature, top_p=top_p, seed=seed, progress=progress)
        except InvalidRequest as exc:
            if exc.code != "unsupported_adapter":
                raise
            # An adapter the engine cannot batch (IA3, prefix tuning, trained biases...): the first request
            # is refused before anything is generated, so the whole set goes to the reference path.
            return self._reference_answers(resolved, conversations, max_new_tokens=max_new_tokens,
                                           temperature=temperature, top_p=top_p, seed=seed, progress=progress)

    def _reference_answers(self, resolved: Any, conversations: Sequence[list[dict[str, str]]],
                           **decoding: Any) -> list[str]:
        from serving.reference import ReferenceGenerator

        self._reference = self._reference or ReferenceGenerator(self.inference.loader, self.inference.adapters)
        return self._reference.generate(resolved.base_model, resolved.adapter, conversations, **decoding)

    def _engine_answers(self, resolved: Any, model: str, conversations: Sequence[list[dict[str, str]]], *,
                        max_new_tokens: int, temperature: float, top_p: float, seed: int | None,
                        progress: Progress | None) -> list[str]:
        from contracts.inference.schemas import ChatCompletionRequest

        requests = [ChatCompletionRequest(model=model, messages=messages, temperature=temperature, top_p=top_p,
                                          max_tokens=max_new_tokens, seed=seed) for messages in conversations]

        async def run_all() -> list[str]:
            loop = asyncio.get_running_loop()
            gate = asyncio.Semaphore(self.concurrency)

            async def one(request: ChatCompletionRequest) -> str:
                async with gate:
                    while True:
                        try:
                            generation = self.inference.start(resolved, [], request, loop)
                            break
                        except Overloaded as exc:  # another user's traffic fills the queue: wait our turn
                            await asyncio.sleep(min(5.0, exc.retry_after))
                    results = await generation.collect()
                if progress is not None:
                    progress(1)
                return results[0].text

            return list(await asyncio.gather(*(one(r) for r in requests)))

        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ftaas-eval") as pool:
            return pool.submit(asyncio.run, run_all()).result()


class EngineJudge:
    """The LLM judge served by ftaas itself (the default when no external judge endpoint is configured):
    the same interface as `worker.evals.judge.JudgeClient`, answered by `EngineGenerator`."""

    def __init__(self, generator: EngineGenerator) -> None:
        self.generator = generator

    def complete(self, model: str, system: str, user: str, *, temperature: float, max_tokens: int = 8) -> str:
        return self.complete_many(model, [(system, user)], temperature=temperature, max_tokens=max_tokens)[0]

    def complete_many(self, model: str, prompts: list[tuple[str, str]], *, temperature: float,
                      max_tokens: int = 8) -> list[str]:
        conversations = [[{"role": "system", "content": system}, {"role": "user", "content": user}] if system
                         else [{"role": "user", "content": user}] for system, user in prompts]
        return self.generator.generate(model, conversations, max_new_tokens=max_tokens, temperature=temperature,
                                       top_p=1.0, seed=0)


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
        return answers  # type: ignore[return-value]

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
