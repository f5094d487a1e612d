"""The training API's built-in losses: each one's value and its gradient with respect to the trained model's
log probabilities, as their definitions say (contracts.training_api.losses), and the checks a request's loss,
settings and inputs pass where it arrives."""

from __future__ import annotations

import pytest
import torch

from contracts.errors import InvalidRequest
from contracts.training_api.losses import check_datum, settings_of
from worker.training_api.losses import loss_sum, target_logprobs

SAMPLED = torch.tensor([-1.0, -1.0, -1.0, -1.0])
#: r = exp(logp - q): 0.5, 0.9, 1.1, 3.0 against the sampler's -1
LOGP = torch.log(torch.tensor([0.5, 0.9, 1.1, 3.0])) + SAMPLED
ADVANTAGES = torch.tensor([-1.0, 2.0, 1.0, 1.0])
WEIGHTS = torch.tensor([1.0, 1.0, 0.5, 1.0])


def value_and_gradient(loss_fn: str, **config: float) -> tuple[float, torch.Tensor]:
    logp = LOGP.clone().requires_grad_(True)
    loss = loss_sum(loss_fn, logp, {"logprobs": SAMPLED, "advantages": ADVANTAGES, "weights": WEIGHTS},
                    settings_of(loss_fn, config))
    loss.backward()
    return loss.item(), logp.grad


def test_cross_entropy_is_the_weighted_negative_log_likelihood_of_the_targets() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], requires_grad=True)
    targets = torch.tensor([0, 2])
    weights = torch.tensor([1.0, 0.0])  # the second position is a prompt token: no loss, no gradient
    loss = loss_sum("cross_entropy", target_logprobs(logits, targets), {"weights": weights}, {})
    loss.backward()
    assert loss.item() == pytest.approx(-torch.log_softmax(logits[0], -1)[0].item())
    expected = torch.softmax(logits[0].detach(), -1) - torch.tensor([1.0, 0.0, 0.0])
    assert torch.allclose(logits.grad[0], expected) and torch.all(logits.grad[1] == 0)


def test_importance_sampling_weighs_each_token_by_its_ratio_and_advantage() -> None:
    value, gradient = value_and_gradient("importance_sampling")
    ratio = torch.exp(LOGP - SAMPLED)
    assert value == pytest.approx(-(WEIGHTS * ratio * ADVANTAGES).sum().item())
    assert torch.allclose(gradient, -WEIGHTS * ratio * ADVANTAGES)


def test_ppo_stops_the_gradient_where_the_ratio_left_its_range_in_the_advantages_direction() -> None:
    value, gradient = value_and_gradient("ppo")  # thresholds 0.8 and 1.2
    ratio = torch.exp(LOGP - SAMPLED)
    # token 0: r 0.5 < 0.8 with A < 0: clipped (no gradient); token 3: r 3.0 > 1.2 with A > 0: clipped;
    # tokens 1 and 2 inside the range: the importance-sampling gradient.
    assert gradient[0] == 0 and gradient[3] == 0
    assert torch.allclose(gradient[1:3], (-WEIGHTS * ratio * ADVANTAGES)[1:3])
    assert value == pytest.approx(-(0.8 * -1.0 + 0.9 * 2.0 + 0.5 * 1.1 * 1.0 + 1.2 * 1.0), abs=1e-6)
    _, wide = value_and_gradient("ppo", clip_low_threshold=0.1, clip_high_threshold=10.0)
    assert torch.allclose(wide, -WEIGHTS * ratio * ADVANTAGES)  # nothing clipped: importance sampling


def test_cispo_keeps_every_tokens_gradient_with_the_clipped_ratio_as_its_coefficient() -> None:
    value, gradient = value_and_gradient("cispo", clip_low_threshold=0.0, clip_high_threshold=2.0)
    clipped = torch.exp(LOGP - SAMPLED).clamp(0.0, 2.0)
    assert torch.allclose(gradient, -WEIGHTS * clipped * ADVANTAGES)  # d/dlogp of sg(c) * logp * A
    assert value == pytest.approx(-(WEIGHTS * clipped * LOGP * ADVANTAGES).sum().item())


def test_dro_pulls_with_the_advantage_and_back_toward_the_sampler_quadratically() -> None:
    _, gradient = value_and_gradient("dro", beta=0.5)
    assert torch.allclose(gradient, -WEIGHTS * (ADVANTAGES - 0.5 * (LOGP - SAMPLED)))
    _, default = value_and_gradient("dro")
    assert torch.allclose(default, -WEIGHTS * (ADVANTAGES - 0.05 * (LOGP - SAMPLED)))


def test_a_requests_loss_and_settings_are_checked_with_their_defaults_filled_in() -> None:
    assert settings_of("ppo", {}) == {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
    assert settings_of("cispo", {"clip_high_threshold": 5}) == {"clip_low_threshold": 0.0, "clip_high_threshold": 5.0}
    with pytest.raises(InvalidRequest, match="not supported by ftaas") as refused:
        settings_of("gspo", {})
    assert refused.value.param == "loss_fn"
    with pytest.raises(InvalidRequest, match="takes no setting 'beta'") as refused:
        settings_of("ppo", {"beta": 0.1})
    assert refused.value.param == "loss_fn_config.beta"
    for bad in ({"clip_low_threshold": 1.5}, {"clip_high_threshold": 0.5}, {"clip_low_threshold": float("nan")}):
        with pytest.raises(InvalidRequest):
            settings_of("ppo", bad)
    with pytest.raises(InvalidRequest, match="finite number"):
        settings_of("dro", {"beta": "high"})


def test_a_datums_inputs_must_be_the_losss_own_with_one_value_per_token() -> None:
    check_datum("ppo", 0, 4, {"target_tokens": (4,), "logprobs": (4,), "advantages": (4,), "weights": (4,)})
    check_datum("cross_entropy", 0, 2, {"target_tokens": (2,)})  # weights default to 1
    cases = [("ppo", {"target_tokens": (4,), "advantages": (4,)}, "needs 'logprobs'", "data.1.loss_fn_inputs.logprobs"),
             ("cross_entropy", {"target_tokens": (4,), "advantages": (4,)}, "takes no input 'advantages'",
              "data.1.loss_fn_inputs.advantages"),
             ("cross_entropy", {"target_tokens": (3,)}, "one value per input token", "data.1.loss_fn_inputs.target_tokens"),
             ("cross_entropy", {"target_tokens": (2, 2)}, "one value per input token",
              "data.1.loss_fn_inputs.target_tokens")]
    for loss_fn, inputs, message, param in cases:
        with pytest.raises(InvalidRequest, match=message) as refused:
            check_datum(loss_fn, 1, 4, inputs)
        assert refused.value.param == param
