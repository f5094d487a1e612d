"""The adapter folder format: PEFT's `adapter_config.json` + `adapter_model.safetensors` (never a pickle),
or, for ComPEFT-compressed adapters, `adapter_model.compeft.safetensors` beside the same config
(adapters.compeft has its stored form).

Reading is in two depths. `lora_module_shapes` checks a LoRA adapter from its config and the tensor shapes
in the safetensors header alone (no torch: the API validates imports with it); `load_tensors` reads the
tensors themselves (dense, or decompressed), for the worker and the serving engine. Both apply the same
rules: LoRA factor names, one A and one B per module, ranks that match the config's `r` and
`rank_pattern`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contracts.errors import InvalidRequest

if TYPE_CHECKING:
    import torch

#: The files of an adapter folder.
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
COMPRESSED_WEIGHTS = "adapter_model.compeft.safetensors"

_FACTOR = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
_MODULE = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn|mlp)\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$")


def adapter_files(listed: set[str]) -> set[str]:
    """The files that make an adapter, among the `listed` ones of its artifact: its config and its weights,
    dense or compressed (the dense file when both are there)."""
    weights = WEIGHTS if WEIGHTS in listed or COMPRESSED_WEIGHTS not in listed else COMPRESSED_WEIGHTS
    return {CONFIG, weights}


def pattern_value(patterns: dict[str, Any], name: str, default: Any) -> Any:
    """PEFT's rank/alpha patterns: the value of the first pattern that ends the module path `name`."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return value
    return default


def lora_scale(config: dict[str, Any], module: str, rank: int) -> float:
    """The factor PEFT multiplies a LoRA module's B @ A by: alpha / rank, or alpha / sqrt(rank) with rsLoRA; alpha
    is the module's `alpha_pattern` entry, else `lora_alpha`, else `r`."""
    default = config.get("lora_alpha")
    alpha = float(pattern_value(config.get("alpha_pattern") or {}, module,
                                default if default is not None else config.get("r", 8)))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _unsupported(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, code="unsupported_adapter", param=param)


def _unreadable(exc: Exception, param: str) -> InvalidRequest:
    return InvalidRequest(f"the adapter files cannot be read: {exc}", code="invalid_adapter", param=param)


def check_lora_config(config: Any, param: str = "adapters") -> dict[str, Any]:
    """An adapter config that merges, compression and export can take: a LoRA (not DoRA) adapter without
    saved modules or trained biases. Raises InvalidRequest (400) naming `param` otherwise."""
    if not isinstance(config, dict):
        raise _unsupported(f"{CONFIG} must be a JSON object", param)
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise _unsupported(f"only LoRA-family adapters can be merged or compressed, not {config.get('peft_type')}",
                           param)
    if config.get("use_dora"):
        raise _unsupported("DoRA adapters cannot be merged: their magnitude rescaling is not additive", param)
    if config.get("modules_to_save") or config.get("bias", "none") != "none":
        raise _unsupported("adapters with saved modules or trained biases cannot be merged", param)
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(key) or {}, dict):
            raise _unsupported(f"{CONFIG}: {key} must be an object", param)
    return config


def read_config(directory: Path, *, param: str = "adapters") -> dict[str, Any]:
    """The folder's adapter config (any JSON object; `check_lora_config` says whether it is a usable LoRA)."""
    try:
        config = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:  # missing, not UTF-8, not JSON
        raise _unreadable(exc, param) from None
    if not isinstance(config, dict):
        raise _unsupported(f"{CONFIG} must be a JSON object", param)
    return config


def header_shapes(path: Path, *, param: str = "adapters") -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from a safetensors file's header only (the tensors are not read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(exc, param) from None


@dataclass(frozen=True)
class ModuleShape:
    """One LoRA module: its update is (out x rank) @ (rank x fan_in)."""

    out: int
    rank: int
    fan_in: int


def lora_module_shapes(config: dict[str, Any], shapes: dict[str, tuple[int, ...]], *,
                       param: str = "adapters") -> dict[str, ModuleShape]:
    """Module path -> its factor shapes, checked against the config: every tensor a LoRA factor matrix, each
    module with A and B, ranks as `r`/`rank_pattern` say. InvalidRequest (400) naming `param` otherwise."""
    parts: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in shapes.items():
        match = _FACTOR.match(name)
        if match is None:
            raise _unsupported(f"adapter tensor {name!r} is not a LoRA factor", param)
        if len(shape) != 2:
            raise _unsupported(f"adapter tensor {name!r} is not a matrix", param)
        parts.setdefault(match["module"], {})[match["part"]] = shape
    rank_default = int(config.get("r", 8))
    modules = {}
    for module, pair in parts.items():
        if set(pair) != {"A", "B"}:
            raise _unsupported(f"module {module} lacks lora_A or lora_B", param)
        (rank, fan_in), (out, b_rank) = pair["A"], pair["B"]
        expected = int(pattern_value(config.get("rank_pattern") or {}, module, rank_default))
        if rank != expected or b_rank != rank:
            raise _unsupported(f"module {module}: factor shapes do not match its rank {expected}", param)
        modules[module] = ModuleShape(out, rank, fan_in)
    if not modules:
        raise _unsupported("the adapter has no LoRA factors", param)
    return modules


def read_lora_shapes(directory: Path, *, param: str = "adapters") -> tuple[dict[str, Any], dict[str, ModuleShape]]:
    """A dense LoRA adapter folder checked without reading its tensors: its config and module shapes."""
    config = check_lora_config(read_config(directory, param=param), param)
    return config, lora_module_shapes(config, header_shapes(directory / WEIGHTS, param=param), param=param)


def check_fits_base(modules: dict[str, ModuleShape], base_config: dict[str, Any], *, max_rank: int,
                    param: str = "file") -> None:
    """Every module exists in the (Llama-family) base model and its factors have that module's shape; no
    rank exceeds `max_rank`. Raises InvalidRequest (400) naming the first module that does not fit."""
    hidden = int(base_config["hidden_size"])
    heads = int(base_config["num_attention_heads"])
    head_dim = int(base_config.get("head_dim") or hidden // heads)
    kv = int(base_config.get("num_key_value_heads") or heads) * head_dim
    inter = int(base_config["intermediate_size"])
    layers = int(base_config["num_hidden_layers"])
    expected = {"q_proj": (heads * head_dim, hidden), "k_proj": (kv, hidden), "v_proj": (kv, hidden),
                "o_proj": (hidden, heads * head_dim), "gate_proj": (inter, hidden), "up_proj": (inter, hidden),
                "down_proj": (hidden, inter)}
    for module, shape in modules.items():
        match = _MODULE.search(module)
        if module.rsplit(".", 1)[-1] == "lm_head":  # the output layer (the tinker SDK's "unembed")
            out, fan_in = int(base_config["vocab_size"]), hidden
        elif match is None or int(match.group(1)) >= layers:
            raise InvalidRequest(f"module {module} does not exist in the base model", code="adapter_base_mismatch",
                                 param=param)
        else:
            out, fan_in = expected[match.group(3)]
        if shape.out != out or shape.fan_in != fan_in:
            raise InvalidRequest(f"module {module}: the factors fit a {shape.out}x{shape.fan_in} weight, the base "
                                 f"model's is {out}x{fan_in}", code="adapter_base_mismatch", param=param)
        if shape.rank > max_rank:
            raise InvalidRequest(f"module {module} has rank {shape.rank}; the limit is {max_rank}",
                                 code="adapter_rank_too_high", param=param)


def load_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """An adapter folder's tensors, dense: from `WEIGHTS`, or decompressed from `COMPRESSED_WEIGHTS` when
    that is what the folder holds. Needs torch (imported here, not by the module)."""
    from safetensors.torch import load_file

    if (directory / WEIGHTS).is_file():
        return load_file(str(directory / WEIGHTS))
    if (directory / COMPRESSED_WEIGHTS).is_file():
        from adapters.compeft import decompress, from_safetensors

        return decompress(from_safetensors(load_file(str(directory / COMPRESSED_WEIGHTS))))
    raise FileNotFoundError(f"no adapter weights in {directory}")
