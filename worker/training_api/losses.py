"""The built-in losses of the training API, computed from the trained model's log probabilities of the
targets (definitions, inputs and settings: contracts.training_api.losses)."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target_i) at each position, in float32 (logits [N, V], targets [N])."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)


def loss_sum(loss_fn: str, logp: torch.Tensor, inputs: Mapping[str, torch.Tensor],
             settings: Mapping[str, float]) -> torch.Tensor:
    """The datum's loss, a sum over its tokens (settings: contracts.training_api.losses.settings_of)."""
    weights = inputs.get("weights")
    w = torch.ones_like(logp) if weights is None else weights.to(logp)
    if loss_fn == "cross_entropy":
        return -(w * logp).sum()
    sampled = inputs["logprobs"].to(logp)
    advantages = inputs["advantages"].to(logp)
    if loss_fn == "importance_sampling":
        return -(w * torch.exp(logp - sampled) * advantages).sum()
    if loss_fn == "ppo":
        ratio = torch.exp(logp - sampled)
        clipped = ratio.clamp(settings["clip_low_threshold"], settings["clip_high_threshold"])
        return -(w * torch.minimum(ratio * advantages, clipped * advantages)).sum()
    if loss_fn == "cispo":
        clipped = torch.exp(logp - sampled).clamp(settings["clip_low_threshold"], settings["clip_high_threshold"])
        return -(w * clipped.detach() * logp * advantages).sum()
    if loss_fn == "dro":
        return -(w * (logp * advantages - 0.5 * settings["beta"] * (logp - sampled) ** 2)).sum()
    raise ValueError(f"unknown loss {loss_fn!r}")  # settings_of refused it where the request arrived
