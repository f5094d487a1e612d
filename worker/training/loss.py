"""The supervised loss computed with the model's output layer, a chunk of positions at a time.

A step's loss needs the model's output layer applied at every scored position and a log-softmax over the
whole vocabulary there: for a 49k-token vocabulary and 2,000 scored positions that is 100M logits, written
in the compute dtype, copied to fp32, normalised, and again in the backward pass (a zero-filled gradient,
the log-softmax's backward, a cast back). Measured on SmolLM2-135M on a 2-core CPU: 2.4 s of a 6.8 s step,
against 1.3 s for every matrix product of the model together (docs/benchmarks.md).

`linear_cross_entropy` does the same arithmetic a chunk of positions at a time and computes the gradient
with respect to the hidden states during the forward pass (softmax minus the one-hot target, times the
output layer's weight), so no tensor of the full vocabulary outlives its chunk and nothing is written twice.
This is the approach of Liger Kernel's fused linear cross-entropy; Liger is Triton code for CUDA only, and
this is plain PyTorch so it runs on the CPU as on a GPU.

It applies only where the model's logits are its output layer's product and nothing else (no softcapping or
scaling after it) and the output layer is a frozen `nn.Linear` (`head_computes_logits` checks), and where
the layer's weight is whole in the process (one process or data parallel; the trainer does not use it under
FSDP). Elsewhere the trainer takes the model's own logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

#: Positions per chunk: a chunk's fp32 logits are ROWS x vocabulary x 4 bytes (50 MB for a 49k vocabulary).
CHUNK_ROWS = 256


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, compute_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        matrix = weight.to(compute_dtype)
        offset = None if bias is None else bias.to(compute_dtype)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        for start in range(0, hidden.shape[0], CHUNK_ROWS):
            rows = slice(start, start + CHUNK_ROWS)
            chunk_targets = targets[rows]
            logits = torch.nn.functional.linear(hidden[rows].to(compute_dtype), matrix, offset).float()
            normaliser = logits.logsumexp(-1)
            target_logits = logits.gather(1, chunk_targets.unsqueeze(1)).squeeze(1)
            loss_sum += (normaliser - target_logits).sum()
            correct += (logits.argmax(-1) == chunk_targets).sum()
            if grad_hidden is not None:
                # d(loss)/d(logits) = softmax - one_hot(target), computed in place over the chunk's logits
                probabilities = logits.sub_(normaliser.unsqueeze(1)).exp_()
                probabilities[torch.arange(len(chunk_targets), device=logits.device), chunk_targets] -= 1.0
                grad_hidden[rows] = (probabilities.to(compute_dtype) @ matrix).to(hidden.dtype)
        ctx.mark_non_differentiable(correct)
        if grad_hidden is not None:
            ctx.save_for_backward(grad_hidden)
        return loss_sum, correct

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_correct: Any) -> tuple[Any, ...]:
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor,
                         compute_dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """(sum over positions of the cross-entropy of `head(hidden)` against `targets`, positions whose argmax is
    the target). hidden: [positions, hidden size]; targets: [positions], every one a real token id. The
    product runs in `compute_dtype` (the step's autocast dtype), the softmax in fp32. Only `hidden` gets a
    gradient (the head is frozen)."""
    loss_sum, correct = _LinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, compute_dtype)
    return loss_sum, int(correct)


@contextmanager
def head_outputs_hidden(head: torch.nn.Module) -> Iterator[None]:
    """Within the block, the model's output layer returns its input: the model's `logits` are then the final
    hidden states at the positions it would have scored."""
    head.forward = _identity  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        del head.forward


def _identity(hidden: torch.Tensor) -> torch.Tensor:
    return hidden


@torch.no_grad()
def head_computes_logits(model: Any, probe_ids: list[int]) -> torch.nn.Linear | None:
    """The model's output layer if the model's logits are exactly that layer's output (checked by running
    `probe_ids` through the model once: softcapping, scaling or anything else after the layer shows as a
    difference) and it is a plain, frozen `nn.Linear`; else None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or any(p.requires_grad for p in head.parameters()):
        return None
    seen: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _module, _inputs, output: seen.append(output))
    try:
        device = head.weight.device
        logits = model(input_ids=torch.tensor([probe_ids], device=device), use_cache=False).logits
    finally:
        handle.remove()
    if len(seen) != 1 or seen[0].shape != logits.shape:
        return None
    return head if torch.equal(seen[0].float(), logits.float()) else None
