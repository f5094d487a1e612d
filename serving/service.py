"""Inference for base models, fine-tuned models and checkpoints, scoped to the caller's project.

This first engine is deliberately simple: one base model copy per base, adapters loaded into it with peft
on first use (verified against their manifest, safetensors only) and kept in a small LRU, and one
generation at a time under a lock. It is correct and complete for a laptop; the batched multi-adapter
engine (continuous batching, byte-budgeted adapter tiers) replaces it behind the same interface.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from basemodels.loader import BaseModelLoader
from basemodels.registry import BaseModelRegistry
from db import checkpoints, jobs, models
from db.projects import Principal
from db.session import Database
from ftaas.errors import NotFound
from serving.schemas import ChatCompletionRequest
from storage import ArtifactStore
from storage.manifest import download_artifact

ADAPTER_FILES = {"adapter_model.safetensors", "adapter_config.json"}


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    base_model: str
    #: (storage prefix, manifest sha256) of the adapter, or None for a base model.
    adapter: tuple[str, str] | None


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class _Cancelled:
    """A stopping criterion that ends generation when the client has gone away."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class InferenceService:
    def __init__(self, db: Database, store: ArtifactStore, registry: BaseModelRegistry, loader: BaseModelLoader,
                 cache_dir: Path, *, max_adapters: int = 16) -> None:
        self.db = db
        self.store = store
        self.registry = registry
        self.loader = loader
        self.cache_dir = cache_dir
        self.max_adapters = max_adapters
        self._lock = threading.Lock()
        self._bases: dict[str, tuple[Any, Any]] = {}
        self._adapters: OrderedDict[str, str] = OrderedDict()  # storage prefix -> peft adapter name
        self._names: dict[str, str] = {}  # model name -> storage prefix (for eviction on delete)

    def resolve(self, principal: Principal, name: str) -> ResolvedModel:
        if name in self.registry:
            return ResolvedModel(name, name, None)
        with self.db.read() as session:
            row = models.get(session, principal.project_id, name)
            if row is not None:
                return ResolvedModel(name, row.base_model, (row.storage_prefix, row.manifest_sha256))
            checkpoint = checkpoints.by_model_name(session, principal.project_id, name)
            if checkpoint is not None:
                job = jobs.get(session, principal.project_id, checkpoint.job_id)
                assert job is not None
                return ResolvedModel(name, job.base_model, (checkpoint.storage_prefix, checkpoint.manifest_sha256))
        raise NotFound(f"The model '{name}' does not exist or you do not have access to it.",
                       code="model_not_found", param="model")

    def evict(self, name: str) -> None:
        with self._lock:
            prefix = self._names.pop(name, None)
            adapter = self._adapters.pop(prefix, None) if prefix else None
            if adapter is not None:
                for model, _ in self._bases.values():
                    if adapter in getattr(model, "peft_config", {}):
                        model.delete_adapter(adapter)

    # ------------------------------------------------------------------------------- generation
    def complete(self, resolved: ResolvedModel, request: ChatCompletionRequest) -> Generation:
        chunks = list(self.stream(resolved, request))
        return chunks[-1] if chunks and isinstance(chunks[-1], Generation) else Generation("", 0, 0, "stop")

    def stream(self, resolved: ResolvedModel, request: ChatCompletionRequest) -> Iterator[str | Generation]:
        """Yields text pieces as they are generated, then one final `Generation` with the usage."""
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        with self._lock:
            model, tokenizer = self._prepare(resolved)
            messages = [{"role": m.role, "content": m.text()} for m in request.messages]
            inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                   return_dict=True)
            streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
            stop = _Cancelled()
            options = _sampling(request)
            result: dict[str, Any] = {}

            def run() -> None:
                import torch

                try:
                    if request.seed is not None:
                        torch.manual_seed(request.seed)
                    with torch.inference_mode():
                        output = model.generate(
                            **inputs, max_new_tokens=request.max_new_tokens, streamer=streamer,
                            stopping_criteria=StoppingCriteriaList([stop]),
                            stop_strings=request.stop_sequences or None, tokenizer=tokenizer,
                            pad_token_id=tokenizer.pad_token_id, **options,
                        )
                    result["ids"] = output[0, inputs["input_ids"].shape[1]:].tolist()
                except BaseException as exc:  # re-raised in the caller's thread
                    result["error"] = exc
                    streamer.end()

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            text = ""
            emitted = 0
            try:
                for piece in streamer:
                    text += piece
                    # Hold back anything that could be the start of a stop sequence.
                    safe = _safe_prefix(text, request.stop_sequences)
                    if len(safe) > emitted:
                        yield text[emitted:len(safe)]
                        emitted = len(safe)
            finally:
                # Normal end: the thread is done and this is a no-op. Early exit (the client went away and
                # the response generator was closed): stop generating at the next token.
                stop.event.set()
                thread.join()
            if "error" in result:
                raise result["error"]
            ids = result["ids"]
            finish = "length" if len(ids) >= request.max_new_tokens else "stop"
            for sequence in request.stop_sequences:
                cut = text.find(sequence)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
            if tokenizer.eos_token_id in ids:
                finish = "stop"
            if len(text) > emitted:
                yield text[emitted:]
            yield Generation(text, int(inputs["input_ids"].shape[1]), len(ids), finish)

    def _prepare(self, resolved: ResolvedModel) -> tuple[Any, Any]:
        """The base model (with the right adapter active or adapters disabled) and its tokenizer."""
        from peft import PeftModel

        if resolved.base_model not in self._bases:
            model = self.loader.load_model(resolved.base_model)
            model.eval()
            self._bases[resolved.base_model] = (model, self.loader.load_tokenizer(resolved.base_model))
        model, tokenizer = self._bases[resolved.base_model]
        if resolved.adapter is None:
            if isinstance(model, PeftModel):
                return _AdapterDisabled(model), tokenizer
            return model, tokenizer
        prefix, manifest_sha256 = resolved.adapter
        adapter = self._adapters.get(prefix)
        if adapter is None:
            adapter = "a" + uuid.uuid4().hex[:12]
            directory = self.cache_dir / "adapters" / adapter
            download_artifact(self.store, prefix, manifest_sha256, directory, allowed_suffixes=(".safetensors", ".json"),
                              only=ADAPTER_FILES)
            if isinstance(model, PeftModel):
                model.load_adapter(str(directory), adapter_name=adapter)
            else:
                model = PeftModel.from_pretrained(model, str(directory), adapter_name=adapter)
                model.eval()
                self._bases[resolved.base_model] = (model, tokenizer)
            self._adapters[prefix] = adapter
            while len(self._adapters) > self.max_adapters:
                _, oldest = self._adapters.popitem(last=False)
                model.delete_adapter(oldest)
        self._adapters.move_to_end(prefix)
        self._names[resolved.name] = prefix
        model.set_adapter(adapter)
        return model, tokenizer


class _AdapterDisabled:
    """Runs a PeftModel's generate with every adapter disabled (a base-model request)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def generate(self, **kwargs: Any) -> Any:
        with self.model.disable_adapter():
            return self.model.generate(**kwargs)


def _sampling(request: ChatCompletionRequest) -> dict[str, Any]:
    if request.temperature == 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": request.temperature, "top_p": request.top_p}


def _safe_prefix(text: str, stops: list[str]) -> str:
    cut = len(text)
    for sequence in stops:
        found = text.find(sequence)
        if found >= 0:
            cut = min(cut, found)
            continue
        for size in range(min(len(sequence) - 1, len(text)), 0, -1):
            if text.endswith(sequence[:size]):
                cut = min(cut, len(text) - size)
                break
    return text[:cut]

