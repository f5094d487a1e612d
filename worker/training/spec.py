"""What a fine-tuning job asks for, and how `"auto"` hyperparameters resolve.

This module is the contract between the API (which parses and validates requests with these models,
rejecting bad values with a 400 before anything is stored) and the trainer (which runs the resolved
`TrainingSpec`). It imports no ML libraries.

Resolution of `"auto"` (recorded on the job once its files are validated, like the hosted API):

* `n_epochs`: 3, raised so that small files see at least ~100 examples in total (`min(25, 100 // n)` when
  `3 n < 100`) and lowered so that huge files stay under ~25,000 (`max(1, 25000 // n)` when `3 n > 25000`),
  the rule of OpenAI's cookbook cost estimator.
* `batch_size`: about 0.2 % of the examples, rounded up, between 1 and 256.
* `learning_rate_multiplier`: 1.0. The learning rate is `BASE_LEARNING_RATE * multiplier`, with the base a
  usual LoRA learning rate.
* DPO `beta`: 0.1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

AUTO = "auto"
BASE_LEARNING_RATE = 2e-4
DEFAULT_BETA = 0.1

Auto = Literal["auto"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _int_or_auto(value: Any, low: int, high: int) -> Any:
    if value == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"must be an integer between {low} and {high}, or 'auto'")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"must be an integer between {low} and {high}, or 'auto'") from None
    if not number.is_integer() or not low <= number <= high:
        raise ValueError(f"must be an integer between {low} and {high}, or 'auto'")
    return int(number)


def _float_or_auto(value: Any, low_exclusive: float, high: float) -> Any:
    if value == AUTO:
        return AUTO
    message = f"must be a number greater than {low_exclusive} and at most {high}, or 'auto'"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(message)
    try:
        number = float(value)
    except ValueError:
        raise ValueError(message) from None
    if not math.isfinite(number) or not low_exclusive < number <= high:
        raise ValueError(message)
    return number


class SupervisedHyperparameters(_Strict):
    n_epochs: Auto | int = Field(default=AUTO, description="1-50, or auto.")
    batch_size: Auto | int = Field(default=AUTO, description="1-256, or auto.")
    learning_rate_multiplier: Auto | float = Field(default=AUTO, description="> 0 and <= 100, or auto.")

    @field_validator("n_epochs", mode="before")
    @classmethod
    def _n_epochs(cls, value: Any) -> Any:
        return _int_or_auto(value, 1, 50)

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value: Any) -> Any:
        return _int_or_auto(value, 1, 256)

    @field_validator("learning_rate_multiplier", mode="before")
    @classmethod
    def _learning_rate_multiplier(cls, value: Any) -> Any:
        return _float_or_auto(value, 0, 100)


class DpoHyperparameters(SupervisedHyperparameters):
    beta: Auto | float = Field(default=AUTO, description="DPO beta in (0, 2], or auto.")

    @field_validator("beta", mode="before")
    @classmethod
    def _beta(cls, value: Any) -> Any:
        return _float_or_auto(value, 0, 2)


class SupervisedMethod(_Strict):
    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)


class DpoMethod(_Strict):
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class Method(_Strict):
    type: Literal["supervised", "dpo"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None

    @model_validator(mode="after")
    def _matching_section(self) -> Method:
        other = "dpo" if self.type == "supervised" else "supervised"
        if getattr(self, other) is not None:
            raise ValueError(f"method.{other} given for a method of type {self.type!r}")
        if self.type == "supervised" and self.supervised is None:
            self.supervised = SupervisedMethod()
        if self.type == "dpo" and self.dpo is None:
            self.dpo = DpoMethod()
        return self

    @property
    def hyperparameters(self) -> SupervisedHyperparameters:
        section = self.supervised if self.type == "supervised" else self.dpo
        assert section is not None
        return section.hyperparameters

    def to_json(self) -> dict[str, Any]:
        section = self.supervised if self.type == "supervised" else self.dpo
        assert section is not None
        return {"type": self.type, self.type: section.model_dump(mode="json")}


#: Data formats each method trains on (see worker.files.validation).
FORMATS_FOR_METHOD = {"supervised": ("chat", "prompt_completion"), "dpo": ("preference",)}


def resolve_hyperparameters(method: Method, example_count: int) -> dict[str, Any]:
    """Concrete values for every `"auto"`, by the rules in the module docstring."""
    requested = method.hyperparameters
    n = max(1, example_count)
    if requested.n_epochs == AUTO:
        n_epochs = 3
        if n * 3 < 100:
            n_epochs = min(25, 100 // n)
        elif n * 3 > 25_000:
            n_epochs = max(1, 25_000 // n)
    else:
        n_epochs = int(requested.n_epochs)
    batch_size = min(256, max(1, math.ceil(n * 0.002))) if requested.batch_size == AUTO else int(requested.batch_size)
    multiplier = 1.0 if requested.learning_rate_multiplier == AUTO else float(requested.learning_rate_multiplier)
    resolved: dict[str, Any] = {"n_epochs": n_epochs, "batch_size": batch_size, "learning_rate_multiplier": multiplier}
    if isinstance(requested, DpoHyperparameters):
        resolved["beta"] = DEFAULT_BETA if requested.beta == AUTO else float(requested.beta)
    return resolved


@dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"


@dataclass(frozen=True)
class TrainingSpec:
    """Everything the trainer needs, resolved; saved beside the adapter as provenance."""

    base_model: str
    method: str  # "supervised" | "dpo"
    n_epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    beta: float = DEFAULT_BETA
    max_seq_len: int = 1024
    warmup_ratio: float = 0.0
    lora: LoraSettings = LoraSettings()
    #: Validation metrics on one batch every this many steps.
    eval_every_steps: int = 10

    @classmethod
    def for_job(cls, *, base_model: str, method: dict[str, Any], hyperparameters: dict[str, Any], seed: int) -> TrainingSpec:
        return cls(
            base_model=base_model,
            method=method["type"],
            n_epochs=int(hyperparameters["n_epochs"]),
            batch_size=int(hyperparameters["batch_size"]),
            learning_rate=BASE_LEARNING_RATE * float(hyperparameters["learning_rate_multiplier"]),
            seed=int(seed),
            beta=float(hyperparameters.get("beta", DEFAULT_BETA)),
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["lora"]["target_modules"] = (
            data["lora"]["target_modules"] if isinstance(data["lora"]["target_modules"], str)
            else list(data["lora"]["target_modules"])
        )
        return data
