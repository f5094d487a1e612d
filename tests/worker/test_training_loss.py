"""The chunked loss at scored positions equals the model's own logits and cross-entropy, and applies only
where the model's logits are its output layer's product."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from worker.training import loss
from worker.training.loss import head_computes_logits, head_outputs_hidden, linear_cross_entropy


def reference(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    logits = head(hidden).float()
    return F.cross_entropy(logits, targets, reduction="sum"), int((logits.argmax(-1) == targets).sum())


@pytest.mark.parametrize("bias", [False, True])
def test_loss_accuracy_and_gradient_equal_the_full_logits_across_chunk_boundaries(
        bias: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loss, "CHUNK_ROWS", 16)  # 50 positions: three full chunks and a partial one
    torch.manual_seed(0)
    head = torch.nn.Linear(24, 300, bias=bias).requires_grad_(False)
    hidden = (torch.randn(50, 24) * 3).requires_grad_(True)
    targets = torch.randint(0, 300, (50,))
    targets[:10] = head(hidden[:10]).argmax(-1)  # some positions predicted right

    expected_loss, expected_correct = reference(hidden, head, targets)
    (expected_loss * 0.5).backward()
    expected_grad, hidden.grad = hidden.grad.clone(), None

    loss_sum, correct = linear_cross_entropy(hidden, head, targets, torch.float32)
    (loss_sum * 0.5).backward()  # the upstream gradient scales the one computed in the forward pass

    assert correct == expected_correct >= 10
    assert torch.allclose(loss_sum, expected_loss, rtol=1e-6)
    assert torch.allclose(hidden.grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_in_bf16_the_product_is_bf16_and_the_softmax_fp32_as_under_autocast() -> None:
    torch.manual_seed(1)
    head = torch.nn.Linear(32, 500, bias=False).requires_grad_(False)
    hidden = torch.randn(40, 32).requires_grad_(True)
    targets = torch.randint(0, 500, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected_loss, expected_correct = reference(hidden, head, targets)
    expected_loss.backward()
    expected_grad, hidden.grad = hidden.grad.clone(), None

    loss_sum, correct = linear_cross_entropy(hidden, head, targets, torch.bfloat16)
    loss_sum.backward()
    assert correct == expected_correct
    assert torch.allclose(loss_sum, expected_loss, rtol=1e-4)
    assert F.cosine_similarity(hidden.grad.flatten(), expected_grad.flatten(), dim=0) > 0.999


def test_without_gradients_the_same_figures_come_and_nothing_is_kept_for_a_backward_pass() -> None:
    """The evaluation passes run under no_grad: the loss and accuracy are the full logits', and no gradient
    is computed or kept."""
    torch.manual_seed(2)
    head = torch.nn.Linear(8, 20).requires_grad_(False)
    hidden, targets = torch.randn(5, 8), torch.randint(0, 20, (5,))
    targets[:2] = head(hidden[:2]).argmax(-1)
    with torch.no_grad():
        loss_sum, correct = linear_cross_entropy(hidden, head, targets, torch.float32)
        expected_loss, expected_correct = reference(hidden, head, targets)
    assert not loss_sum.requires_grad and loss_sum.grad_fn is None
    assert correct == expected_correct >= 2 and torch.allclose(loss_sum, expected_loss, rtol=1e-6)


def tiny_llama(**overrides: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2, **overrides))


def test_a_plain_frozen_head_is_used_and_returns_the_hidden_states_while_switched() -> None:
    model = tiny_llama().requires_grad_(False)
    head = head_computes_logits(model, [1, 5, 9])
    assert head is model.lm_head
    ids = torch.tensor([[1, 5, 9, 3]])
    with head_outputs_hidden(head):
        hidden = model(input_ids=ids).logits
    assert hidden.shape == (1, 4, 32)
    assert torch.allclose(head(hidden), model(input_ids=ids).logits)  # switched back after the block


def test_a_model_that_changes_its_logits_after_the_head_or_trains_the_head_keeps_its_own_logits() -> None:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    softcapped = Gemma2ForCausalLM(Gemma2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, final_logit_softcapping=2.0)).requires_grad_(False)
    assert head_computes_logits(softcapped, [1, 5, 9]) is None

    trained_head = tiny_llama()
    trained_head.requires_grad_(False).lm_head.requires_grad_(True)
    assert head_computes_logits(trained_head, [1, 5, 9]) is None
