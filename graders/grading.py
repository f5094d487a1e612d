"""Checking a grader and grading samples with it: the one entry point of the `graders` library.

`check` refuses (InvalidRequest, 400) what can never grade: a template or formula that does not parse or
names what does not exist, python source that does not compile or defines no `grade`, a metric or grader
type this deployment cannot run. `item_fields` lists the dataset fields a grader reads, for validating a
training file before a job starts. `grade` scores a batch of samples; it never raises for what a sample,
an item or the user's code does: those become the grade's error flags (OpenAI's `metadata.errors`) with a
reward of 0. Rewards of sub-graders are kept (`sub_rewards`) and combined by a multi grader's formula.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from contracts.errors import InvalidRequest
from contracts.graders import (
    LabelModelGrader,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)
from graders import formula, model_graders, sandbox, similarity, templates
from graders.samples import Sample

ERROR_FLAGS = ("formula_parse_error", "invalid_variable_error", "model_grader_parse_error",
               "model_grader_refusal_error", "model_grader_server_error", "other_error", "python_grader_runtime_error",
               "python_grader_server_error", "sample_parse_error", "truncated_observation_error",
               "unresponsive_reward_error")
ERROR_DETAILS = ("model_grader_server_error_details", "python_grader_runtime_error_details",
                 "python_grader_server_error_type")
#: Variables' values too long for a grader: rendered text is cut here (and the grade flags truncation).
MAX_RENDERED_CHARS = 200_000


@dataclass
class Grade:
    """One sample's grade. `errors` holds every flag of OpenAI's `metadata.errors` (False unless raised) and
    the detail strings (None unless set)."""

    name: str
    type: str
    reward: float = 0.0
    errors: dict[str, Any] = field(default_factory=lambda: {**dict.fromkeys(ERROR_FLAGS, False),
                                                            **dict.fromkeys(ERROR_DETAILS)})
    sub_rewards: dict[str, float] = field(default_factory=dict)
    scores: dict[str, Any] = field(default_factory=dict)
    execution_time: float = 0.0
    #: per grader model: prompt/completion/total tokens
    token_usage: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(self.errors[flag] for flag in ERROR_FLAGS)

    def fail(self, flag: str, detail_key: str | None = None, detail: str | None = None) -> Grade:
        self.errors[flag] = True
        if detail_key:
            self.errors[detail_key] = detail
        self.reward = 0.0
        return self

    def response(self) -> dict[str, Any]:
        """OpenAI's `GraderRunResponse` for this grade."""
        tokens = sum(usage["total_tokens"] for usage in self.token_usage.values())
        return {"reward": self.reward, "sub_rewards": dict(self.sub_rewards),
                "metadata": {"name": self.name, "type": self.type, "errors": dict(self.errors),
                             "execution_time": round(self.execution_time, 6), "scores": dict(self.scores),
                             "token_usage": tokens if self.token_usage else None, "sampled_model_name": None},
                "model_grader_token_usage_per_model": {model: dict(usage) for model, usage in self.token_usage.items()}}


@dataclass
class GradingContext:
    """What the deployment provides graders: the chat endpoint of model graders (None: not configured, with
    `endpoint_missing` saying why), the python sandbox's limits, and how many model calls run at once."""

    endpoint: model_graders.ChatEndpoint | None = None
    endpoint_missing: str = "this deployment has no grader model endpoint"
    sandbox_limits: sandbox.SandboxLimits = field(default_factory=sandbox.SandboxLimits)
    max_concurrency: int = 8
    #: whether python graders may run here (tests of other graders on machines without namespaces set False)
    python_available: Callable[[], str | None] = sandbox.unavailable_reason

    def close(self) -> None:
        """Release the endpoint's connections, where it holds any."""
        close = getattr(self.endpoint, "close", None)
        if close is not None:
            close()


# ------------------------------------------------------------------------------------------ checking
def check(grader: Any, context: GradingContext, *, param: str = "grader", require_endpoint: bool = True) -> None:
    """Raise InvalidRequest (naming the offending field in `param`) unless `grader` can run here.
    `require_endpoint` False: model graders are answered elsewhere (a training worker), not checked here."""
    if isinstance(grader, MultiGrader):
        for key, sub in grader.graders.items():
            check(sub, context, param=f"{param}.graders.{key}", require_endpoint=require_endpoint)
        try:
            formula.check(grader.calculate_output, set(grader.graders))
        except formula.FormulaError as exc:
            raise InvalidRequest(str(exc), code="invalid_grader", param=f"{param}.calculate_output") from None
        return
    for where, text in _templates(grader):
        try:
            templates.parse(text)
        except templates.TemplateSyntaxError as exc:
            raise InvalidRequest(f"{param}.{where}: {exc}", code="invalid_grader", param=f"{param}.{where}") from None
    if isinstance(grader, TextSimilarityGrader):
        reason = similarity.unavailable_reason(grader.evaluation_metric)
        if reason:
            raise InvalidRequest(reason, code="grader_unavailable", param=f"{param}.evaluation_metric")
    elif isinstance(grader, PythonGrader):
        _check_python(grader.source, f"{param}.source")
        reason = context.python_available()
        if reason:
            raise InvalidRequest(f"python graders cannot run on this deployment: {reason}",
                                 code="grader_unavailable", param=f"{param}.type")
    elif isinstance(grader, ScoreModelGrader | LabelModelGrader) and context.endpoint is None and require_endpoint:
        raise InvalidRequest(f"{grader.type} graders need a model endpoint: {context.endpoint_missing}",
                             code="grader_unavailable", param=f"{param}.model")


def _check_python(source: str, param: str) -> None:
    try:
        tree = ast.parse(source, filename="grader.py")
    except SyntaxError as exc:
        raise InvalidRequest(f"the python grader does not compile: line {exc.lineno}: {exc.msg}",
                             code="invalid_grader", param=param) from None
    if not any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "grade"
               for node in tree.body):
        raise InvalidRequest("the python grader must define a top-level function grade(sample, item)",
                             code="invalid_grader", param=param)


def _templates(grader: Any) -> list[tuple[str, str]]:
    """(field, template) pairs of a single grader."""
    if isinstance(grader, StringCheckGrader | TextSimilarityGrader):
        return [("input", grader.input), ("reference", grader.reference)]
    if isinstance(grader, ScoreModelGrader | LabelModelGrader):
        return [(f"input[{index}].content", text) for index, message in enumerate(grader.input)
                for text in message.text_templates()]
    return []


def item_fields(grader: Any) -> set[str]:
    """The top-level dataset fields `grader`'s templates read (`{{item.answer}}` -> "answer"). Python
    graders read the item in code, so they add none. Assumes `check` passed."""
    if isinstance(grader, MultiGrader):
        return set().union(*(item_fields(sub) for sub in grader.graders.values()))
    fields: set[str] = set()
    for _, text in _templates(grader):
        for reference in templates.parse(text).references:
            if reference.item_field:
                fields.add(reference.item_field)
    return fields


def first_line_missing(grader: Any, file_fields: Mapping[str, int | None]) -> tuple[str, int] | None:
    """(field, line) for the first item field `grader` reads that a line of a file lacks, given the file's
    `item_fields` (each field -> the first line without it; worker.files.validation), or None."""
    for name in sorted(item_fields(grader)):
        if name not in file_fields:
            return name, 1
        line = file_fields[name]
        if line is not None:
            return name, int(line)
    return None


def model_graders_in(grader: Any) -> list[ScoreModelGrader | LabelModelGrader]:
    """The model graders in `grader` (itself, or a multi grader's parts)."""
    if isinstance(grader, MultiGrader):
        return [g for sub in grader.graders.values() for g in model_graders_in(sub)]
    return [grader] if isinstance(grader, ScoreModelGrader | LabelModelGrader) else []


# ------------------------------------------------------------------------------------------- grading
def grade(grader: Any, samples: Sequence[Sample], items: Sequence[Mapping[str, Any]],
          context: GradingContext) -> list[Grade]:
    """One Grade per (sample, item) pair, in order. Assumes `check` passed."""
    if len(samples) != len(items):
        raise ValueError("samples and items differ in length")
    if not samples:
        return []
    started = time.monotonic()
    if isinstance(grader, MultiGrader):
        grades = _multi(grader, samples, items, context)
    elif isinstance(grader, PythonGrader):
        grades = _python(grader, samples, items, context)
    elif isinstance(grader, ScoreModelGrader | LabelModelGrader):
        grades = _model(grader, samples, items, context)
    else:
        grades = [_inline(grader, sample, item) for sample, item in zip(samples, items, strict=True)]
    if not isinstance(grader, PythonGrader | ScoreModelGrader | LabelModelGrader | MultiGrader):
        spent = (time.monotonic() - started) / len(grades)
        for result in grades:
            result.execution_time = spent
    return grades


def _render(text: str, sample: Sample, item: Mapping[str, Any], result: Grade) -> str | None:
    """`text` rendered, or None after flagging `result` (a missing variable, unparseable output JSON)."""
    template = templates.parse(text)
    try:
        rendered = template.render({"item": item, "sample": sample.namespace()})
    except templates.MissingVariable as exc:
        if exc.path.replace(" ", "").startswith("sample.output_json"):
            result.fail("sample_parse_error")
        else:
            result.fail("invalid_variable_error")
        result.scores["error"] = str(exc)
        return None
    if len(rendered) > MAX_RENDERED_CHARS:
        result.errors["truncated_observation_error"] = True
        rendered = rendered[:MAX_RENDERED_CHARS]
    return rendered


def _inline(grader: StringCheckGrader | TextSimilarityGrader, sample: Sample, item: Mapping[str, Any]) -> Grade:
    result = Grade(grader.name, grader.type)
    text = _render(grader.input, sample, item, result)
    reference = _render(grader.reference, sample, item, result)
    if text is None or reference is None:
        return result
    if isinstance(grader, StringCheckGrader):
        passed = {"eq": text == reference, "ne": text != reference, "like": reference in text,
                  "ilike": reference.lower() in text.lower()}[grader.operation]
        result.reward = 1.0 if passed else 0.0
    else:
        try:
            result.reward = similarity.similarity(grader.evaluation_metric, text, reference)
        except Exception as exc:  # noqa: BLE001 - a metric library failing on odd text is this grade's error
            result.scores["error"] = str(exc)[:500]
            return result.fail("other_error")
    return result


def _python(grader: PythonGrader, samples: Sequence[Sample], items: Sequence[Mapping[str, Any]],
            context: GradingContext) -> list[Grade]:
    runner = sandbox.PythonSandbox(grader.source, context.sandbox_limits)
    outcomes = runner.run([(sample.namespace(), dict(item)) for sample, item in zip(samples, items, strict=True)])
    grades = []
    for outcome in outcomes:
        result = Grade(grader.name, grader.type, execution_time=outcome.seconds)
        if outcome.error == "server":
            result.fail("python_grader_server_error", "python_grader_server_error_type", outcome.details)
        elif outcome.error:
            result.fail("python_grader_runtime_error", "python_grader_runtime_error_details", outcome.details)
        else:
            result.reward = float(outcome.reward or 0.0)
        grades.append(result)
    return grades


def _model(grader: ScoreModelGrader | LabelModelGrader, samples: Sequence[Sample],
           items: Sequence[Mapping[str, Any]], context: GradingContext) -> list[Grade]:
    def one(pair: tuple[Sample, Mapping[str, Any]]) -> Grade:
        sample, item = pair
        started = time.monotonic()
        result = Grade(grader.name, grader.type)
        try:
            _ask(grader, sample, item, context, result)
        finally:
            result.execution_time = time.monotonic() - started
        return result

    with ThreadPoolExecutor(max_workers=max(1, min(context.max_concurrency, len(samples)))) as pool:
        return list(pool.map(one, zip(samples, items, strict=True)))


def _ask(grader: ScoreModelGrader | LabelModelGrader, sample: Sample, item: Mapping[str, Any],
         context: GradingContext, result: Grade) -> None:
    messages: list[dict[str, Any]] = []
    for message in grader.input:
        parts = [_render(text, sample, item, result) for text in message.text_templates()]
        if any(part is None for part in parts):
            return
        messages.append({"role": "system" if message.role == "developer" else message.role,
                         "content": "\n".join(part for part in parts if part is not None)})
    if isinstance(grader, ScoreModelGrader):
        low, high = grader.bounds
        response_format, instruction = model_graders.score_format(low, high)
        params = grader.sampling_params
        sampling = {"temperature": 0.0 if params is None or params.temperature is None else params.temperature}
        if params is not None:
            if params.top_p is not None:
                sampling["top_p"] = params.top_p
            if params.seed is not None:
                sampling["seed"] = params.seed
            if params.max_completions_tokens is not None:
                sampling["max_tokens"] = params.max_completions_tokens
    else:
        response_format, instruction = model_graders.label_format(list(grader.labels))
        sampling = {"temperature": 0.0}
    sampling.setdefault("max_tokens", 256)
    messages.append({"role": "system", "content": instruction})
    endpoint = context.endpoint
    if endpoint is None:  # check() refuses this; a grader run without it is still an error, not a crash
        result.fail("model_grader_server_error", "model_grader_server_error_details", context.endpoint_missing)
        return
    try:
        reply = endpoint.chat(grader.model, messages, response_format=response_format, sampling=sampling)
    except model_graders.EndpointError as exc:
        result.fail("model_grader_server_error", "model_grader_server_error_details", str(exc)[:1000])
        return
    usage = result.token_usage.setdefault(grader.model, {"prompt_tokens": 0, "completion_tokens": 0,
                                                         "total_tokens": 0, "cached_tokens": 0})
    usage["prompt_tokens"] += reply.prompt_tokens
    usage["completion_tokens"] += reply.completion_tokens
    usage["total_tokens"] += reply.prompt_tokens + reply.completion_tokens
    if reply.refusal:
        result.fail("model_grader_refusal_error")
        result.scores["refusal"] = reply.refusal[:1000]
        return
    try:
        value = model_graders.parse_result(reply.text)
    except ValueError as exc:
        result.fail("model_grader_parse_error")
        result.scores["error"] = str(exc)
        return
    result.scores["result"] = value
    if isinstance(grader, ScoreModelGrader):
        low, high = grader.bounds
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            result.fail("model_grader_parse_error")
            result.scores["error"] = f"the grader model's result {value!r} is not a number in [{low:g}, {high:g}]"
            return
        result.reward = float(value)
    else:
        if value not in grader.labels:
            result.fail("model_grader_parse_error")
            result.scores["error"] = f"the grader model's label {value!r} is not one of {list(grader.labels)}"
            return
        result.reward = 1.0 if value in grader.passing_labels else 0.0


def _multi(grader: MultiGrader, samples: Sequence[Sample], items: Sequence[Mapping[str, Any]],
           context: GradingContext) -> list[Grade]:
    by_name = {name: grade(sub, samples, items, context) for name, sub in grader.graders.items()}
    grades = []
    for index in range(len(samples)):
        parts = {name: results[index] for name, results in by_name.items()}
        result = Grade(grader.name, grader.type, execution_time=sum(p.execution_time for p in parts.values()))
        for part in parts.values():
            for key, value in part.errors.items():
                if value and not result.errors.get(key):
                    result.errors[key] = value
            for model, usage in part.token_usage.items():
                total = result.token_usage.setdefault(model, dict.fromkeys(usage, 0))
                for key, count in usage.items():
                    total[key] = total.get(key, 0) + count
        result.sub_rewards = {name: part.reward for name, part in parts.items()}
        result.scores = {name: part.scores for name, part in parts.items() if part.scores}
        if result.failed:
            result.reward = 0.0
        else:
            try:
                result.reward = formula.evaluate(grader.calculate_output, result.sub_rewards)
            except formula.FormulaError as exc:
                result.fail("formula_parse_error")
                result.scores["formula_error"] = str(exc)
        grades.append(result)
    return grades
