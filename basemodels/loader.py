"""Resolve a registered base model to local files and load it safely.

Safety rules (docs/architecture.md, "Reliability rules"): weights only from safetensors (`use_safetensors=True` makes loading
fail rather than fall back to pickle), `trust_remote_code=False` always, and with `hf_offline` the hub is
never contacted (the model must already be in the local Hugging Face cache).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from basemodels import smollm2, tiny
from basemodels.cache import RECIPE_FILE
from basemodels.registry import BaseModelRegistry
from contracts.errors import InvalidRequest, NotFound

if TYPE_CHECKING:
    from storage.base import ArtifactStore

#: The models built from recipes into the cache (basemodels.cache), by their registry source.
BUILTINS = {tiny.BUILTIN_SOURCE: tiny, smollm2.BUILTIN_SOURCE: smollm2}
#: Files copied from an s3:// model directory; anything else (pickles, code) is ignored.
_MODEL_FILE_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model", ".tiktoken")


class BaseModelLoader:
    def __init__(self, registry: BaseModelRegistry, cache_dir: Path, *, hf_offline: bool = True,
                 open_store: Any = None) -> None:
        """`open_store(uri) -> ArtifactStore` is needed only for s3:// sources."""
        self.registry = registry
        self.cache_dir = cache_dir
        self.hf_offline = hf_offline
        self._open_store = open_store

    def resolve(self, name: str, *, weights: bool = True) -> tuple[str, str | None]:
        """(path or hub id, revision) for `from_pretrained`. `weights=False`: an s3:// model's folder need
        not hold its weights (config and tokenizer files only: what a tokenizer loads)."""
        model = self.registry.get(name)
        if model is None:
            raise NotFound(f"base model {name!r} is not registered", code="model_not_found", param="model")
        source = model.source
        if source in BUILTINS:
            return str(BUILTINS[source].ensure_built(self.cache_dir)), None
        parsed = urlparse(source)
        if parsed.scheme == "file":
            return unquote(parsed.path), None
        if parsed.scheme == "s3":
            return str(self._fetch_s3(source, weights=weights)), None
        if parsed.scheme:
            raise InvalidRequest(f"unsupported base model source {source!r}", param="model")
        hub_id, _, revision = source.partition("@")
        return hub_id, revision or None

    def tokenizer_location(self, name: str) -> str:
        """Where a client on this machine loads the base model's tokenizer from, without building or fetching
        anything: a hub id, a local folder (a built-in model already materialised here, or a file:// source), or
        the name itself where neither is known here."""
        model = self.registry.get(name)
        if model is None:
            return name
        if model.source in BUILTINS:
            folder = self.cache_dir / "builtin" / BUILTINS[model.source].RECIPE_VERSION
            return str(folder) if (folder / RECIPE_FILE).exists() else name
        parsed = urlparse(model.source)
        if parsed.scheme == "file":
            return unquote(parsed.path)
        if parsed.scheme:
            return name
        return model.source.partition("@")[0]

    def config(self, name: str) -> dict[str, Any]:
        """The base model's config.json (for shape checks), from its local files or the local hub cache."""
        path, revision = self.resolve(name)
        local = Path(path) / "config.json"
        try:
            if not local.is_file():
                from huggingface_hub import hf_hub_download

                local = Path(hf_hub_download(path, "config.json", revision=revision,
                                             local_files_only=self.hf_offline))
            return json.loads(local.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"The configuration of base model {name!r} is not available here: {exc}",
                                 code="model_not_available", param="base_model") from None

    def _fetch_s3(self, source: str, *, weights: bool = True) -> Path:
        if self._open_store is None:
            raise InvalidRequest("s3:// base models need S3 settings", param="model")
        parsed = urlparse(source)
        target = self.cache_dir / ("s3" if weights else "s3-tokenizers") / parsed.netloc / parsed.path.strip("/")
        if (target / "config.json").exists():
            return target
        suffixes = _MODEL_FILE_SUFFIXES if weights else tuple(s for s in _MODEL_FILE_SUFFIXES if s != ".safetensors")
        store: ArtifactStore = self._open_store(f"s3://{parsed.netloc}")
        prefix = parsed.path.strip("/") + "/"
        for key in store.list_keys(prefix):
            name = key[len(prefix):]
            if "/" not in name and name.endswith(suffixes):
                store.copy_unrecorded(key, target / name)
        return target

    def load_tokenizer(self, name: str) -> Any:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        path, revision = self.resolve(name, weights=False)
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=revision, trust_remote_code=False, local_files_only=self.hf_offline
        )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def load_model(self, name: str, *, dtype: Any = None, device: str = "cpu", quantization: str | None = None) -> Any:
        """The model in `dtype` (default float32) on `device`; `quantization="nf4"`: its Linear layers held in
        4-bit NF4 by bitsandbytes (double quantization, bf16 compute), the rest in bf16, for QLoRA."""
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        path, revision = self.resolve(name)
        if quantization == "nf4":
            from transformers import BitsAndBytesConfig

            return AutoModelForCausalLM.from_pretrained(
                path, revision=revision, dtype=torch.bfloat16, use_safetensors=True, trust_remote_code=False,
                local_files_only=self.hf_offline, device_map={"": device},
                quantization_config=BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=torch.bfloat16))
        if quantization is not None:
            raise ValueError(f"unknown quantization {quantization!r}")
        # transformers types `.to` through a decorator that mypy misreads; the model is an nn.Module.
        model: Any = AutoModelForCausalLM.from_pretrained(
            path,
            revision=revision,
            dtype=dtype or torch.float32,
            use_safetensors=True,
            trust_remote_code=False,
            local_files_only=self.hf_offline,
        )
        return model.to(device)
