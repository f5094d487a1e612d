"""The training API's built-in losses: which inputs and settings each takes, checked where a request arrives
(the API, without torch). The worker computes them (worker.training_api.losses).

Every loss is a sum over a datum's tokens (the SDK reports it as `loss:sum`); position i of a datum's tokens
predicts `target_tokens[i]`, and `logprobs` below means the sampler's log probability of that target token:

| loss | inputs | settings (default) | loss |
|---|---|---|---|
| cross_entropy | target_tokens, weights? | | -sum(w * logp) |
| importance_sampling | target_tokens, logprobs, advantages, weights? | | -sum(w * exp(logp - q) * A) |
| ppo | same | clip_low_threshold (0.8), clip_high_threshold (1.2) | -sum(w * min(r * A, clip(r, lo, hi) * A)) |
| cispo | same | clip_low_threshold (0.0), clip_high_threshold (4.0) | -sum(w * sg(clip(r, lo, hi)) * logp * A) |
| dro | same | beta (0.05) | -sum(w * (logp * A - beta / 2 * (logp - q)^2)) |

with logp the trained model's log probability of the target, q the sampler's, r = exp(logp - q), sg a stop-
gradient. `weights` (default 1) weigh tokens in every loss (0 leaves a prompt token out). These are the
definitions of the tinker documentation; the thresholds of ppo and cispo are ratios, not epsilons.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from contracts.errors import InvalidRequest

#: loss -> its required inputs (every loss also takes `weights`)
INPUTS = {
    "cross_entropy": ("target_tokens",),
    "importance_sampling": ("target_tokens", "logprobs", "advantages"),
    "ppo": ("target_tokens", "logprobs", "advantages"),
    "cispo": ("target_tokens", "logprobs", "advantages"),
    "dro": ("target_tokens", "logprobs", "advantages"),
}
OPTIONAL = ("weights",)
#: loss -> its settings and their defaults
SETTINGS: dict[str, dict[str, float]] = {
    "cross_entropy": {}, "importance_sampling": {},
    "ppo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "cispo": {"clip_low_threshold": 0.0, "clip_high_threshold": 4.0},
    "dro": {"beta": 0.05},
}
#: losses the SDK names that ftaas does not compute (a 400 names them)
UNSUPPORTED = ("gspo", "stable_reinforce", "custom")


def settings_of(loss_fn: str, config: Mapping[str, float | str]) -> dict[str, float]:
    """The loss's settings: its defaults with the request's values; an unknown loss, an unknown setting or
    a value out of range is an InvalidRequest naming it."""
    if loss_fn not in SETTINGS:
        known = ", ".join(SETTINGS)
        detail = " (not supported by ftaas)" if loss_fn in UNSUPPORTED else ""
        raise InvalidRequest(f"unknown loss_fn {loss_fn!r}{detail}; ftaas computes {known}", param="loss_fn")
    values = dict(SETTINGS[loss_fn])
    for key, value in config.items():
        if key not in values:
            allowed = ", ".join(values) or "none"
            raise InvalidRequest(f"{loss_fn} takes no setting {key!r} (its settings: {allowed})",
                                 param=f"loss_fn_config.{key}")
        if isinstance(value, str) or not math.isfinite(value):
            raise InvalidRequest(f"loss_fn_config.{key} must be a finite number", param=f"loss_fn_config.{key}")
        values[key] = float(value)
    if "clip_low_threshold" in values:
        low, high = values["clip_low_threshold"], values["clip_high_threshold"]
        if not 0 <= low <= 1 <= high:
            raise InvalidRequest(f"{loss_fn}'s thresholds are ratios: 0 <= clip_low_threshold <= 1 <= "
                                 f"clip_high_threshold (got {low}, {high})", param="loss_fn_config")
    if values.get("beta", 0.0) < 0:
        raise InvalidRequest("dro's beta must not be negative", param="loss_fn_config.beta")
    return values


def check_datum(loss_fn: str, index: int, tokens: int, inputs: Mapping[str, tuple[int, ...]]) -> None:
    """A datum's inputs (name -> shape) for `loss_fn`: every required one, no unknown one, each with one
    value per token."""
    where = f"data.{index}.loss_fn_inputs"
    required = INPUTS[loss_fn]
    for name in required:
        if name not in inputs:
            raise InvalidRequest(f"{loss_fn} needs {name!r} in every datum's loss_fn_inputs", param=f"{where}.{name}")
    for name, shape in inputs.items():
        if name not in required and name not in OPTIONAL:
            allowed = ", ".join((*required, *OPTIONAL))
            raise InvalidRequest(f"{loss_fn} takes no input {name!r} (its inputs: {allowed})", param=f"{where}.{name}")
        if shape != (tokens,):
            raise InvalidRequest(f"{name} must have one value per input token ({tokens}); its shape is {list(shape)}",
                                 param=f"{where}.{name}")
    if tokens == 0:
        raise InvalidRequest("a datum needs at least one input token", param=f"data.{index}.model_input")
