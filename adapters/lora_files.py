"""PEFT LoRA adapter directories in and out, and merges of whole adapters.

`read_lora` reads an adapter folder (adapters.files: dense or ComPEFT-compressed) into per-module
factors with each module's scale folded into B (alpha/r, alpha/sqrt(r) for rsLoRA, `alpha_pattern` and
`rank_pattern` honoured). `write_lora` writes factors back as a plain LoRA adapter that PEFT loads and
ftaas serves: scale 1 (`lora_alpha` = r, per module through the patterns when ranks differ).

`merge_adapters` merges adapters of one base model module by module (`adapters.merge`):

* `linear` is exact: concatenated factors of the summed rank, truncated by SVD only when a `rank` is given;
* `ties`, `dare_linear`, `dare_ties` work on dense task vectors and are factorised to `rank` (default: the
  largest parent rank) by SVD, reporting each module's relative truncation error;
* `lines` (alpha, beta) scales every layer's merged update by its LiNeS factor (alone: one parent).

A module targeted by some parents only is merged with zero updates for the others.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from adapters.files import (
    CONFIG,
    WEIGHTS,
    ModuleShape,
    check_lora_config,
    load_tensors,
    lora_module_shapes,
    lora_scale,
    read_config,
)
from adapters.merge import Factors, combine, concat_factors, dense_svd, lines_factors, lowrank_svd
from contracts.errors import InvalidRequest

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _unsupported(message: str, param: str = "adapters") -> InvalidRequest:
    return InvalidRequest(message, code="unsupported_adapter", param=param)


@dataclass
class LoraAdapter:
    config: dict[str, Any]
    #: module path (e.g. base_model.model.model.layers.0.self_attn.q_proj) -> factors, scale folded into b
    modules: dict[str, Factors]

    @property
    def max_rank(self) -> int:
        return max(f.rank for f in self.modules.values())


def read_lora(directory: Path, *, param: str = "adapters") -> LoraAdapter:
    """The adapter in `directory`; anything unreadable or malformed is an InvalidRequest naming `param`."""
    config = check_lora_config(read_config(directory, param=param), param)
    try:
        tensors = load_tensors(directory)  # dense, or decompressed (ComPEFT)
    except (ValueError, OSError, SafetensorError) as exc:  # not safetensors
        raise InvalidRequest(f"the adapter files cannot be read: {exc}", code="invalid_adapter",
                             param=param) from None
    lora_module_shapes(config, {name: tuple(t.shape) for name, t in tensors.items()}, param=param)
    modules = {}
    for name in sorted(tensors):
        if not name.endswith(".lora_A.weight"):
            continue
        module = name.removesuffix(".lora_A.weight")
        a, b = tensors[name].float(), tensors[f"{module}.lora_B.weight"].float()
        modules[module] = Factors(b * lora_scale(config, module, int(a.shape[0])), a)
    return LoraAdapter(config, modules)


def module_shapes(adapter: LoraAdapter) -> dict[str, ModuleShape]:
    """The adapter's modules as `adapters.files.check_fits_base` takes them."""
    return {module: ModuleShape(int(f.b.shape[0]), f.rank, int(f.a.shape[1])) for module, f in adapter.modules.items()}


def write_lora(directory: Path, modules: dict[str, Factors], *, template: dict[str, Any]) -> None:
    """A plain LoRA adapter (scale 1 everywhere) from factors, keeping the template's base model and task."""
    directory.mkdir(parents=True, exist_ok=True)
    ranks = {module: factors.rank for module, factors in modules.items()}
    default = max(set(ranks.values()), key=list(ranks.values()).count)
    short = {module.removeprefix("base_model.model."): rank for module, rank in ranks.items() if rank != default}
    config = {
        "peft_type": "LORA", "task_type": template.get("task_type", "CAUSAL_LM"),
        "base_model_name_or_path": template.get("base_model_name_or_path"),
        "r": default, "lora_alpha": default, "rank_pattern": short, "alpha_pattern": dict(short),
        "target_modules": sorted({module.rsplit(".", 1)[-1] for module in modules}),
        "lora_dropout": 0.0, "bias": "none", "use_rslora": False, "use_dora": False, "fan_in_fan_out": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
    }
    tensors = {}
    for module, factors in modules.items():
        tensors[f"{module}.lora_A.weight"] = factors.a.contiguous()
        tensors[f"{module}.lora_B.weight"] = factors.b.contiguous()
    save_file(tensors, str(directory / WEIGHTS))
    (directory / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))


@dataclass
class MergeResult:
    modules: dict[str, Factors]
    #: module -> relative Frobenius error of the rank truncation (0 for exact merges)
    truncation_error: dict[str, float] = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        return max(self.truncation_error.values(), default=0.0)


def _layer_of(module: str) -> int:
    match = _LAYER.search(module)
    if match is None:
        raise _unsupported(f"module {module} belongs to no decoder layer; LiNeS needs layer indices")
    return int(match.group(1))


def merge_adapters(adapters: Sequence[LoraAdapter], weights: Sequence[float], *, method: str = "linear",
                   density: float = 1.0, majority_sign: str = "total", seed: int = 0, rank: int | None = None,
                   lines: tuple[float, float] | None = None, num_layers: int | None = None,
                   progress: Callable[[int, int], None] | None = None) -> MergeResult:
    """The merged adapter's factors (see the module docstring); `progress(done, total)` after each module."""
    if len(adapters) != len(weights):
        raise InvalidRequest("give one weight per adapter", param="weights")
    modules = sorted({module for adapter in adapters for module in adapter.modules})
    target_rank = rank or max(adapter.max_rank for adapter in adapters)
    generator = torch.Generator().manual_seed(seed)
    result = MergeResult({})
    for done, module in enumerate(modules, start=1):
        present = [(adapter.modules[module], weight) for adapter, weight in zip(adapters, weights, strict=True)
                   if module in adapter.modules]
        if method == "linear":
            factors = concat_factors([(f.b, f.a, weight) for f, weight in present])
            if rank is not None and factors.rank > rank:
                factors = lowrank_svd(factors, rank)
        else:
            shape = (present[0][0].b.shape[0], present[0][0].a.shape[1])
            deltas = [adapter.modules[module].b @ adapter.modules[module].a if module in adapter.modules
                      else torch.zeros(shape) for adapter in adapters]
            merged = combine(deltas, weights, method=method, density=density, majority_sign=majority_sign,
                             generator=generator)
            factors = dense_svd(merged, target_rank)
        result.modules[module] = factors
        result.truncation_error[module] = factors.error
        if progress is not None:
            progress(done, len(modules))
    if lines is not None:
        layers = num_layers or 1 + max(_layer_of(module) for module in modules)
        scale = lines_factors(layers, *lines)
        result.modules = {module: Factors(f.b * scale[_layer_of(module)], f.a, f.error)
                          for module, f in result.modules.items()}
    return result
