"""Build the PEFT model for a job, and save adapters that are correct on the unmodified base model.

PiSSA, OLoRA and CorDA start the adapter from part of each base weight and subtract that part from the base:
the trained adapter is only right on top of that modified base. So alongside the raw adapter (what
training resumes from) ftaas saves a *servable* one: peft converts the trained adapter, given the initial
adapter, into an equivalent plain LoRA of rank 2r that applies to the original base weights (checked in the
tests: same logits within 1e-6). For every other type the raw adapter is the servable one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import (
    IA3Config,
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from safetensors.torch import load_file, save_file

from adapters.files import CONFIG, WEIGHTS
from contracts.errors import InvalidRequest
from contracts.training.spec import AdapterSettings

#: Extra files of a checkpoint whose adapter type modified the base (see the module docstring).
RAW_WEIGHTS = "trainer_adapter.safetensors"
INITIAL_WEIGHTS = "initial_adapter_model.safetensors"
INITIAL_CONFIG = "initial_adapter_config.json"

PARAM = "method.adapter"


def peft_config(settings: AdapterSettings, model: Any) -> Any:
    model_type = getattr(model.config, "model_type", "")
    if settings.type in ("lora", "dora", "rslora"):
        init: Any = True if settings.init == "default" else settings.init
        targets = _targets(settings)
        extra: dict[str, Any] = {}
        if settings.init == "corda":
            from peft.tuners.lora.config import CordaConfig

            # CorDA's calibration hooks named modules; it does not expand the "all-linear" shorthand.
            if targets == "all-linear":
                targets = linear_module_names(model)
            extra["corda_config"] = CordaConfig(corda_method="kpm")
        return LoraConfig(
            r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, task_type="CAUSAL_LM",
            target_modules=targets, init_lora_weights=init,
            use_dora=settings.type == "dora", use_rslora=settings.type == "rslora", **extra,
        )
    if settings.type == "ia3":
        from peft.utils import (
            TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
            TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
        )

        targets = list(settings.target_modules) if settings.target_modules else \
            TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING.get(model_type)
        if not targets:
            raise InvalidRequest(f"IA3 has no default target modules for {model_type!r} models; name them",
                                 code="invalid_adapter_config", param=f"{PARAM}.target_modules")
        feedforward = [m for m in TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type, [])
                       if m in targets]
        return IA3Config(task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=feedforward)
    if settings.type == "prompt_tuning":
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=settings.num_virtual_tokens)
    if settings.type == "prefix_tuning":
        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=settings.num_virtual_tokens)
    raise InvalidRequest(f"unknown adapter type {settings.type!r}", code="invalid_adapter_config", param=PARAM)


def _targets(settings: AdapterSettings) -> Any:
    target = settings.target_modules
    return list(target) if isinstance(target, tuple) else target


def linear_module_names(model: Any) -> list[str]:
    """What "all-linear" means for this model: the names of its Linear layers, output head excluded."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and module is not output}
    return sorted(names)


def build(model: Any, settings: AdapterSettings, *, calibrate: Callable[[Any], None] | None = None) -> PeftModel:
    """Wrap `model` (frozen) in a fresh adapter. `calibrate(model)` runs forward passes on sample data; CorDA
    needs it. Deterministic given torch's seed (set by the caller)."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if settings.quantization is not None:
        # QLoRA: norms and embeddings back to fp32 for stable training (peft's recipe); checkpointing is the
        # trainer's own option, not switched on here.
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = peft_config(settings, model)
    try:
        if settings.type in ("lora", "dora", "rslora") and settings.init == "corda":
            from peft.tuners.lora.corda import preprocess_corda

            if calibrate is None:
                raise ValueError("CorDA needs calibration data")
            with torch.no_grad():
                preprocess_corda(model, config, run_model=lambda: calibrate(model))
        return get_peft_model(model, config)
    except ValueError as exc:
        # e.g. target modules that the model does not have: the user's configuration, not a bug.
        raise InvalidRequest(f"the adapter configuration does not fit {getattr(model.config, 'model_type', 'this')} "
                             f"models: {exc}", code="invalid_adapter_config", param=PARAM) from exc


def save_initial(model: PeftModel, settings: AdapterSettings, directory: Path) -> None:
    """Before the first step: keep the initial adapter of a base-modifying initialisation (for conversion)."""
    if not settings.modifies_base:
        return
    with tempfile.TemporaryDirectory() as tmp:
        _save_as_plain_lora(model, Path(tmp))
        shutil.copy(Path(tmp) / WEIGHTS, directory / INITIAL_WEIGHTS)
        shutil.copy(Path(tmp) / CONFIG, directory / INITIAL_CONFIG)


def _save_as_plain_lora(model: PeftModel, directory: Path) -> None:
    config = model.peft_config["default"]
    init = config.init_lora_weights
    config.init_lora_weights = True  # peft's recipe: the initial adapter is saved as plain LoRA
    try:
        model.save_pretrained(directory, safe_serialization=True)
    finally:
        config.init_lora_weights = init


def save(model: PeftModel, settings: AdapterSettings, directory: Path, initial: Path | None = None,
         *, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write the servable adapter into `directory` (and the raw one too, where they differ).

    `initial` is a directory holding the files written by `save_initial` (needed when the base was modified).
    `state_dict`: the adapter's parameters whole, by their names in the model, where the model's own are
    sharded (FSDP; worker.training.distributed); default the model's.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if settings.modifies_base:
        assert state_dict is None, "base-modifying initialisations are not trained sharded"
        assert initial is not None and (initial / INITIAL_WEIGHTS).exists(), "initial adapter missing"
        save_file({k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()},
                  str(directory / RAW_WEIGHTS))
        with tempfile.TemporaryDirectory() as tmp:
            plain = Path(tmp) / "initial"
            plain.mkdir()
            shutil.copy(initial / INITIAL_WEIGHTS, plain / WEIGHTS)
            shutil.copy(initial / INITIAL_CONFIG, plain / CONFIG)
            model.save_pretrained(directory, safe_serialization=True, path_initial_model_for_weight_conversion=str(plain))
        if directory != initial:
            for name in (INITIAL_WEIGHTS, INITIAL_CONFIG):
                shutil.copy(initial / name, directory / name)
    else:
        model.save_pretrained(directory, safe_serialization=True, state_dict=state_dict)
    # peft adds a generated model card; provenance lives in the artifact manifest instead, and artifacts hold
    # only weights (safetensors) and configuration (JSON).
    (directory / "README.md").unlink(missing_ok=True)


def load_raw(model: PeftModel, directory: Path,
             place: Callable[[torch.Tensor, Any], torch.Tensor] | None = None) -> None:
    """Restore the trained adapter saved by `save` (the raw one where it differs from the servable one).
    `place(saved, live)`: turns a saved whole tensor into one shaped like the model's own (FSDP shards it)."""
    raw = directory / RAW_WEIGHTS
    state = load_file(str(raw if raw.exists() else directory / WEIGHTS))
    if place is not None:
        live = get_peft_model_state_dict(model)
        state = {key: place(value, live.get(key)) for key, value in state.items()}
    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"checkpoint adapter does not match the model: unexpected {unexpected[:3]}")


def servable_summary(directory: Path) -> dict[str, Any]:
    """Type and rank of a saved servable adapter (for the manifest)."""
    config = json.loads((directory / CONFIG).read_text())
    return {"peft_type": config.get("peft_type"), "r": config.get("r"), "use_dora": config.get("use_dora", False)}
