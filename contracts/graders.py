"""Graders as OpenAI's API takes them (`openai.types.graders`): the wire shape of the grader a reinforcement
fine-tuning job scores its samples with, and of `/v1/fine_tuning/alpha/graders/run|validate`.

This module only parses: field types, lengths, and combinations that cannot work (passing labels that are not
labels, a score range that is not two increasing numbers, a multi grader without sub-graders). What a grader
means (templates, metrics, the sandbox) lives in the `graders` package, which also checks what parsing cannot:
that templates and formulas parse and name only what exists.

Accepted beyond the SDK's types, because OpenAI's documentation and API take them: `label_model` wherever a
grader goes (the SDK lists it only inside `multi`), and `multi.graders` as a mapping of name to grader (what
OpenAI's guide shows; the SDK types it as one grader, which is accepted too and named by its own `name`).
Not supported, refused with a 400 that says so: image and audio inputs of model graders.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: The largest python grader source ftaas accepts (OpenAI documents 256 kB).
MAX_PYTHON_SOURCE_BYTES = 256 * 1024
MAX_TEMPLATE_CHARS = 100_000
MAX_SUB_GRADERS = 16
#: A multi grader's sub-grader names are the formula's variables: identifiers.
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

TextSimilarityMetric = Literal["cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3",
                               "rouge_4", "rouge_5", "rouge_l"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Named(_Strict):
    name: str = Field(min_length=1, max_length=256)


class StringCheckGrader(_Named):
    """`input` compared with `reference` (both templates): eq, ne, like (contains), ilike (contains, any case)."""

    type: Literal["string_check"]
    input: str = Field(max_length=MAX_TEMPLATE_CHARS)
    reference: str = Field(max_length=MAX_TEMPLATE_CHARS)
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilarityGrader(_Named):
    """A similarity metric between `input` and `reference` (templates), a reward in [0, 1]."""

    type: Literal["text_similarity"]
    input: str = Field(max_length=MAX_TEMPLATE_CHARS)
    reference: str = Field(max_length=MAX_TEMPLATE_CHARS)
    evaluation_metric: TextSimilarityMetric
    #: Accepted as the evals API sends it; a reward is the metric itself, the threshold is not applied.
    pass_threshold: float | None = None


class PythonGrader(_Named):
    """User source defining `grade(sample, item) -> float`, run in the grader sandbox."""

    type: Literal["python"]
    source: str = Field(min_length=1)
    #: OpenAI's runtime image; accepted and stored, ignored: ftaas runs every grader on its own interpreter.
    image_tag: str | None = Field(default=None, max_length=128)

    @field_validator("source")
    @classmethod
    def _size(cls, value: str) -> str:
        if len(value.encode()) > MAX_PYTHON_SOURCE_BYTES:
            raise ValueError(f"must be at most {MAX_PYTHON_SOURCE_BYTES // 1024} kB")
        return value


class ContentText(_Strict):
    """A text part of a model grader's message (`input_text` or `output_text`); `text` is a template."""

    type: Literal["input_text", "output_text"]
    text: str = Field(max_length=MAX_TEMPLATE_CHARS)


class _UnsupportedPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["input_image", "input_audio"]

    @model_validator(mode="after")
    def _refuse(self) -> _UnsupportedPart:
        raise ValueError(f"{self.type} content is not supported by ftaas's model graders (text only)")


ContentPart = Annotated[ContentText | _UnsupportedPart, Field(discriminator="type")]


class ModelGraderMessage(_Strict):
    """One message of a model grader's prompt; content is a template string or a list of text parts."""

    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart] = Field()
    type: Literal["message"] | None = None

    @field_validator("content")
    @classmethod
    def _content(cls, value: Any) -> Any:
        if isinstance(value, str) and len(value) > MAX_TEMPLATE_CHARS:
            raise ValueError(f"must be at most {MAX_TEMPLATE_CHARS} characters")
        if isinstance(value, list) and not 1 <= len(value) <= 32:
            raise ValueError("must hold 1-32 parts")
        return value

    def text_templates(self) -> list[str]:
        """The message's text, as templates, in order."""
        if isinstance(self.content, str):
            return [self.content]
        return [part.text for part in self.content if isinstance(part, ContentText)]


class SamplingParams(_Strict):
    max_completions_tokens: int | None = Field(default=None, ge=1, le=65_536)
    #: Accepted and passed on to the grading endpoint, which may ignore it (ftaas's own serving does).
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    seed: int | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)


class _ModelGrader(_Named):
    model: str = Field(min_length=1, max_length=256)
    input: list[ModelGraderMessage] = Field(min_length=1, max_length=64)


class ScoreModelGrader(_ModelGrader):
    """A model asked for a number in `range`; the reward is that number."""

    type: Literal["score_model"]
    range: list[float] | None = None
    sampling_params: SamplingParams | None = None
    #: Accepted as the evals API sends it; not applied to the reward.
    pass_threshold: float | None = None

    @field_validator("range")
    @classmethod
    def _range(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (len(value) != 2 or not value[0] < value[1]):
            raise ValueError("must be two numbers, the lower first")
        return value

    @property
    def bounds(self) -> tuple[float, float]:
        low, high = self.range or (0.0, 1.0)
        return float(low), float(high)


class LabelModelGrader(_ModelGrader):
    """A model asked to choose one of `labels`; the reward is 1 for a passing label, else 0."""

    type: Literal["label_model"]
    labels: list[str] = Field(min_length=2, max_length=64)
    passing_labels: list[str] = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _passing_subset(self) -> LabelModelGrader:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be distinct")
        unknown = [label for label in self.passing_labels if label not in self.labels]
        if unknown:
            raise ValueError(f"passing_labels must be among labels; not labels: {unknown}")
        return self


SingleGrader = Annotated[StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | LabelModelGrader,
                         Field(discriminator="type")]


class MultiGrader(_Named):
    """Sub-graders combined by `calculate_output`, a formula over their names (+ - * / ^, parentheses, min,
    max, abs, floor, ceil, exp, sqrt, log)."""

    type: Literal["multi"]
    graders: dict[str, SingleGrader]
    calculate_output: str = Field(min_length=1, max_length=4096)

    @field_validator("graders", mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        # The SDK's type is a single grader: keyed by its own name.
        if isinstance(value, dict) and isinstance(value.get("type"), str):
            return {value.get("name", "grader"): value}
        return value

    @field_validator("graders")
    @classmethod
    def _variables(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not 1 <= len(value) <= MAX_SUB_GRADERS:
            raise ValueError(f"must hold 1-{MAX_SUB_GRADERS} graders")
        bad = [key for key in value if not _VARIABLE.match(key)]
        if bad:
            raise ValueError(f"grader keys are the formula's variables and must be identifiers; not: {bad}")
        return value


Grader = Annotated[StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | LabelModelGrader
                   | MultiGrader, Field(discriminator="type")]


class GraderHolder(_Strict):
    """A grader on its own, parsed by its `type` (what `/graders/validate` takes)."""

    grader: Grader


class GraderRunRequest(_Strict):
    """`POST /v1/fine_tuning/alpha/graders/run`: one sample (the model's output text) and its item."""

    grader: Grader
    model_sample: str = Field(max_length=1_000_000)
    item: Any = None
