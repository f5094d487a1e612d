"""Inference for base models, fine-tuned models and checkpoints, scoped to the caller's project.

`InferenceService` turns a validated request into engine sequences and their results:

    resolve the model name (serving.resolution: project-scoped; 404 otherwise) -> the base model's engine (loaded once)
    -> lease the adapter, or the weighted composition of adapters, through the tiered cache
    -> tokenize (chat template, or the raw prompt) and check the context length
    -> submit n sequences per prompt -> a `Generation` the router streams or collects

The text of the results is assembled in `serving.generation`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from basemodels.conversations import prepare_conversation, template_renders_names, template_renders_tools
from basemodels.loader import BaseModelLoader
from basemodels.registry import BaseModelRegistry
from contracts.errors import Draining, InvalidRequest, Overloaded
from contracts.inference.backend import TokenSampling
from contracts.inference.schemas import ChatCompletionRequest, CompletionRequest
from contracts.machine import ThreadGovernor
from contracts.settings import ServingSettings
from db.projects import Principal
from db.session import Database
from serving.adapter_weights import compose, read_adapter
from serving.adapters import AdapterCache, AdapterLease, AdapterRef
from serving.engine import ENGINE_THREADS, Engine, Event, SamplingParams, Sequence
from serving.fast_paths import DecodeChoice, measured_in_thread
from serving.generation import Generation, SharedRelease, event_sink
from serving.grammar import GrammarCompiler, grammar_param, output_grammar
from serving.kernels import Products
from serving.kernels import load as load_kernels
from serving.metrics import CONTENT_TYPE, ServingMetrics
from serving.model import LlamaForward, refuse_unservable
from serving.placement import serving_placement
from serving.resolution import ModelResolver, ResolvedModel
from serving.threads import single_threaded_torch
from storage import ArtifactStore

log = logging.getLogger(__name__)


@dataclass
class BaseEngine:
    engine: Engine
    tokenizer: Any
    stop_token_ids: frozenset[int]
    grammars: GrammarCompiler
    #: whether the chat template renders tools and tool calls itself (else the ftaas tool format does)
    renders_tools: bool
    #: whether the chat template renders participant names (else they are written into the content)
    renders_names: bool = False


class InferenceService:
    """The engine behind the inference routes (implements `contracts.inference.backend.InferenceBackend`)."""

    def __init__(self, db: Database, store: ArtifactStore, registry: BaseModelRegistry, loader: BaseModelLoader,
                 settings: ServingSettings, *, metrics: ServingMetrics | None = None,
                 governor: ThreadGovernor | None = None) -> None:
        """`governor`: the engines' thread budgets on a machine shared with batch work (contracts.machine),
        fixed at the shared budget when serving is batch-invariant (a product's bits can depend on the thread
        count); None: every engine computes on all cores (serving.engine.ENGINE_THREADS)."""
        self.db = db
        self.governor = governor.fixed_count() if governor is not None and settings.batch_invariant else governor
        self.store = store
        self.registry = registry
        self.resolver = ModelResolver(db, registry)
        self.loader = loader
        self.settings = settings
        self.metrics = metrics or ServingMetrics()
        if governor is not None:
            self.metrics.plan(governor.plan.as_dict())
        self.adapters = AdapterCache(
            store, settings.cache_path / "adapters", device_bytes=settings.adapter_device_bytes,
            host_bytes=settings.adapter_host_bytes, disk_bytes=settings.adapter_disk_bytes,
            observer=self.metrics)
        self._engines: dict[str, BaseEngine] = {}
        #: base model -> why the engine cannot compute it (None: it can), read from its config once.
        self._refusals: dict[str, InvalidRequest | None] = {}
        self._engine_lock = threading.Lock()
        self._draining = False

    # ------------------------------------------------------------------------------- resolution
    def resolve(self, principal: Principal, name: str, *, param: str = "model") -> ResolvedModel:
        return self.resolver.resolve(principal, name, param=param)

    def resolve_request(self, principal: Principal, request: ChatCompletionRequest | CompletionRequest
                        ) -> tuple[ResolvedModel, list[tuple[ResolvedModel, float]]]:
        return self.resolver.resolve_request(principal, request)

    def evict(self, storage_prefix: str) -> None:
        """A model stored under `storage_prefix` was deleted: drop its adapter from every cache tier."""
        self.adapters.evict_prefix(storage_prefix)

    # ---------------------------------------------------------------------------------- engines
    def serves(self, base_model: str) -> bool:
        """Whether the engine computes this base model (from its config; no weights are loaded)."""
        with self._engine_lock:
            return self._refusal(base_model) is None

    def _refusal(self, base_model: str) -> InvalidRequest | None:
        if base_model not in self._refusals:
            try:
                refuse_unservable(_config_object(self.loader.config(base_model)))
                self._refusals[base_model] = None
            except InvalidRequest as exc:
                self._refusals[base_model] = exc
        return self._refusals[base_model]

    def engine_for(self, base_model: str) -> BaseEngine:
        """The base model's engine, loaded on first use; a 400 (`unsupported_model`) for a family the engine
        cannot compute, decided from the config before any weights are loaded."""
        with self._engine_lock:
            existing = self._engines.get(base_model)
            if existing is not None:
                return existing
            refusal = self._refusal(base_model)
            if refusal is not None:
                raise InvalidRequest(str(refusal), code=refusal.code, param=refusal.param)
            int8 = self.settings.weights == "int8"
            measured_int8: list[bool] = []
            choices: list[DecodeChoice] = []

            def measure() -> torch.dtype:
                choices.append(self._measured_choice(base_model))
                path = choices[0].path
                # int8 won where bf16 had not: with full weights, that is fp32
                measured_int8.append(path == "int8" and self.settings.weights == "auto"
                                     and not self.settings.batch_invariant)
                return torch.bfloat16 if path == "bfloat16" or measured_int8[0] else torch.float32

            # int8 weights compute with bfloat16 activations unless float16 is asked for (their float32 path is
            # slower than plain float32 weights: serving.model.Int8Weight). "auto" takes them where the decode
            # measurement did (a CPU, dtype auto; never batch-invariant, whose tiles were measured dense).
            dtype, device = serving_placement("bfloat16" if int8 and self.settings.dtype == "auto"
                                              else self.settings.dtype, self.settings.device, measure=measure)
            int8 = int8 or measured_int8 == [True]
            kernels = self._kernels(base_model, device, choices) if int8 or dtype == torch.bfloat16 else None
            model = self.loader.load_model(base_model, dtype=dtype, device=device)
            model.eval()
            tokenizer = self.loader.load_tokenizer(base_model)
            limit = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
            configured = self.settings.max_context
            forward = LlamaForward(model, max_slots=self.settings.max_batch,
                                   max_context=min(limit, configured) if configured else limit,
                                   tile_rows=self.settings.tile_rows if self.settings.batch_invariant
                                   else 1, kv_budget_bytes=self.settings.kv_cache_bytes,
                                   weights="int8" if int8 else "model", kernels=kernels)
            engine = Engine(forward, name=base_model, max_queue=self.settings.max_queue,
                            prefill_tokens=self.settings.prefill_tokens,
                            max_rank=self.settings.max_lora_rank,
                            observer=self.metrics.engine_observer(base_model),
                            prefix_cache_bytes=self.settings.prefix_cache_bytes, governor=self.governor)
            stops = stop_token_ids(tokenizer, model)
            entry = BaseEngine(engine, tokenizer, stops, GrammarCompiler(tokenizer, stops, forward.geometry.vocab),
                               template_renders_tools(tokenizer), template_renders_names(tokenizer))
            del model  # the forward keeps the tensors it computes with (pre-packed ones replace the model's)
            self._engines[base_model] = entry
            return entry

    def _kernels(self, base_model: str, device: torch.device | str, choices: list[DecodeChoice]) -> Products | None:
        """The decode kernels (bf16 or int8 weights) where the settings allow them on this device and the decode
        measurement took them (made now where the precision was given, not measured)."""
        if self.settings.kernels == "off" or torch.device(device).type != "cpu" or self.settings.batch_invariant:
            return None
        choice = choices[0] if choices else self._measured_choice(base_model)
        return load_kernels(self.loader.cache_dir) if choice.kernels else None

    def _measured_choice(self, base_model: str) -> DecodeChoice:
        """fp32, bf16 or int8 weights for decoding this model on this CPU, whichever measured faster, and whether
        the decode kernels compute it faster (cached per machine and model: serving.fast_paths.measured_choice),
        timed on the threads the engine computes on alone."""
        threads = self.governor.plan.serving_alone if self.governor is not None else ENGINE_THREADS
        try:
            # Next to the converted models: one measurement per machine and model, whichever process needs it;
            # timed as serving work (the governor: training yields meanwhile).
            return measured_in_thread(self.loader.config(base_model), "decode", cache_dir=self.loader.cache_dir,
                                      threads=threads, governor=self.governor)
        except (KeyError, TypeError, ValueError) as exc:  # a config without the shapes this needs
            log.warning("decode precision of %s not measured (%s); chosen by the CPU's flags", base_model, exc)
            return DecodeChoice("bfloat16" if serving_placement("auto", "cpu")[0] == torch.bfloat16 else "float32")

    def engines(self) -> list[Engine]:
        with self._engine_lock:
            return [e.engine for e in self._engines.values()]

    # ------------------------------------------------------------------------------- generation
    def start(self, resolved: ResolvedModel, parts: list[tuple[ResolvedModel, float]],
              request: ChatCompletionRequest | CompletionRequest, loop: asyncio.AbstractEventLoop,
              tokens: TokenSampling | None = None) -> Generation:
        """Blocking (loads the base model and adapters on first use): submit the request's sequences (`tokens`:
        a token-level client's extra asks)."""
        if self._draining:
            raise Draining("This server is shutting down; retry on another replica.")
        single_threaded_torch()  # this request thread may load a model or convert an adapter
        deadline = time.monotonic() + self.settings.request_timeout_seconds
        base = self.engine_for(resolved.base_model)
        prompts = self._prompts(base, request)
        lease = self._lease(base, resolved, parts, deadline)
        queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        try:
            sequences = self._submit(base, resolved, parts, request, prompts, lease, deadline, loop, queue,
                                     tokens or TokenSampling())
        except BaseException:
            if lease is not None:
                lease.release()  # no sequence was queued, so none will release it
            raise
        stops = [request.stop_sequences] * len(sequences)
        return Generation(base.engine, base.tokenizer, sequences, stops, queue,
                          prompt_tokens=sum(len(ids) for ids in prompts),
                          want_logprobs=request.logprob_count is not None, min_tokens=request.min_tokens,
                          parse_tool_calls=isinstance(request, ChatCompletionRequest) and request.tool_mode != "none")

    def _submit(self, base: BaseEngine, resolved: ResolvedModel, parts: list[tuple[ResolvedModel, float]],
                request: ChatCompletionRequest | CompletionRequest, prompts: list[list[int]],
                lease: AdapterLease | None, deadline: float, loop: asyncio.AbstractEventLoop,
                queue: asyncio.Queue[tuple[int, Event]], tokens: TokenSampling) -> list[Sequence]:
        """Check the request against the context and the server's capacity, and queue its sequences (all or
        none: a request refused here queued nothing)."""
        # An adapter's virtual prefix (prompt learning) takes positions of the context before the prompt.
        limit = base.engine.forward.max_context - (lease.weights.virtual_tokens if lease is not None else 0)
        wanted = request.max_new_tokens
        for ids in prompts:
            if len(ids) >= limit:
                raise InvalidRequest(f"The prompt is {len(ids)} tokens; this model's context is {limit} tokens.",
                                     code="context_length_exceeded", param="messages" if isinstance(
                                         request, ChatCompletionRequest) else "prompt")
            if len(ids) + request.min_tokens > limit:
                raise InvalidRequest(f"The prompt ({len(ids)} tokens) plus min_tokens ({request.min_tokens}) exceeds "
                                     f"this model's context of {limit} tokens.", code="context_length_exceeded",
                                     param="min_tokens")
            if wanted is not None and len(ids) + wanted > limit:
                raise InvalidRequest(f"The prompt ({len(ids)} tokens) plus max_tokens ({wanted}) exceeds this "
                                     f"model's context of {limit} tokens.", code="context_length_exceeded",
                                     param="max_tokens")
        grammar, checked = output_grammar(request) if isinstance(request, ChatCompletionRequest) else (None, None)
        if checked is not None:  # tool schemas that do not constrain this output must compile all the same
            base.grammars.check(checked, param="tools")
        count = len(prompts) * request.n
        capacity = self.settings.max_batch + self.settings.max_queue
        if count > capacity:  # could never be queued: a 429 would invite retries that cannot succeed
            raise InvalidRequest(f"The request asks for {count} completions (prompts x n); this server takes at "
                                 f"most {capacity} at once.", param="n")
        # compiled once per request; each choice follows its own copy
        first = None if grammar is None or not isinstance(request, ChatCompletionRequest) else \
            base.grammars.constraint(grammar, param=grammar_param(request))
        constraints = [first if index == 0 or first is None else first.copy() for index in range(count)]
        release = SharedRelease(lease, count)
        sequences: list[Sequence] = []
        label = resolved.name if not parts else f"{resolved.name}+{len(parts)}"
        try:
            for prompt_index, ids in enumerate(prompts):
                for choice in range(request.n):
                    index = prompt_index * request.n + choice
                    seed = None if request.seed is None else request.seed + choice
                    params = SamplingParams(
                        max_new_tokens=wanted if wanted is not None else limit - len(ids),
                        temperature=request.temperature, top_p=request.top_p, seed=seed,
                        logprobs=request.logprob_count, min_new_tokens=request.min_tokens,
                        stop_token_ids=(frozenset() if request.ignore_eos else base.stop_token_ids) | frozenset(
                            tokens.stop_token_ids),
                        prompt_logprobs=tokens.prompt_logprobs, keep_stop_token=tokens.keep_stop_token)
                    sequences.append(Sequence(ids, params, event_sink(loop, queue, index),
                                              adapter=lease.weights if lease else None, deadline=deadline,
                                              label=label, on_release=release, constraint=constraints[index]))
            base.engine.submit(sequences)
        except (Overloaded, Draining) as exc:
            self.metrics.rejected.labels(resolved.base_model, exc.code).inc()
            raise
        return sequences

    def _prompts(self, base: BaseEngine, request: ChatCompletionRequest | CompletionRequest) -> list[list[int]]:
        tokenizer = base.tokenizer
        if isinstance(request, ChatCompletionRequest):
            messages, tools = prepare_conversation([m.as_template_message() for m in request.messages],
                                                   request.tool_dicts(), native=base.renders_tools,
                                                   names_native=base.renders_names)
            try:
                ids = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True,
                                                    return_dict=False)
            except Exception as exc:  # the template rejects the conversation (roles, order)
                raise InvalidRequest(f"The messages do not fit this model's chat template: {exc}",
                                     param="messages") from exc
            if isinstance(ids, dict):
                ids = ids["input_ids"]
            return [list(ids)]
        prompts: list[list[int]] = []
        vocabulary = len(tokenizer)
        for index, prompt in enumerate(request.prompts()):
            if isinstance(prompt, str):
                ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
            else:
                ids = list(prompt)
                if any(not 0 <= t < vocabulary for t in ids):
                    raise InvalidRequest(f"prompt {index} holds token ids outside the vocabulary (0..{vocabulary - 1})",
                                         param="prompt")
            if not ids:
                raise InvalidRequest(f"prompt {index} is empty", param="prompt")
            prompts.append(ids)
        return prompts

    def _lease(self, base: BaseEngine, resolved: ResolvedModel, parts: list[tuple[ResolvedModel, float]],
               deadline: float) -> AdapterLease | None:
        max_rank = self.settings.max_lora_rank
        forward = base.engine.forward

        def convert(ref: AdapterRef) -> Any:
            return lambda directory: read_adapter(directory, forward, key=ref.key, max_rank=max_rank)

        if resolved.adapter is not None:
            return self.adapters.lease(resolved.adapter, convert(resolved.adapter), deadline=deadline)
        if not parts:
            return None
        refs = [(model.adapter, weight) for model, weight in parts]
        key = "compose:" + "|".join(f"{ref.key}*{weight!r}" for ref, weight in refs if ref is not None)

        def build() -> Any:
            leases = [self.adapters.lease(ref, convert(ref), deadline=deadline) for ref, _ in refs if ref is not None]
            try:
                return compose([(lease.weights, weight) for lease, (_, weight) in zip(leases, refs, strict=True)],
                               key=key, max_rank=max_rank)
            finally:
                for lease in leases:
                    lease.release()

        label = "+".join(model.name for model, _ in parts)
        return self.adapters.lease_derived(key, label, build, deadline=deadline)

    def render_metrics(self) -> tuple[bytes, str]:
        return self.metrics.render(), CONTENT_TYPE

    # ------------------------------------------------------------------------------------ drain
    def drain(self, timeout: float) -> bool:
        """Refuse new requests and wait for running ones; True if everything finished in time."""
        self._draining = True
        end = time.monotonic() + timeout
        return all(engine.drain(max(0.0, end - time.monotonic())) for engine in self.engines())

    def close(self) -> None:
        for engine in self.engines():
            engine.stop()


def stop_token_ids(tokenizer: Any, model: Any) -> frozenset[int]:
    """The tokens that end a completion: the tokenizer's end-of-sequence token and every one the model's
    generation config names (chat models often end turns with a token other than the tokenizer's EOS)."""
    stops = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    stops.update(configured if isinstance(configured, list) else [configured])
    return frozenset(t for t in stops if t is not None)


def _config_object(config: dict[str, Any]) -> Any:
    """A config.json as transformers' config class for its model type (attribute defaults filled in), or as
    a plain namespace for a type this transformers does not know (which the engine refuses)."""
    from types import SimpleNamespace

    from transformers import AutoConfig

    try:
        return AutoConfig.for_model(**config)
    except (ValueError, KeyError, TypeError):
        return SimpleNamespace(**config)
