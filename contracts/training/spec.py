"""What a fine-tuning job asks for, how `"auto"` resolves, and which combinations are refused.

This module is the contract between the API (which parses and validates requests with these models,
rejecting bad values and impossible combinations with a 400 before anything is stored) and the trainer
(which runs the resolved `TrainingSpec`). It imports no ML libraries.

The OpenAI request shape is `method: {type, supervised|dpo: {hyperparameters}}`. ftaas accepts extension
fields in the same section (the SDK sends them with `extra_body`, or as extra keys of the `method` dict):

    "supervised": {
      "hyperparameters": {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": "auto"},
      "adapter": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear",
                  "init": "default"},
      "max_seq_len": 2048, "packing": true, "lr_scheduler": "linear", "warmup_ratio": 0.0,
      "n_checkpoints": null, "eval_interval": 10, "early_stopping": {"patience": 3, "min_delta": 0.0}
    }

Adapter types: `lora` (default), `dora`, `rslora`, `ia3`, `prompt_tuning`, `prefix_tuning`; LoRA-family
initialisations: `default`, `gaussian`, `orthogonal`, `pissa`, `olora`, `corda` (CorDA calibrates on the
first training examples). Refused combinations (400): LoRA knobs on other types, `num_virtual_tokens` on
non-prompt types, `target_modules` on prompt types, DoRA with pissa/olora/corda (such an adapter cannot be
converted back onto the unmodified base model), packing with prompt/prefix tuning (their virtual tokens
belong to one sequence) or with DPO, DPO with pissa/olora/corda (they change the base weights, and DPO's
reference model is the base with the adapter disabled), early stopping without a validation file.

Resolution of `"auto"` (recorded on the job once its files are validated, like the hosted API). Chosen from
measurements of fact files on a real pretrained chat model (SmolLM2-135M-Instruct; docs/training.md), where
the hosted API's rule (3 epochs, multiplier 1) learned almost nothing of a small file:

* `n_epochs`: SMALL_FILE_EPOCHS (20) up to SMALL_FILE_EXAMPLES (100) examples, then falling with the square
  root of the file size to 3 at MEDIUM_FILE_EXAMPLES (2,000), and lowered so that huge files stay under
  ~25,000 examples seen (`max(1, 25000 // n)`). With `n_epochs` "auto", `stop_when_learned` and
  `rehearsal` default to on: the run ends after the first epoch whose training token accuracy on assistant
  tokens reaches LEARNED_ACCURACY (so 20 is a ceiling, not a cost), and every step also trains on the base
  model's own answers to general prompts so that it keeps what it knew (worker.training.rehearsal; chat data).
* `batch_size`: about 0.2 % of the examples, rounded up, between 1 and 256.
* `learning_rate_multiplier`: SMALL_FILE_MULTIPLIER (5) for supervised LoRA-family jobs up to 2,000
  examples, falling log-linearly to 1 at LARGE_FILE_EXAMPLES (20,000); 1 for DPO and other adapter types.
  The learning rate is a base rate for the adapter type times the multiplier: 2e-4 for the LoRA family,
  3e-3 for IA3, 1e-2 for prefix tuning, 3e-2 for prompt tuning (the rates those methods' papers and peft's
  examples use).
* DPO `beta`: 0.1.
* SPIN (`supervised.self_play`): `n_epochs` counts the passes of one round (after `sft_epochs` supervised
  passes), SELF_PLAY_AUTO_EPOCHS (2) for
  "auto"; the multiplier is 1 (a DPO loss); packing, rehearsal, stop_when_learned and early stopping are off
  (refused when asked), and QLoRA is allowed (the sampler dequantizes the base once).

Other defaults: `max_seq_len` 2048 (capped at the model's context), packing on for supervised jobs (off for
prompt learning and DPO), a checkpoint at the end of every epoch (`n_checkpoints` spreads that many evenly
over the run instead), a validation batch every 10 steps, full validation at every checkpoint.

One file on purpose: the whole contract between the API and the trainer (every field, its
validation and the "auto" rules) in one place, so the API and the worker cannot drift apart.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts.files.formats import CHAT
from contracts.graders import Grader

AUTO: Final = "auto"
DEFAULT_BETA = 0.1
#: Reinforcement: samples per prompt at compute_multiplier 1 (a group whose rewards are compared), the KL
#: weight to the base model, the policy-gradient clip range, and the longest sample.
DEFAULT_GROUP_SIZE = 8
DEFAULT_KL_BETA = 0.04
DEFAULT_CLIP_EPSILON = 0.2
DEFAULT_COMPLETION_TOKENS = 256
#: SPIN: rounds of sampling then training, and passes over the pairs in each round when n_epochs is "auto"
#: (the SPIN paper's recipe trains 2 epochs per iteration).
DEFAULT_SELF_PLAY_ITERATIONS = 2
SELF_PLAY_AUTO_EPOCHS = 2
#: The longest own answer SPIN samples when the data's longest answer is longer.
SELF_PLAY_MAX_COMPLETION_TOKENS = 1024
#: Reinforcement "auto": prompts per step, how many times the run visits prompts in all (n_epochs is this
#: over the file's size, at most RFT_MAX_EPOCHS), and the learning-rate multiplier (docs/training.md).
RFT_BATCH_PROMPTS = 8
RFT_PROMPT_VISITS = 256
RFT_MAX_EPOCHS = 20
RFT_LEARNING_RATE_MULTIPLIER = 2.5
DEFAULT_MAX_SEQ_LEN = 2048
DEFAULT_EVAL_INTERVAL = 10
#: An epoch whose training token accuracy on assistant tokens reaches this has learned its data
#: (stop_when_learned ends training there).
LEARNED_ACCURACY = 0.99
#: A supervised job whose final token accuracy on its own training data stays below this gets a warning.
LOW_FINAL_ACCURACY = 0.8
#: "auto" for small files (docs/training.md has the measurements behind these numbers).
SMALL_FILE_EXAMPLES = 100
SMALL_FILE_EPOCHS = 20
SMALL_FILE_MULTIPLIER = 5.0
MEDIUM_FILE_EXAMPLES = 2_000
LARGE_FILE_EXAMPLES = 20_000

Auto = Literal["auto"]
AdapterType = Literal["lora", "dora", "rslora", "ia3", "prompt_tuning", "prefix_tuning"]
LoraInit = Literal["default", "gaussian", "orthogonal", "pissa", "olora", "corda"]

LORA_FAMILY = frozenset({"lora", "dora", "rslora"})
PROMPT_LEARNING = frozenset({"prompt_tuning", "prefix_tuning"})
#: Initialisations that move part of each base weight into the adapter (the base is modified).
BASE_MODIFYING_INITS = frozenset({"pissa", "olora", "corda"})
BASE_LEARNING_RATES = {"lora": 2e-4, "dora": 2e-4, "rslora": 2e-4, "ia3": 3e-3, "prefix_tuning": 1e-2,
                       "prompt_tuning": 3e-2}
_MODULE_NAME = re.compile(r"^[A-Za-z0-9_.]{1,128}$")


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


# ----------------------------------------------------------------------------------- hyperparameters
class SupervisedHyperparameters(_Strict):
    n_epochs: Auto | int = Field(default=AUTO, description="1-50, or auto.")
    batch_size: Auto | int = Field(default=AUTO, description="Examples per optimizer step, 1-256, or auto.")
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


class ReinforcementHyperparameters(SupervisedHyperparameters):
    """OpenAI's reinforcement hyperparameters. `batch_size` counts prompts per optimizer step."""

    compute_multiplier: Auto | float = Field(
        default=AUTO, description="Scales the samples drawn per prompt (auto: 1, i.e. DEFAULT_GROUP_SIZE samples), (0, 10].")
    eval_interval: Auto | int = Field(default=AUTO, description="Steps between validation rewards, 1-1,000,000, or auto.")
    eval_samples: Auto | int = Field(default=AUTO, description="Samples per validation prompt, 1-64, or auto (1).")
    reasoning_effort: Literal["default", "low", "medium", "high"] | None = Field(
        default=None, description="Accepted and stored; the open models ftaas trains have no such setting.")

    @field_validator("compute_multiplier", mode="before")
    @classmethod
    def _compute_multiplier(cls, value: Any) -> Any:
        return _float_or_auto(value, 0, 10)

    @field_validator("eval_interval", mode="before")
    @classmethod
    def _eval_interval(cls, value: Any) -> Any:
        return _int_or_auto(value, 1, 1_000_000)

    @field_validator("eval_samples", mode="before")
    @classmethod
    def _eval_samples(cls, value: Any) -> Any:
        return _int_or_auto(value, 1, 64)


# ------------------------------------------------------------------------------------ the adapter
class AdapterOptions(_Strict):
    """The PEFT method. Unset knobs take the defaults of `resolved()`."""

    type: AdapterType = "lora"
    r: int | None = Field(default=None, ge=1, le=512, description="LoRA rank (LoRA family; default 8).")
    alpha: float | None = Field(default=None, gt=0, le=4096, description="LoRA alpha (LoRA family; default 2r).")
    dropout: float | None = Field(default=None, ge=0, lt=1, description="LoRA dropout (LoRA family; default 0).")
    target_modules: Literal["all-linear"] | list[str] | None = Field(
        default=None, description="Modules to adapt: 'all-linear' (LoRA default) or names; IA3 defaults per model.")
    init: LoraInit | None = Field(default=None, description="LoRA-family initialisation (default 'default').")
    num_virtual_tokens: int | None = Field(
        default=None, ge=1, le=256, description="Virtual tokens (prompt and prefix tuning; default 16).")
    quantization: Literal["nf4"] | None = Field(
        default=None, description=("QLoRA: hold the frozen base in 4-bit NF4 (bitsandbytes, double quantization, "
                                   "bf16 compute) while training a lora or rslora adapter; the adapter is published "
                                   "for, and served on, the unquantized base."))

    @field_validator("target_modules")
    @classmethod
    def _target_modules(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not 1 <= len(value) <= 64 or not all(_MODULE_NAME.match(name) for name in value):
                raise ValueError("must be 'all-linear' or 1-64 module names (letters, digits, '_', '.')")
        return value

    @model_validator(mode="after")
    def _combinations(self) -> AdapterOptions:
        if self.type not in LORA_FAMILY:
            for knob in ("r", "alpha", "dropout", "init"):
                if getattr(self, knob) is not None:
                    raise ValueError(f"'{knob}' applies to LoRA-family adapters (lora, dora, rslora), not to {self.type}")
        if self.type in PROMPT_LEARNING and self.target_modules is not None:
            raise ValueError(f"{self.type} adds virtual tokens and adapts no modules: 'target_modules' does not apply")
        if self.type not in PROMPT_LEARNING and self.num_virtual_tokens is not None:
            raise ValueError("'num_virtual_tokens' applies to prompt_tuning and prefix_tuning only")
        if self.quantization is not None:
            if self.type not in ("lora", "rslora"):
                raise ValueError(f"quantization (QLoRA) trains lora or rslora adapters, not {self.type}")
            if self.init in BASE_MODIFYING_INITS:
                raise ValueError(f"quantization cannot start from '{self.init}': it rewrites base weights that are "
                                 "held quantized")
        if self.type == "dora" and self.init in BASE_MODIFYING_INITS:
            raise ValueError(f"dora cannot start from '{self.init}': the result could not be converted back onto "
                             "the unmodified base model")
        return self

    def resolved(self) -> dict[str, Any]:
        """The adapter with every default filled in (recorded on the job and in the manifest)."""
        if self.type in LORA_FAMILY:
            r = self.r or 8
            resolved = {"type": self.type, "r": r, "alpha": self.alpha if self.alpha is not None else 2.0 * r,
                        "dropout": self.dropout or 0.0, "target_modules": self.target_modules or "all-linear",
                        "init": self.init or "default"}
            return resolved | ({"quantization": self.quantization} if self.quantization else {})
        if self.type == "ia3":
            return {"type": "ia3", "target_modules": self.target_modules}
        return {"type": self.type, "num_virtual_tokens": self.num_virtual_tokens or 16}


class EarlyStopping(_Strict):
    patience: int = Field(default=3, ge=1, le=100, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(default=0.0, ge=0, le=100, description="Smallest decrease of validation loss that counts.")


class _MethodOptions(_Strict):
    adapter: AdapterOptions = Field(default_factory=AdapterOptions)
    max_seq_len: int | None = Field(default=None, ge=16, le=131072, description="Longer examples are truncated.")
    packing: bool | None = Field(default=None, description="Pack examples into rows (supervised default: on).")
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(default=0.0, ge=0, le=0.5, description="Share of steps with a linear warm-up.")
    n_checkpoints: int | None = Field(default=None, ge=1, le=100,
                                      description="Checkpoints spread evenly over the run (default: one per epoch).")
    eval_interval: int | None = Field(default=None, ge=1, le=1_000_000,
                                      description="Steps between validation-batch metrics (default 10).")
    early_stopping: EarlyStopping | None = Field(
        default=None, description="Stop when full validation loss stops improving; the best checkpoint becomes the model.")
    stop_when_learned: bool | None = Field(
        default=None, description=("End training after the first epoch whose training token accuracy on assistant "
                                   "tokens reaches LEARNED_ACCURACY (supervised; default: on when n_epochs is auto)."))
    gradient_checkpointing: bool | Auto = Field(
        default=AUTO, description=("Recompute each layer's activations in the backward pass instead of keeping "
                                   "them (less memory, ~30 % more compute). auto: on when the step's estimated peak "
                                   "memory would not fit the training device otherwise (worker.training.memory_estimate)."))
    rehearsal: bool | None = Field(
        default=None, description=("Train every step next to a batch of the base model's own answers to general "
                                   "prompts, so it keeps what it knew (supervised chat data; default: on when "
                                   "n_epochs is auto)."))


class SelfPlay(_Strict):
    """SPIN (self-play fine-tuning, Chen et al. 2024) on supervised data: each iteration samples the model's
    own answer to every training prompt, then trains `n_epochs` passes of a DPO loss with the data's answer
    as chosen, the model's sample as rejected, and the model as it was at the iteration's start as the
    reference."""

    iterations: int = Field(default=DEFAULT_SELF_PLAY_ITERATIONS, ge=1, le=10,
                            description="Rounds of sampling then training; each round's reference is the last round's model.")
    beta: float = Field(default=DEFAULT_BETA, gt=0, le=10, description="The DPO loss's beta (SPIN's lambda).")
    temperature: float = Field(default=1.0, ge=0, le=2,
                               description="Sampling temperature of the model's own answers (0: greedy).")
    max_completion_tokens: int | None = Field(
        default=None, ge=1, le=32768,
        description="The longest own answer sampled, in tokens (default: the training data's longest answer).")
    sft_epochs: int = Field(
        default=0, ge=0, le=100,
        description=("Supervised passes over the data before the first round (SPIN improves a supervised "
                     "fine-tune; docs/training.md)."))


class SupervisedMethod(_MethodOptions):
    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)
    self_play: SelfPlay | None = Field(
        default=None, description="SPIN: iterate on the model's own samples as rejected answers (docs/training.md).")

    @model_validator(mode="after")
    def _packing(self) -> SupervisedMethod:
        if self.packing and self.adapter.type in PROMPT_LEARNING:
            raise ValueError(f"packing cannot be used with {self.adapter.type}: its virtual tokens belong to one sequence")
        if self.self_play is not None:
            if self.adapter.type not in LORA_FAMILY:
                raise ValueError("self_play (SPIN) trains lora, dora or rslora adapters (QLoRA included): its "
                                 "sampler is the serving engine, which computes LoRA-family adapters")
            if self.adapter.init in BASE_MODIFYING_INITS:
                raise ValueError(f"self_play cannot use the '{self.adapter.init}' initialisation: it changes the base "
                                 "weights the sampler computes with")
            for option in ("packing", "rehearsal", "stop_when_learned", "early_stopping"):
                if getattr(self, option):
                    raise ValueError(f"{option} does not apply to self_play (SPIN trains pairs of answers with a "
                                     "DPO loss, per sequence, for every iteration it is asked)")
        return self


class DpoMethod(_MethodOptions):
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)

    @model_validator(mode="after")
    def _dpo(self) -> DpoMethod:
        if self.stop_when_learned:
            raise ValueError("stop_when_learned applies to supervised jobs (DPO has no target tokens to learn)")
        if self.rehearsal:
            raise ValueError("rehearsal applies to supervised jobs (DPO's reference model already anchors it)")
        if self.packing:
            raise ValueError("packing is not supported for dpo (chosen and rejected replies are scored per sequence)")
        if self.adapter.init in BASE_MODIFYING_INITS:
            raise ValueError(f"dpo cannot use the '{self.adapter.init}' initialisation: it changes the base weights, "
                             "and DPO's reference model is the base with the adapter disabled")
        return self


class ReinforcementMethod(_Strict):
    """OpenAI's `method.reinforcement`: a grader and hyperparameters, plus ftaas's extensions (the adapter,
    sampling, the KL weight and the clip range of the policy-gradient loss)."""

    grader: Grader
    hyperparameters: ReinforcementHyperparameters = Field(default_factory=ReinforcementHyperparameters)
    adapter: AdapterOptions = Field(default_factory=AdapterOptions)
    max_seq_len: int | None = Field(default=None, ge=16, le=131072, description="Longer prompts are truncated.")
    max_completion_tokens: int = Field(default=DEFAULT_COMPLETION_TOKENS, ge=1, le=32768,
                                       description="The longest sample drawn per prompt, in tokens.")
    temperature: float = Field(default=1.0, gt=0, le=2, description="Sampling temperature of training samples.")
    beta: float = Field(default=DEFAULT_KL_BETA, ge=0, le=10,
                        description="Weight of the KL divergence to the base model (the adapter switched off).")
    epsilon: float = Field(default=DEFAULT_CLIP_EPSILON, gt=0, le=1,
                           description="Clip range of the policy-gradient ratio.")
    lr_scheduler: Literal["linear", "cosine", "constant"] = "constant"
    n_checkpoints: int | None = Field(default=None, ge=1, le=100,
                                      description="Checkpoints spread evenly over the run (default: one per epoch).")

    @model_validator(mode="after")
    def _adapter(self) -> ReinforcementMethod:
        if self.adapter.type not in LORA_FAMILY:
            raise ValueError(f"reinforcement fine-tuning trains LoRA-family adapters (lora, dora, rslora, QLoRA), "
                             f"not {self.adapter.type}")
        if self.adapter.init in BASE_MODIFYING_INITS:
            raise ValueError(f"reinforcement cannot use the '{self.adapter.init}' initialisation: it changes the base "
                             "weights, and the KL reference is the base with the adapter switched off")
        return self


class Method(_Strict):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: ReinforcementMethod | None = None

    @model_validator(mode="after")
    def _matching_section(self) -> Method:
        for other in ("supervised", "dpo", "reinforcement"):
            if other != self.type and getattr(self, other) is not None:
                raise ValueError(f"method.{other} given for a method of type {self.type!r}")
        if self.type == "supervised" and self.supervised is None:
            self.supervised = SupervisedMethod()
        if self.type == "dpo" and self.dpo is None:
            self.dpo = DpoMethod()
        if self.type == "reinforcement" and self.reinforcement is None:
            raise ValueError("method.reinforcement with its grader is required for a method of type 'reinforcement'")
        return self

    @property
    def section(self) -> SupervisedMethod | DpoMethod | ReinforcementMethod:
        section = {"supervised": self.supervised, "dpo": self.dpo, "reinforcement": self.reinforcement}[self.type]
        assert section is not None
        return section

    @property
    def hyperparameters(self) -> SupervisedHyperparameters:
        return self.section.hyperparameters

    def to_json(self, hyperparameters: dict[str, Any] | None = None, data_format: str | None = None) -> dict[str, Any]:
        """The method as recorded on the job: defaults filled in; `hyperparameters` and, given the training
        file's `data_format`, rehearsal (chat data only) once resolved. A reinforcement method keeps its
        grader as sent."""
        section = self.section
        if isinstance(section, ReinforcementMethod):
            return {"type": self.type, self.type: {
                "grader": section.grader.model_dump(mode="json", exclude_none=True),
                "hyperparameters": hyperparameters or section.hyperparameters.model_dump(mode="json", exclude_none=True),
                "adapter": section.adapter.resolved(),
                "max_seq_len": section.max_seq_len or DEFAULT_MAX_SEQ_LEN,
                "max_completion_tokens": section.max_completion_tokens, "temperature": section.temperature,
                "beta": section.beta, "epsilon": section.epsilon, "lr_scheduler": section.lr_scheduler,
                "n_checkpoints": section.n_checkpoints}}
        packing = section.packing if section.packing is not None else (
            self.type == "supervised" and section.adapter.type not in PROMPT_LEARNING)
        body: dict[str, Any] = {
            "hyperparameters": hyperparameters or section.hyperparameters.model_dump(mode="json"),
            "adapter": section.adapter.resolved(),
            "max_seq_len": section.max_seq_len or DEFAULT_MAX_SEQ_LEN,
            "packing": packing,
            "lr_scheduler": section.lr_scheduler,
            "warmup_ratio": section.warmup_ratio,
            "n_checkpoints": section.n_checkpoints,
            "eval_interval": section.eval_interval or DEFAULT_EVAL_INTERVAL,
            "early_stopping": section.early_stopping.model_dump() if section.early_stopping else None,
            "stop_when_learned": self.stops_when_learned,
            "rehearsal": self.rehearses if data_format is None else self.rehearses and data_format == CHAT,
            "gradient_checkpointing": section.gradient_checkpointing,
        }
        if isinstance(section, SupervisedMethod) and section.self_play is not None:
            body["packing"] = False
            body["self_play"] = section.self_play.model_dump(mode="json")
        return {"type": self.type, self.type: body}

    @property
    def self_play(self) -> SelfPlay | None:
        return self.supervised.self_play if self.type == "supervised" and self.supervised is not None else None

    @property
    def rehearses(self) -> bool:
        """The resolved `rehearsal` (before the data format is known): as asked, else `_on_with_auto_epochs`."""
        return self._on_with_auto_epochs(getattr(self.section, "rehearsal", None))

    @property
    def stops_when_learned(self) -> bool:
        """The resolved `stop_when_learned`: as asked, else `_on_with_auto_epochs`."""
        return self._on_with_auto_epochs(getattr(self.section, "stop_when_learned", None))

    def _on_with_auto_epochs(self, asked: bool | None) -> bool:
        """An option that "auto" turns on: as asked, else on for supervised jobs whose `n_epochs` is "auto"."""
        if self.type == "reinforcement" or self.self_play is not None:
            return False
        if asked is not None:
            return asked
        return self.type == "supervised" and self.section.hyperparameters.n_epochs == AUTO


def auto_epochs(example_count: int) -> int:
    """`n_epochs` for "auto": enough passes for a small file to be learned (stop_when_learned ends the run
    once it is), fewer as files grow, and the hosted API's rule for large files."""
    n = max(1, example_count)
    if n <= SMALL_FILE_EXAMPLES:
        return SMALL_FILE_EPOCHS
    if n <= MEDIUM_FILE_EXAMPLES:
        return max(3, round(SMALL_FILE_EPOCHS * math.sqrt(SMALL_FILE_EXAMPLES / n)))
    return 3 if n * 3 <= 25_000 else max(1, 25_000 // n)


def auto_learning_rate_multiplier(method: Method, example_count: int) -> float:
    """`learning_rate_multiplier` for "auto": SMALL_FILE_MULTIPLIER for supervised LoRA-family jobs on files
    up to MEDIUM_FILE_EXAMPLES, falling (log-linearly in the example count) to 1 at LARGE_FILE_EXAMPLES;
    1 for DPO and for the other adapter types (measured only for supervised LoRA; docs/training.md)."""
    if method.type != "supervised" or method.section.adapter.type not in LORA_FAMILY or method.self_play is not None:
        return 1.0
    n = max(1, example_count)
    if n <= MEDIUM_FILE_EXAMPLES:
        return SMALL_FILE_MULTIPLIER
    if n >= LARGE_FILE_EXAMPLES:
        return 1.0
    fraction = math.log(n / MEDIUM_FILE_EXAMPLES) / math.log(LARGE_FILE_EXAMPLES / MEDIUM_FILE_EXAMPLES)
    return round(SMALL_FILE_MULTIPLIER ** (1 - fraction), 2)


def resolve_hyperparameters(method: Method, example_count: int) -> dict[str, Any]:
    """Concrete values for every `"auto"`, by the rules in the module docstring."""
    requested = method.hyperparameters
    n = max(1, example_count)
    if requested.n_epochs != AUTO:
        n_epochs = int(requested.n_epochs)
    else:
        n_epochs = SELF_PLAY_AUTO_EPOCHS if method.self_play is not None else auto_epochs(n)
    batch_size = min(256, max(1, math.ceil(n * 0.002))) if requested.batch_size == AUTO else int(requested.batch_size)
    multiplier = (auto_learning_rate_multiplier(method, n) if requested.learning_rate_multiplier == AUTO
                  else float(requested.learning_rate_multiplier))
    resolved: dict[str, Any] = {"n_epochs": n_epochs, "batch_size": batch_size, "learning_rate_multiplier": multiplier}
    if isinstance(requested, DpoHyperparameters):
        resolved["beta"] = DEFAULT_BETA if requested.beta == AUTO else float(requested.beta)
    if isinstance(requested, ReinforcementHyperparameters):
        resolved.update(resolve_reinforcement(requested, n))
    return resolved


def resolve_reinforcement(requested: ReinforcementHyperparameters, example_count: int) -> dict[str, Any]:
    """The reinforcement-only hyperparameters with "auto" resolved, and `n_epochs`, `batch_size` and
    `learning_rate_multiplier` by the reinforcement rules (RFT_* constants; docs/training.md)."""
    n = max(1, example_count)
    multiplier = 1.0 if requested.compute_multiplier == AUTO else float(requested.compute_multiplier)
    batch = min(n, RFT_BATCH_PROMPTS) if requested.batch_size == AUTO else int(requested.batch_size)
    epochs = (max(1, min(RFT_MAX_EPOCHS, math.ceil(RFT_PROMPT_VISITS / n))) if requested.n_epochs == AUTO
              else int(requested.n_epochs))
    resolved: dict[str, Any] = {
        "n_epochs": epochs, "batch_size": batch,
        "learning_rate_multiplier": (RFT_LEARNING_RATE_MULTIPLIER if requested.learning_rate_multiplier == AUTO
                                     else float(requested.learning_rate_multiplier)),
        "compute_multiplier": multiplier,
        "samples_per_prompt": max(2, round(DEFAULT_GROUP_SIZE * multiplier)),
        "eval_interval": DEFAULT_EVAL_INTERVAL if requested.eval_interval == AUTO else int(requested.eval_interval),
        "eval_samples": 1 if requested.eval_samples == AUTO else int(requested.eval_samples),
    }
    if requested.reasoning_effort is not None:
        resolved["reasoning_effort"] = requested.reasoning_effort
    return resolved


# ------------------------------------------------------------------------------ the resolved spec
@dataclass(frozen=True)
class AdapterSettings:
    type: str = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] | None = "all-linear"
    init: str = "default"
    num_virtual_tokens: int = 16
    #: "nf4": the frozen base is held in 4-bit NF4 while training (QLoRA); None: as loaded
    quantization: str | None = None

    @property
    def modifies_base(self) -> bool:
        return self.type in LORA_FAMILY and self.init in BASE_MODIFYING_INITS

    @property
    def is_prompt_learning(self) -> bool:
        return self.type in PROMPT_LEARNING

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AdapterSettings:
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and v is not None}
        if isinstance(values.get("target_modules"), list):
            values["target_modules"] = tuple(values["target_modules"])
        if data.get("type") == "ia3" and data.get("target_modules") is None:
            values["target_modules"] = None
        return cls(**values)


@dataclass(frozen=True)
class EarlyStoppingSettings:
    patience: int = 3
    min_delta: float = 0.0


@dataclass(frozen=True)
class TrainingSpec:
    """Everything the trainer needs, resolved; saved beside the adapter as provenance."""

    base_model: str
    method: str  # "supervised" | "dpo" | "reinforcement"
    n_epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    beta: float = DEFAULT_BETA
    adapter: AdapterSettings = field(default_factory=AdapterSettings)
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    packing: bool = False
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    #: Checkpoints over the run; None means one at the end of every epoch.
    n_checkpoints: int | None = None
    eval_interval: int = DEFAULT_EVAL_INTERVAL
    early_stopping: EarlyStoppingSettings | None = None
    #: End after the first epoch whose training token accuracy reaches LEARNED_ACCURACY (supervised only).
    stop_when_learned: bool = False
    #: Train next to the base model's own answers to general prompts (worker.training.rehearsal).
    rehearsal: bool = False
    #: True / False, or None: decided by the worker from the memory estimate before training (auto).
    gradient_checkpointing: bool | None = None
    #: Reinforcement only: the grader (its wire JSON), samples drawn per prompt and per validation prompt,
    #: the longest sample, the sampling temperature, the KL weight and the clip range of the loss.
    grader: dict[str, Any] | None = None
    samples_per_prompt: int = DEFAULT_GROUP_SIZE
    eval_samples: int = 1
    max_completion_tokens: int = DEFAULT_COMPLETION_TOKENS
    temperature: float = 1.0
    kl_beta: float = DEFAULT_KL_BETA
    clip_epsilon: float = DEFAULT_CLIP_EPSILON
    #: SPIN (supervised with self_play): the rounds of sampling then training (0: off; `n_epochs` then counts
    #: the passes of all rounds together, `n_epochs // self_play_iterations` each, and `beta` is the DPO
    #: loss's), the sampling temperature of the model's own answers, and the longest one (None: the data's
    #: longest answer, up to SELF_PLAY_MAX_COMPLETION_TOKENS).
    self_play_iterations: int = 0
    self_play_temperature: float = 1.0
    self_play_max_tokens: int | None = None
    #: SPIN: supervised passes before the first round (counted in `n_epochs`)
    self_play_sft_epochs: int = 0

    @property
    def epochs_per_iteration(self) -> int:
        """SPIN: the passes over the pairs of one round (the whole run's epochs without self-play)."""
        if not self.self_play_iterations:
            return self.n_epochs
        return (self.n_epochs - self.self_play_sft_epochs) // self.self_play_iterations

    @classmethod
    def for_job(cls, *, base_model: str, method: dict[str, Any], hyperparameters: dict[str, Any], seed: int) -> TrainingSpec:
        """From the method JSON recorded on a job (see `Method.to_json`)."""
        kind = method["type"]
        options = method.get(kind) or {}
        adapter = AdapterSettings.from_json(options.get("adapter") or {})
        stopping = options.get("early_stopping")
        if kind == "reinforcement":
            return cls(
                base_model=base_model, method=kind, n_epochs=int(hyperparameters["n_epochs"]),
                batch_size=int(hyperparameters["batch_size"]),
                learning_rate=BASE_LEARNING_RATES[adapter.type] * float(hyperparameters["learning_rate_multiplier"]),
                seed=int(seed), adapter=adapter, max_seq_len=int(options.get("max_seq_len") or DEFAULT_MAX_SEQ_LEN),
                lr_scheduler=options.get("lr_scheduler", "constant"), n_checkpoints=options.get("n_checkpoints"),
                eval_interval=int(hyperparameters.get("eval_interval") or DEFAULT_EVAL_INTERVAL),
                grader=options["grader"],
                samples_per_prompt=int(hyperparameters.get("samples_per_prompt") or DEFAULT_GROUP_SIZE),
                eval_samples=int(hyperparameters.get("eval_samples") or 1),
                max_completion_tokens=int(options.get("max_completion_tokens") or DEFAULT_COMPLETION_TOKENS),
                temperature=float(options.get("temperature", 1.0)),
                kl_beta=float(options.get("beta", DEFAULT_KL_BETA)),
                clip_epsilon=float(options.get("epsilon", DEFAULT_CLIP_EPSILON)),
            )
        self_play = options.get("self_play") or {}
        iterations = int(self_play.get("iterations", 0)) if kind == "supervised" else 0
        return cls(
            base_model=base_model,
            method=kind,
            n_epochs=int(hyperparameters["n_epochs"]) * max(1, iterations) + int(self_play.get("sft_epochs", 0)),
            batch_size=int(hyperparameters["batch_size"]),
            learning_rate=BASE_LEARNING_RATES[adapter.type] * float(hyperparameters["learning_rate_multiplier"]),
            seed=int(seed),
            beta=float(self_play["beta"]) if iterations else float(hyperparameters.get("beta", DEFAULT_BETA)),
            adapter=adapter,
            max_seq_len=int(options.get("max_seq_len") or DEFAULT_MAX_SEQ_LEN),
            packing=bool(options.get("packing", kind == "supervised" and not adapter.is_prompt_learning)),
            lr_scheduler=options.get("lr_scheduler", "linear"),
            warmup_ratio=float(options.get("warmup_ratio", 0.0)),
            n_checkpoints=options.get("n_checkpoints"),
            eval_interval=int(options.get("eval_interval") or DEFAULT_EVAL_INTERVAL),
            early_stopping=EarlyStoppingSettings(**stopping) if stopping else None,
            stop_when_learned=bool(options.get("stop_when_learned", False)) and kind == "supervised",
            rehearsal=bool(options.get("rehearsal", False)) and kind == "supervised",
            gradient_checkpointing=None if options.get("gradient_checkpointing", AUTO) == AUTO
            else bool(options["gradient_checkpointing"]),
            self_play_iterations=iterations,
            self_play_temperature=float(self_play.get("temperature", 1.0)),
            self_play_max_tokens=self_play.get("max_completion_tokens"),
            self_play_sft_epochs=int(self_play.get("sft_epochs", 0)),
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        target = data["adapter"]["target_modules"]
        data["adapter"]["target_modules"] = list(target) if isinstance(target, tuple) else target
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingSpec:
        values = dict(data)
        values["adapter"] = AdapterSettings.from_json(values["adapter"])
        if values.get("early_stopping"):
            values["early_stopping"] = EarlyStoppingSettings(**values["early_stopping"])
        return cls(**values)
