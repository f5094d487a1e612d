"""The training thread's torch threads kept at the machine's budget within a step, not only between steps.

Why: the trainer looks up its budget (contracts.machine.ThreadGovernor) before every step, but a step that began
on both cores when a chat arrived kept them to its end, while the engine computed beside it: three threads on two
cores, each OpenMP team waiting at every barrier for a thread the other had descheduled. Measured in `ftaas up`
on a 2-core Xeon with AMX (bench/shared_machine.py): such a step took 17.9-18.8 s against 0.8-1.0 s idle, and in
one run no step finished in the whole 30-s chat. So the budget is applied again at every decoder layer, forward
and backward: a step yields within one layer's time of the chat's first token.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from contracts.machine import ThreadGovernor


def repeated_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's decoder layers: its longest `nn.ModuleList` (transformers' models keep them in one)."""
    lists = [module for module in model.modules() if isinstance(module, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def apply_budget(governor: ThreadGovernor) -> None:
    """The calling thread's torch threads set to `governor.threads()` (torch's setting is per thread)."""
    threads = governor.threads()
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)


def follow_budget_within_steps(model: torch.nn.Module, governor: ThreadGovernor) -> list[RemovableHandle]:
    """Hooks that set the calling thread's torch threads to `governor.threads()` as each decoder layer begins
    its forward and as the gradient reaches its output in the backward pass (on a CPU, autograd runs the
    backward pass in the thread that called it, so the setting applies to the same thread). The lookup is a
    clock read except every CHECK_INTERVAL_SECONDS. Remove the returned handles when the run ends."""

    def before_forward(module: torch.nn.Module, args: Any) -> None:
        apply_budget(governor)

    def after_forward(module: torch.nn.Module, args: Any, output: Any) -> None:
        first = output[0] if isinstance(output, tuple) and output else output
        if isinstance(first, torch.Tensor) and first.requires_grad:
            first.register_hook(lambda grad: apply_budget(governor))

    handles = []
    for layer in repeated_layers(model):
        handles.append(layer.register_forward_pre_hook(before_forward))
        handles.append(layer.register_forward_hook(after_forward))
    return handles
