"""The training API's logic, without FastAPI: sessions, training models, requests to them as futures.

A training model is created queued and announced to the workers: one of them loads it and holds it
(worker.training_api.holder), answering its requests in seq_id order. Requests are checked here, where they
arrive (a bad one is a 400 naming what is wrong, never a failed future), then stored as futures the client polls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from api.models.service import ModelService
from api.pagination import check_limit
from basemodels.registry import BaseModelRegistry
from contracts.errors import InvalidRequest, NotFound, QuotaExceeded
from contracts.inference.backend import ChoiceResult, TokenSampling
from contracts.inference.schemas import MAX_CHOICES, CompletionRequest
from contracts.settings import TrainingApiSettings
from contracts.training_api import losses, wire
from db import training_api as rows
from db.projects import Principal
from db.session import Database
from db.states import WorkStatus
from db.tables import TrainingCheckpoint, TrainingModel, TrainingSampler
from storage.base import ArtifactStore

#: What a future's poll answers while the result is not there yet (the SDK polls again at once).
TRY_AGAIN = {"type": "try_again", "queue_state": "active"}
#: A sample still pending after this long lost the process computing it (samples are answered in seconds to
#: minutes; the engine's own request deadline is shorter).
SAMPLE_DEADLINE_SECONDS = 1800.0
ADAM_DEFAULTS = {"learning_rate": 1e-4, "beta1": 0.9, "beta2": 0.95, "eps": 1e-12, "weight_decay": 0.0,
                 "grad_clip_norm": 0.0}


@dataclass(frozen=True)
class Poll:
    """A future's state: pending, or its result (format, bytes), or its error body."""

    pending: bool
    result: tuple[str, bytes] | None = None
    error: dict[str, Any] | None = None


class TrainingApiService:
    def __init__(self, db: Database, store: ArtifactStore, registry: BaseModelRegistry, models: ModelService,
                 settings: TrainingApiSettings, *, max_rank: int,
                 tokenizer_location: Callable[[str], str]) -> None:
        self.db = db
        self.store = store
        self.registry = registry
        #: deletes the models sampler weights were published as (with the engine's copies)
        self.models = models
        self.settings = settings
        self.max_rank = max_rank
        #: where the SDK's get_tokenizer() loads a base model's tokenizer from (a hub id or a folder here)
        self.tokenizer_location = tokenizer_location

    # ------------------------------------------------------------------------------------ sessions
    def create_session(self, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
        _refuse_unsupported(body, "project_id", "display_name")  # the key's project is the session's
        tags = body.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidRequest("tags must be a list of strings", param="tags")
        metadata = body.get("user_metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise InvalidRequest("user_metadata must be an object", param="user_metadata")
        with self.db.write() as session:
            created = rows.create_session(session, principal.project_id, tags=tags, metadata=metadata)
            return {"session_id": created.id}

    def heartbeat(self, principal: Principal, session_id: Any) -> None:
        with self.db.write() as session:
            self._session(session, principal, session_id)
            rows.touch_session(session, session_id)

    def finish_session(self, principal: Principal, session_id: Any) -> None:
        """The client closed its session: its models are released once their requests are done."""
        with self.db.write() as session:
            self._session(session, principal, session_id)
            rows.finish_session(session, session_id)

    def list_sessions(self, principal: Principal, limit: int, offset: int) -> dict[str, Any]:
        limit, offset = _page(limit, offset)
        with self.db.read() as session:
            return {"sessions": [s.id for s in rows.sessions_page(session, principal.project_id, limit=limit,
                                                                  offset=offset)]}

    def get_session(self, principal: Principal, session_id: str) -> dict[str, Any]:
        """A session's training runs and samplers, in the order they were made."""
        with self.db.read() as session:
            owner = self._session(session, principal, session_id)
            models = sorted(rows.models_of_session(session, owner.id), key=lambda m: (m.created_at, m.id))
            return {"training_run_ids": [m.id for m in models],
                    "sampler_ids": [s.id for s in rows.samplers_of_session(session, owner.id)],
                    "user_metadata": owner.user_metadata}

    def _session(self, session: Any, principal: Principal, session_id: Any) -> Any:
        found = rows.get_session(session, principal.project_id, str(session_id))
        if found is None:
            raise NotFound(f"No training session {session_id!r}", code="session_not_found", param="session_id")
        return found

    # -------------------------------------------------------------------------------------- models
    def create_model(self, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
        base_model = body.get("base_model")
        if not isinstance(base_model, str) or base_model not in self.registry:
            raise InvalidRequest(f"base_model {base_model!r} is not a base model of this installation "
                                 f"({', '.join(self.registry.names())})", code="model_not_found", param="base_model")
        _refuse_unsupported(body, "user_metadata")
        if _object(body, "optimizer_config").get("type", "adamw") != "adamw":
            raise InvalidRequest("only Adam (adamw) is supported", code="unsupported_optimizer",
                                 param="optimizer_config")
        lora = _object(body, "lora_config", known=("rank", "seed", "train_unembed", "train_mlp", "train_attn"))
        rank = lora.get("rank", 32)
        if not isinstance(rank, int) or not 1 <= rank <= self.max_rank:
            raise InvalidRequest(f"lora_config.rank must be an integer from 1 to {self.max_rank}",
                                 param="lora_config.rank")
        if lora.get("seed") is not None and (not isinstance(lora["seed"], int) or isinstance(lora["seed"], bool)):
            raise InvalidRequest("lora_config.seed must be an integer", param="lora_config.seed")
        parts = {name: bool(lora.get(name, True)) for name in ("train_mlp", "train_attn", "train_unembed")}
        if not any(parts.values()):
            raise InvalidRequest("train at least one of mlp, attn, unembed", param="lora_config")
        return self._new_model(principal, body.get("session_id"), body.get("model_seq_id", 0), str(base_model),
                               {"rank": rank, "seed": lora.get("seed"), **parts}, kind="create_model")

    def _new_model(self, principal: Principal, session_id: Any, seq: Any, base_model: str, lora: dict[str, Any], *,
                   kind: str, initial_state: dict[str, Any] | None = None) -> dict[str, Any]:
        """A training model numbered `seq` in the session, announced to the workers, and the future that its
        worker answers once it holds the model (the same model asked for again: the same future)."""
        if not isinstance(seq, int) or seq < 0:
            raise InvalidRequest("model_seq_id must be a non-negative integer", param="model_seq_id")
        with self.db.write() as session:
            owner = self._session(session, principal, session_id)
            if owner.finished_at is not None:
                raise InvalidRequest("the session has finished", code="session_finished", param="session_id")
            model_id = f"{owner.id}:train:{seq}"
            if rows.get_model(session, principal.project_id, model_id) is None:
                if rows.live_models(session, principal.project_id) >= self.settings.max_live_models_per_project:
                    raise QuotaExceeded(f"this project already has {self.settings.max_live_models_per_project} live "
                                        "training models; close a session (or let it idle out) first",
                                        code="too_many_training_models")
                rows.add_model(session, TrainingModel(
                    id=model_id, project_id=principal.project_id, session_id=owner.id, status=WorkStatus.QUEUED.value,
                    base_model=base_model, lora=lora, initial_state=initial_state, created_at=int(time.time()),
                    max_attempts=1))
            rows.touch_session(session, owner.id)
            request = rows.first_request(session, model_id, kind) or rows.add_request(
                session, project_id=principal.project_id, kind=kind, payload=b"{}", model_id=model_id)
            return {"request_id": request.id, "model_id": model_id}

    def get_info(self, principal: Principal, model_id: Any) -> dict[str, Any]:
        with self.db.read() as session:
            model = self._model(session, principal, model_id)
            return {"model_id": model.id, "model_name": model.base_model, "is_lora": True,
                    "lora_rank": model.lora["rank"],
                    "model_data": {"model_name": model.base_model,
                                   "tokenizer_id": self.tokenizer_location(model.base_model)}}

    def _model(self, session: Any, principal: Principal, model_id: Any) -> TrainingModel:
        found = rows.get_model(session, principal.project_id, str(model_id))
        if found is None:
            raise NotFound(f"No training model {model_id!r}", code="model_not_found", param="model_id")
        return found

    # ------------------------------------------------------- training runs and checkpoints (the RestClient)
    def list_training_runs(self, principal: Principal, limit: int, offset: int) -> dict[str, Any]:
        """The project's training models as the SDK's training runs, newest first."""
        limit, offset = _page(limit, offset)
        with self.db.read() as session:
            page, total = rows.models_page(session, principal.project_id, limit=limit, offset=offset)
            runs = self._runs(session, principal, page)
        return {"training_runs": runs, "cursor": {"offset": offset, "limit": limit, "total_count": total}}

    def get_training_run(self, principal: Principal, run_id: str) -> dict[str, Any]:
        with self.db.read() as session:
            return self._runs(session, principal, [self._model(session, principal, run_id)])[0]

    def list_checkpoints(self, principal: Principal, run_id: str) -> dict[str, Any]:
        """A training run's checkpoints (states and sampler weights), oldest first."""
        with self.db.read() as session:
            model = self._model(session, principal, run_id)
            return {"checkpoints": [_checkpoint(c) for c in rows.checkpoints_of(session, principal.project_id,
                                                                                 model.id)]}

    def list_user_checkpoints(self, principal: Principal, limit: int, offset: int) -> dict[str, Any]:
        """Every checkpoint of the project, newest first."""
        limit, offset = _page(limit, offset)
        with self.db.read() as session:
            page, total = rows.checkpoints_page(session, principal.project_id, limit=limit, offset=offset)
            return {"checkpoints": [_checkpoint(c) for c in page],
                    "cursor": {"offset": offset, "limit": limit, "total_count": total}}

    def weights_info(self, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
        """What a saved checkpoint was trained as: its base model and LoRA shape."""
        with self.db.read() as session:
            checkpoint = rows.get_checkpoint(session, principal.project_id, str(body.get("tinker_path")))
            if checkpoint is None:
                raise NotFound(f"No checkpoint at {body.get('tinker_path')!r}", code="checkpoint_not_found",
                               param="tinker_path")
            model = self._model(session, principal, checkpoint.model_id)
            return {"base_model": model.base_model, "is_lora": True, "lora_rank": model.lora["rank"],
                    **{name: model.lora[name] for name in ("train_unembed", "train_mlp", "train_attn")}}

    def checkpoint_at(self, principal: Principal, run_id: str, checkpoint_id: str) -> dict[str, Any]:
        """A training run's checkpoint by its id ("weights/<name>" or "sampler_weights/<name>")."""
        with self.db.read() as session:
            return _checkpoint(self._checkpoint(session, principal, run_id, checkpoint_id))

    def _checkpoint(self, session: Any, principal: Principal, run_id: str, checkpoint_id: str) -> TrainingCheckpoint:
        path = f"tinker://{run_id}/{checkpoint_id}"
        checkpoint = rows.get_checkpoint(session, principal.project_id, path)
        if checkpoint is None:
            raise NotFound(f"No checkpoint at {path!r}", code="checkpoint_not_found", param="checkpoint_id")
        return checkpoint

    def delete_checkpoint(self, principal: Principal, run_id: str, checkpoint_id: str) -> None:
        """A checkpoint and its stored files; sampler weights also stop being a model of the project (the model
        they were published as is deleted with them, as `client.models.delete` would)."""
        with self.db.write() as session:
            checkpoint = self._checkpoint(session, principal, run_id, checkpoint_id)
            served, prefix = checkpoint.served_model, checkpoint.storage_prefix
            rows.delete_checkpoint(session, checkpoint)
        if served is not None:
            try:
                self.models.delete(principal, served)
            except NotFound:  # deleted already through the models API
                pass
        else:
            self.store.delete_prefix(prefix)

    def _runs(self, session: Any, principal: Principal, models: list[TrainingModel]) -> list[dict[str, Any]]:
        """Training models as the SDK's training runs (their checkpoints and sessions read in one query each)."""
        checkpoints = rows.checkpoints_of_models(session, principal.project_id, [m.id for m in models])
        active_at = rows.sessions_active_at(session, [m.session_id for m in models])
        runs = []
        for model in models:
            saved = checkpoints.get(model.id, [])
            last = {kind: next((_checkpoint(c) for c in reversed(saved) if c.kind == kind), None)
                    for kind in ("weights", "sampler_weights")}
            runs.append({
                "training_run_id": model.id, "base_model": model.base_model, "model_owner": principal.project_name,
                "is_lora": True, "lora_rank": model.lora["rank"], "corrupted": model.status == WorkStatus.FAILED.value,
                "last_request_time": _iso(active_at.get(model.session_id, model.created_at)),
                "last_checkpoint": last["weights"], "last_sampler_checkpoint": last["sampler_weights"],
                "user_metadata": None})
        return runs

    # ------------------------------------------------------------------------------------ requests
    def forward_backward(self, principal: Principal, body: bytes) -> dict[str, Any]:
        """A protobuf ForwardBackwardRequest, checked whole (loss, settings, every datum) before it is queued."""
        batch = wire.decode_forward_backward(body)
        losses.settings_of(batch.loss_fn, batch.loss_fn_config)
        if not batch.data:
            raise InvalidRequest("forward_backward needs at least one datum", param="data")
        for index, datum in enumerate(batch.data):
            losses.check_datum(batch.loss_fn, index, len(datum.tokens),
                               {name: value.shape for name, value in datum.loss_fn_inputs.items()})
        kind = "forward" if batch.forward_only else "forward_backward"
        return self._submit(principal, batch.model_id, batch.seq_id, kind, body)

    def optim_step(self, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
        params = {**ADAM_DEFAULTS, **_object(body, "adam_params")}
        for key, value in params.items():
            if key not in ADAM_DEFAULTS:
                raise InvalidRequest(f"adam_params has no field {key!r}", param=f"adam_params.{key}")
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < float("inf"):
                raise InvalidRequest(f"adam_params.{key} must be a non-negative number", param=f"adam_params.{key}")
        if not 0 <= params["beta1"] < 1 or not 0 <= params["beta2"] < 1:
            raise InvalidRequest("adam_params beta1 and beta2 must be in [0, 1)", param="adam_params")
        if body.get("optimizer_params") is not None:
            raise InvalidRequest("only Adam is supported (adam_params)", code="unsupported_optimizer",
                                 param="optimizer_params")
        return self._submit(principal, body.get("model_id"), body.get("seq_id"), "optim_step",
                            json.dumps({"adam_params": params}).encode())

    def save_weights_for_sampler(self, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
        """Named: a checkpoint at tinker://<model>/sampler_weights/<name>. Unnamed (the SDK's
        save_weights_and_get_sampling_client): the same, named `sampler-<seq_id>`, and a sampling session on it
        numbered `sampling_session_seq_id` (the future answers its id)."""
        _refuse_unsupported(body, "ttl_seconds", "user_metadata")
        if body.get("kind", "snapshot") not in (None, "snapshot"):
            raise InvalidRequest("only snapshot sampling clients are supported (kind='snapshot')", code="unsupported",
                                 param="kind")
        name, seq = body.get("path"), body.get("sampling_session_seq_id")
        payload: dict[str, Any] = {"name": None if name is None else _checkpoint_name(name)}
        if name is None:
            if not isinstance(seq, int) or seq < 0:
                raise InvalidRequest("give a name (path), or a sampling_session_seq_id for the sampling client",
                                     param="sampling_session_seq_id")
            payload = {"name": f"sampler-{body.get('seq_id')}", "sampling_session_seq_id": seq}
        return self._submit(principal, body.get("model_id"), body.get("seq_id"), "save_weights_for_sampler",
                            json.dumps(payload).encode())

    def save_weights(self, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
        """The training state (adapter and optimizer) under a name: what load_weights restores."""
        _refuse_unsupported(body, "ttl_seconds", "user_metadata")
        payload = {"name": _checkpoint_name(body.get("path")), "overwrite": bool(body.get("overwrite"))}
        return self._submit(principal, body.get("model_id"), body.get("seq_id"), "save_weights",
                            json.dumps(payload).encode())

    def load_weights(self, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
        """A saved state into a live training model (in its seq_id order), or, with a session, a new training
        model created from it (the shape of the model that saved it; its optimizer's state where asked)."""
        if body.get("weights_access_token"):
            raise InvalidRequest("loading another account's checkpoints is not supported", code="unsupported",
                                 param="weights_access_token")
        with self.db.read() as session:
            checkpoint = rows.get_checkpoint(session, principal.project_id, str(body.get("path")))
            if checkpoint is None or checkpoint.kind != "weights":
                raise NotFound(f"No saved state at {body.get('path')!r}", code="checkpoint_not_found", param="path")
            source = rows.get_model(session, principal.project_id, checkpoint.model_id)
            assert source is not None  # a checkpoint outlives nothing it came from: models are never deleted
            state = {"path": checkpoint.path, "prefix": checkpoint.storage_prefix,
                     "manifest_sha256": checkpoint.manifest_sha256, "optimizer": bool(body.get("optimizer"))}
            lora, base_model = dict(source.lora), source.base_model
        if body.get("base_model") not in (None, base_model):
            raise InvalidRequest(f"{checkpoint.path} was saved from {base_model}", param="base_model")
        if "session_id" not in body:
            return self._submit(principal, body.get("model_id"), body.get("seq_id"), "load_weights",
                                json.dumps(state).encode())
        return self._new_model(principal, body.get("session_id"), body.get("model_seq_id", 0), base_model, lora,
                               kind="load_weights", initial_state=state)

    def _submit(self, principal: Principal, model_id: Any, seq_id: Any, kind: str, payload: bytes) -> dict[str, Any]:
        if not isinstance(seq_id, int) or seq_id < 1:
            raise InvalidRequest("seq_id must be a positive integer (the SDK numbers a model's requests from 1)",
                                 param="seq_id")
        with self.db.write() as session:
            model = self._model(session, principal, model_id)
            if model.status not in rows.LIVE:
                raise InvalidRequest(_gone(model), code="training_model_released", param="model_id")
            if seq_id <= model.last_seq_id:
                found = rows.request_at(session, model.id, seq_id)
                if found is None:
                    raise InvalidRequest(f"seq_id {seq_id} was already used", param="seq_id")
                return {"request_id": found.id, "model_id": model.id}
            request = rows.add_request(session, project_id=principal.project_id, kind=kind, payload=payload,
                                       model_id=model.id, seq_id=seq_id)
            rows.touch_session(session, model.session_id)
            return {"request_id": request.id, "model_id": model.id}

    # ------------------------------------------------------------------------------------ sampling
    def create_sampling_session(self, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
        """A sampler of a base model, or of weights a training model saved for the sampler (tinker:// path)."""
        seq = body.get("sampling_session_seq_id", 0)
        if not isinstance(seq, int) or seq < 0:
            raise InvalidRequest("sampling_session_seq_id must be a non-negative integer",
                                 param="sampling_session_seq_id")
        path, base_model = body.get("model_path"), body.get("base_model")
        with self.db.write() as session:
            owner = self._session(session, principal, body.get("session_id"))
            if path is not None:
                checkpoint = rows.get_checkpoint(session, principal.project_id, str(path))
                if checkpoint is None or checkpoint.kind != "sampler_weights" or checkpoint.served_model is None:
                    raise NotFound(f"No weights saved for the sampler at {path!r}", code="checkpoint_not_found",
                                   param="model_path")
                model = rows.get_model(session, principal.project_id, checkpoint.model_id)
                served, base = checkpoint.served_model, model.base_model if model else ""
            elif isinstance(base_model, str) and base_model in self.registry:
                served = base = str(base_model)
            else:
                raise InvalidRequest("give a model_path (tinker://.../sampler_weights/...) or a base_model of this "
                                     "installation", param="model_path")
            sampler = rows.add_sampler(session, TrainingSampler(
                id=f"{owner.id}:sample:{seq}", project_id=principal.project_id, session_id=owner.id,
                served_model=served, base_model=base, model_path=path, created_at=int(time.time())))
            rows.touch_session(session, owner.id)
            return {"sampling_session_id": sampler.id}

    def get_sampler(self, principal: Principal, sampler_id: str) -> dict[str, Any]:
        with self.db.read() as session:
            sampler = rows.get_sampler(session, principal.project_id, sampler_id)
            if sampler is None:
                raise NotFound(f"No sampling session {sampler_id!r}", code="sampler_not_found", param="sampler_id")
            return {"sampler_id": sampler.id, "base_model": sampler.base_model, "model_path": sampler.model_path}

    def completion_of(self, principal: Principal, body: dict[str, Any]) -> tuple[CompletionRequest, TokenSampling]:
        """A sample request as the engine's completion request (the prompt's tokens, n samples, the sampling
        parameters) and its token-level asks (prompt log probabilities, stop token ids; the stop token kept in
        each sample, as RL loops train on it); what the engine cannot do is refused by name."""
        with self.db.read() as session:
            sampler = rows.get_sampler(session, principal.project_id, str(body.get("sampling_session_id")))
            if sampler is None:
                raise NotFound("No such sampling session", code="sampler_not_found", param="sampling_session_id")
            served = sampler.served_model
        if body.get("record_stability_info"):
            raise InvalidRequest("record_stability_info is not supported by ftaas yet", code="unsupported",
                                 param="record_stability_info")
        for count in ("topk_prompt_logprobs", "topk_sample_logprobs", "prompt_alt_tokens_k"):
            if body.get(count):
                raise InvalidRequest(f"{count} is not supported by ftaas yet", code="unsupported", param=count)
        if body.get("target_prompt_logprobs") is not None:
            raise InvalidRequest("target_prompt_logprobs is not supported by ftaas yet", code="unsupported",
                                 param="target_prompt_logprobs")
        tokens: list[int] = []
        chunks = _object(body, "prompt").get("chunks") or []
        if not isinstance(chunks, list):
            raise InvalidRequest("prompt.chunks must be a list", param="prompt.chunks")
        for index, chunk in enumerate(chunks):
            if not isinstance(chunk, dict) or chunk.get("type") != "encoded_text":
                raise InvalidRequest("only encoded_text prompt chunks are supported (text models)",
                                     code="unsupported", param=f"prompt.chunks.{index}")
            if not isinstance(chunk.get("tokens") or [], list):
                raise InvalidRequest("a chunk's tokens are a list of token ids", param=f"prompt.chunks.{index}.tokens")
            tokens.extend(chunk.get("tokens") or [])
        if not tokens or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens):
            raise InvalidRequest("the prompt needs token ids", param="prompt")
        last_n = body.get("prompt_logprobs_last_n")
        if last_n is not None and (not body.get("prompt_logprobs") or not isinstance(last_n, int)
                                   or not 1 <= last_n <= len(tokens) - 1):
            raise InvalidRequest("prompt_logprobs_last_n needs prompt_logprobs and is from 1 to the prompt's length - 1",
                                 param="prompt_logprobs_last_n")
        params = _object(body, "sampling_params", known=("max_tokens", "seed", "stop", "temperature", "top_k", "top_p"))
        stop = params.get("stop")
        stop_strings: list[str] | str | None = stop
        stop_ids: tuple[int, ...] = ()
        if isinstance(stop, list) and stop and all(isinstance(s, int) and not isinstance(s, bool) for s in stop):
            stop_strings, stop_ids = None, tuple(stop)
            if any(s < 0 for s in stop_ids):
                raise InvalidRequest("stop token ids must be non-negative", param="sampling_params.stop")
        elif isinstance(stop, list) and any(not isinstance(s, str) for s in stop):
            raise InvalidRequest("stop is a string, a list of strings or a list of token ids",
                                 param="sampling_params.stop")
        if params.get("top_k", -1) not in (-1, 0, None):
            raise InvalidRequest("top_k is not supported by ftaas's engine (use top_p)", code="unsupported",
                                 param="sampling_params.top_k")
        num = body.get("num_samples", 1)
        if not isinstance(num, int) or not 1 <= num <= MAX_CHOICES:
            raise InvalidRequest(f"num_samples must be from 1 to {MAX_CHOICES}", param="num_samples")
        try:
            completion = CompletionRequest(model=served, prompt=tokens, n=num, max_tokens=params.get("max_tokens"),
                                           temperature=params.get("temperature", 1.0), top_p=params.get("top_p", 1.0),
                                           seed=params.get("seed"), stop=stop_strings or None, logprobs=0)
        except ValueError as exc:
            raise InvalidRequest(f"sampling_params: {exc}", param="sampling_params") from None
        return completion, TokenSampling(prompt_logprobs=bool(body.get("prompt_logprobs")), stop_token_ids=stop_ids,
                                         keep_stop_token=True)

    def add_sample(self, principal: Principal, body: dict[str, Any], samples: int) -> dict[str, Any]:
        with self.db.write() as session:
            request = rows.add_request(session, project_id=principal.project_id, kind="sample",
                                       payload=json.dumps(body).encode())
            return {"request_id": request.id, "sample_sequence_ids": [f"{request.id}:{i}" for i in range(samples)]}

    def finish_sample(self, request_id: str, results: list[ChoiceResult] | None, error: str | None = None, *,
                      last_n: int | None = None) -> None:
        """The sampled sequences as the SDK's SampleResponse (or the error that stopped them); `last_n`: only the
        prompt's last n log probabilities are reported (the SDK's prompt_logprobs_last_n; ftaas computes all)."""
        with self.db.write() as session:
            if results is None:
                rows.finish_request(session, request_id, error={"error": error or "sampling failed",
                                                                "category": "server"})
                return
            sequences = [wire.SampledSequence(r.token_ids, r.token_logprobs if len(r.token_logprobs) == len(
                r.token_ids) else None, "length" if r.finish_reason == "length" else "stop") for r in results]
            prompt_logprobs = results[0].prompt_logprobs if results else None  # every sample has the same prompt
            if prompt_logprobs is not None and last_n:
                unscored: list[float | None] = [None] * (len(prompt_logprobs) - last_n)
                prompt_logprobs = unscored + prompt_logprobs[-last_n:]
            rows.finish_request(session, request_id, result=("protobuf", wire.encode_sample_response(
                sequences, prompt_logprobs=prompt_logprobs)))

    def cancel_sample(self, principal: Principal, request_id: str) -> None:
        """A pending sample settled as cancelled (done or failed ones stay as they are)."""
        with self.db.write() as session:
            request = rows.get_request(session, principal.project_id, request_id)
            if request is None:
                raise NotFound(f"No request {request_id!r}", code="request_not_found", param="request_id")
            if request.model_id is not None:
                raise InvalidRequest("only samples can be cancelled: a training model runs its requests in order",
                                     code="unsupported", param="request_id")
            rows.finish_request(session, request.id, error={"error": "cancelled by the client", "category": "user"})

    # ------------------------------------------------------------------------------------- futures
    def poll(self, principal: Principal, request_id: Any) -> Poll:
        """One look at a future (the route holds a poll open by looking again)."""
        with self.db.read() as session:
            request = rows.get_request(session, principal.project_id, str(request_id))
            if request is None:
                raise NotFound(f"No request {request_id!r}", code="request_not_found", param="request_id")
            if request.status == rows.SUCCEEDED:
                assert request.result_format is not None and request.result is not None
                return Poll(False, result=(request.result_format, request.result))
            if request.status == rows.FAILED:
                return Poll(False, error=request.error)
            if request.model_id is None and time.time() - request.created_at > SAMPLE_DEADLINE_SECONDS:
                # A sample is computed by the API process that took it; one that never finished lost that process.
                return Poll(False, error={"error": "the sample was lost with the server process that computed it; "
                                                   "sample again", "category": "server"})
            model = rows.get_model(session, principal.project_id, request.model_id) if request.model_id else None
            if model is not None and model.status not in rows.LIVE:
                return Poll(False, error={"error": _gone(model), "category": "server"})
            return Poll(True)


def _gone(model: TrainingModel) -> str:
    if model.status == WorkStatus.FAILED.value:
        reason = (model.error or {}).get("message") or "its worker was lost"
        return (f"training model {model.id} is no longer held ({reason}); what it learned since its last saved state "
                "is lost: create a training model from that state (load_state) and continue")
    return f"training model {model.id} was released (its session ended or idled out); load its saved state"


#: the largest page of a listing (the SDK asks for 20 by default)
MAX_PAGE = 100
CHECKPOINT_TYPES = {"weights": "training", "sampler_weights": "sampler"}


def _page(limit: int, offset: int) -> tuple[int, int]:
    """A listing's page (the routes parse both as integers)."""
    if offset < 0:
        raise InvalidRequest("offset must be non-negative", param="offset")
    return check_limit(limit, maximum=MAX_PAGE), offset


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def _checkpoint(row: TrainingCheckpoint) -> dict[str, Any]:
    """A checkpoint as the SDK lists it: its id is the path after the run ("weights/<name>")."""
    return {"checkpoint_id": row.path.split("/", 3)[3], "checkpoint_type": CHECKPOINT_TYPES[row.kind],
            "time": _iso(row.created_at), "tinker_path": row.path, "size_bytes": row.size_bytes, "public": False,
            "expires_at": None}


def _object(body: dict[str, Any], name: str, *, known: tuple[str, ...] | None = None) -> dict[str, Any]:
    """An object field of a body (absent or null: empty); anything else, or a field outside `known`, is a 400
    naming it (nothing sent is silently dropped)."""
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{name} must be an object", param=name)
    for field in value:
        if known is not None and field not in known:
            raise InvalidRequest(f"{name} has no field {field!r} (it has {', '.join(known)})", param=f"{name}.{field}")
    return value


def _refuse_unsupported(body: dict[str, Any], *fields: str) -> None:
    """Fields the SDK may send that ftaas does not keep or use: refused when set, never silently dropped."""
    for name in fields:
        if body.get(name) not in (None, {}, ""):
            raise InvalidRequest(f"{name} is not supported by ftaas's training API yet", code="unsupported", param=name)


def _checkpoint_name(name: Any) -> str:
    if not isinstance(name, str) or not name or len(name) > 128 or "/" in name or not name.isprintable():
        raise InvalidRequest("a checkpoint name is 1-128 printable characters without '/'", param="path")
    return name
