"""Answers from transformers' own `generate`, for base models the batched engine cannot compute.

The chat API refuses such a base model (400 `unsupported_model`, serving.model.refuse_unservable): its users
serve a merged export elsewhere. Knowledge evals of jobs on it must still run, so they answer through this
module instead: the base model in float32 with the adapter applied by peft (dense or ComPEFT-stored weights),
conversations through the model's chat template, left-padded batches, greedy unless the eval asks for
sampling. It makes no batch-invariance promise (a row's padding can change its rounding) and no throughput
promise: it is the correct slow path, not a second engine.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from adapters.files import CONFIG, WEIGHTS, load_tensors
from basemodels.loader import BaseModelLoader
from serving.adapters import AdapterCache, AdapterRef
from serving.service import stop_token_ids

#: Conversations answered per `generate` call.
BATCH = 16


class ReferenceGenerator:
    """Generation with transformers and peft, one base model kept loaded (the last one asked for)."""

    def __init__(self, loader: BaseModelLoader, adapters: AdapterCache) -> None:
        self.loader = loader
        self.adapters = adapters
        self._loaded: tuple[str, Any, Any] | None = None
        self._lock = threading.Lock()

    def generate(self, base_model: str, adapter: AdapterRef | None, conversations: Sequence[list[dict[str, str]]], *,
                 max_new_tokens: int, temperature: float, top_p: float = 1.0, seed: int | None = None,
                 progress: Callable[[int], None] | None = None) -> list[str]:
        """One reply per conversation, from `base_model` with `adapter` applied (None: the base model)."""
        with self._lock:
            model, tokenizer = self._base(base_model)
            if adapter is None:
                return self._answers(model, tokenizer, conversations, max_new_tokens, temperature, top_p, seed,
                                     progress)
            from peft import PeftModel

            with tempfile.TemporaryDirectory(prefix="ftaas-reference-") as folder:
                tuned = PeftModel.from_pretrained(model, str(self._dense_copy(adapter, Path(folder))))
            try:
                return self._answers(tuned.eval(), tokenizer, conversations, max_new_tokens, temperature, top_p,
                                     seed, progress)
            finally:
                if tuned.peft_config["default"].is_prompt_learning:
                    self._loaded = None  # nothing was injected into the base model, but do not rely on it
                else:
                    tuned.unload()  # the base model again (adapter layers removed), for the next call

    def _base(self, name: str) -> tuple[Any, Any]:
        if self._loaded is None or self._loaded[0] != name:
            self._loaded = None  # release the previous model before loading the next
            model = self.loader.load_model(name).eval()
            self._loaded = (name, model, self.loader.load_tokenizer(name))
        return self._loaded[1], self._loaded[2]

    def _dense_copy(self, adapter: AdapterRef, folder: Path) -> Path:
        """The adapter as peft reads it: its config and dense weights (decompressed if stored compressed)."""
        from safetensors.torch import save_file

        source = self.adapters.local_directory(adapter)
        shutil.copyfile(source / CONFIG, folder / CONFIG)
        tensors = {name: tensor.contiguous() for name, tensor in load_tensors(source).items()}
        save_file(tensors, str(folder / WEIGHTS))
        return folder

    @staticmethod
    def _answers(model: Any, tokenizer: Any, conversations: Sequence[list[dict[str, str]]], max_new_tokens: int,
                 temperature: float, top_p: float, seed: int | None,
                 progress: Callable[[int], None] | None) -> list[str]:
        tokenizer.padding_side = "left"
        stops = sorted(stop_token_ids(tokenizer, model))
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
            torch.manual_seed(seed if seed is not None else 0)
        replies: list[str] = []
        for start in range(0, len(conversations), BATCH):
            texts = [tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                     for messages in conversations[start:start + BATCH]]
            encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                out = model.generate(**encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=stops, **sampling)
            replies += tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
            if progress is not None:
                progress(len(texts))
        return replies
