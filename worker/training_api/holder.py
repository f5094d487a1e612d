"""A worker holding a client's training model: load it, then answer its requests in seq_id order until its
session ends or idles out (the training API, api.training_api).

The model lives in this process's memory under a lease (db.leased via worker.standalone): base weights frozen,
a LoRA adapter trained by the client's forward_backward and optim_step calls, gradients accumulating between
optimizer steps as the client's loop expects. A lease that is lost (this worker stopped, or the reaper gave up on
it) ends the model: with max_attempts 1 it is failed rather than started over elsewhere, since a fresh adapter
in its place would silently drop what the loop had trained; the client is told to load its last saved state.
"""

from __future__ import annotations

import array
import contextlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from contracts.errors import UserError
from contracts.machine import ThreadGovernor
from contracts.training_api import losses, wire
from db import ids, models
from db import training_api as rows
from db.tables import Project, TrainingCheckpoint, TrainingModel, TrainingSampler, TrainingSession
from storage import layout
from storage.manifest import download_artifact, publish_directory
from worker.context import WorkerContext
from worker.outages import patiently
from worker.standalone import StandaloneWork
from worker.training import kernels
from worker.training.thread_budget import apply_budget
from worker.training_api.losses import loss_sum, target_logprobs

log = logging.getLogger(__name__)
#: between looks for the next request while the client computes (a loop's next call comes within milliseconds),
#: and, after IDLE_AFTER_SECONDS without one, while it thinks longer (fewer database reads)
BUSY_LOOK_SECONDS, IDLE_LOOK_SECONDS, IDLE_AFTER_SECONDS = 0.005, 0.2, 2.0
#: A saved state's files (safetensors only: no pickles).
ADAPTER_FILE, OPTIMIZER_FILE, STATE_FILE = "adapter_model.safetensors", "optimizer.safetensors", "state.json"
#: LoRA's alpha: the update is scaled by alpha / rank, so 1 at every rank (the learning rate means the same
#: whatever the rank)
ALPHA_PER_RANK = 1.0


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    project_id: str
    project_name: str
    session_id: str
    base_model: str
    lora: dict[str, Any]
    #: a saved state to start from (the model was created by load_weights)
    initial_state: dict[str, Any] | None = None


def target_modules(model: torch.nn.Module, lora: dict[str, Any]) -> list[str]:
    """The Linear layers the client asked to train: attention, MLP and the output layer (unembed)."""
    chosen = set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if (lora["train_unembed"] and leaf == "lm_head") or (lora["train_attn"] and "attn" in name) or (
                lora["train_mlp"] and "mlp" in name):
            chosen.add(leaf)
    return sorted(chosen)


def compute_dtype(ctx: WorkerContext, base_model: str, device: torch.device) -> torch.dtype | None:
    """FTAAS_TRAINING_API_PRECISION: float32 (None), bfloat16, or auto: as fine-tuning jobs choose (measured on
    this machine's CPU; native bf16 on a GPU)."""
    choice = ctx.settings.training_api.precision
    if choice == "auto":
        choice = "bfloat16" if kernels.measured_precision(ctx.loader, base_model, device, ctx.settings.resources.governor(
            "batch")) == "bf16" else "float32"
    return torch.bfloat16 if choice == "bfloat16" else None


class HeldModel:
    """The base model with a trainable LoRA adapter and its Adam optimizer."""

    def __init__(self, ctx: WorkerContext, info: ModelInfo) -> None:
        from peft import LoraConfig, get_peft_model

        self.info = info
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        #: bf16 autocast (the frozen base's Linear weights stored in bf16 once), or None: float32
        self.dtype = compute_dtype(ctx, info.base_model, torch.device(self.device))
        base = ctx.loader.load_model(info.base_model, device=self.device)
        base.requires_grad_(False)
        if self.dtype is not None:
            kernels.store_frozen_linears(base, self.dtype)
        torch.manual_seed(int(info.lora.get("seed") or 0))
        rank = int(info.lora["rank"])
        config = LoraConfig(r=rank, lora_alpha=ALPHA_PER_RANK * rank, lora_dropout=0.0,
                            target_modules=target_modules(base, info.lora))
        self.model = get_peft_model(base, config)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=1e-4)

    def forward_backward(self, payload: bytes, *, backward: bool) -> tuple[str, bytes]:
        batch = wire.decode_forward_backward(payload)
        settings = losses.settings_of(batch.loss_fn, batch.loss_fn_config)
        outputs, total = [], 0.0
        for datum in batch.data:
            tokens = torch.tensor(list(datum.tokens), dtype=torch.long, device=self.device)
            inputs = {name: torch.tensor(list(value.values), device=self.device).reshape(value.shape)
                      for name, value in datum.loss_fn_inputs.items()}
            with torch.set_grad_enabled(backward), kernels.autocast(torch.device(self.device), self.dtype):
                logits = self.model(input_ids=tokens[None]).logits[0]
                logp = target_logprobs(logits, inputs.pop("target_tokens"))
                loss = loss_sum(batch.loss_fn, logp, inputs, settings)
            if backward:
                loss.backward()  # gradients add up until the client's optim_step
            total += float(loss.detach())
            outputs.append({"logprobs": wire.TensorValue(array.array("f", logp.detach().float().cpu().tolist()),
                                                         (len(tokens),), "float32")})
        return "protobuf", wire.encode_forward_backward_output(outputs, {"loss:sum": total})

    def optim_step(self, payload: bytes) -> tuple[str, bytes]:
        adam = json.loads(payload)["adam_params"]
        for group in self.optimizer.param_groups:
            group.update(lr=adam["learning_rate"], betas=(adam["beta1"], adam["beta2"]), eps=adam["eps"],
                         weight_decay=adam["weight_decay"])
        metrics: dict[str, float] = {}
        if adam["grad_clip_norm"] > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.parameters, adam["grad_clip_norm"])
            metrics["grad_norm:mean"] = float(norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return "json", json.dumps({"metrics": metrics}).encode()

    def save_for_sampler(self, ctx: WorkerContext, payload: bytes) -> tuple[str, bytes]:
        """The adapter published as a model of the project (served like any fine-tuned model), and a checkpoint
        naming it at tinker://{model}/sampler_weights/{name}. Saved for a sampling client (no name given, the
        SDK's save_weights_and_get_sampling_client): also that client's sampling session, made here so it exists
        when the future answers."""
        request = json.loads(payload)
        name = request["name"]
        path = f"tinker://{self.info.model_id}/sampler_weights/{name}"
        folder = Path(tempfile.mkdtemp(prefix="ftaas-sampler-"))
        try:
            self.model.save_pretrained(folder, safe_serialization=True, save_embedding_layers=False)
            uid = ids.new_id(ids.MODEL_UID)
            prefix = layout.model_prefix(uid)
            published = publish_directory(ctx.store, prefix, folder, {
                "kind": "adapter", "base_model": self.info.base_model,
                "training_api": {"model_id": self.info.model_id, "path": path}})
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        served = models.fine_tuned_model_name(self.info.base_model, self.info.project_name, _suffix(name), uid[4:12])
        answer: dict[str, Any] = {"path": path}
        with ctx.db.write() as session:
            models.add(session, name=served, uid=uid, project_id=self.info.project_id, job_id=None,
                       base_model=self.info.base_model, storage_prefix=published.prefix,
                       manifest_sha256=published.manifest_sha256)
            rows.add_checkpoint(session, TrainingCheckpoint(
                id=ids.new_id(ids.TRAINING_CHECKPOINT), project_id=self.info.project_id, model_id=self.info.model_id,
                kind="sampler_weights", path=path, storage_prefix=published.prefix,
                manifest_sha256=published.manifest_sha256, with_optimizer=False, served_model=served,
                size_bytes=_size(published.manifest), created_at=int(time.time())))
            if request.get("sampling_session_seq_id") is not None:
                sampler = rows.add_sampler(session, TrainingSampler(
                    id=f"{self.info.session_id}:sample:{request['sampling_session_seq_id']}",
                    project_id=self.info.project_id, session_id=self.info.session_id, served_model=served,
                    base_model=self.info.base_model, model_path=path, created_at=int(time.time())))
                answer = {"sampling_session_id": sampler.id}
        return "json", json.dumps(answer).encode()

    def save_state(self, ctx: WorkerContext, payload: bytes) -> tuple[str, bytes]:
        """The adapter and the optimizer's state (each parameter's moments and step count), in safetensors,
        stored as a checkpoint at tinker://{model}/weights/{name}: what `load_state` restores exactly."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        request = json.loads(payload)
        name = request["name"]
        path = f"tinker://{self.info.model_id}/weights/{name}"
        with ctx.db.read() as session:
            if rows.get_checkpoint(session, self.info.project_id, path) is not None and not request["overwrite"]:
                raise UserError(f"{path} exists; save under another name or with overwrite", code="checkpoint_exists")
        folder = Path(tempfile.mkdtemp(prefix="ftaas-state-"))
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(self.model).items()},
                      str(folder / ADAPTER_FILE))
            moments, steps = {}, []
            for index, parameter in enumerate(self.parameters):
                state = self.optimizer.state.get(parameter) or {}
                steps.append(float(state["step"]) if "step" in state else 0.0)
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        moments[f"{index}.{key}"] = state[key].detach().cpu().contiguous()
            save_file(moments or {"empty": torch.zeros(0)}, str(folder / OPTIMIZER_FILE))
            (folder / STATE_FILE).write_text(json.dumps({"base_model": self.info.base_model, "lora": self.info.lora,
                                                         "steps": steps, "parameters": len(self.parameters)}))
            uid = ids.new_id(ids.MODEL_UID)
            published = publish_directory(ctx.store, layout.training_state_prefix(uid), folder, {
                "kind": "training_state", "base_model": self.info.base_model,
                "training_api": {"model_id": self.info.model_id, "path": path}})
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        with ctx.db.write() as session:
            existing = rows.get_checkpoint(session, self.info.project_id, path)
            if existing is not None:
                session.delete(existing)
                session.flush()
            rows.add_checkpoint(session, TrainingCheckpoint(
                id=ids.new_id(ids.TRAINING_CHECKPOINT), project_id=self.info.project_id, model_id=self.info.model_id,
                kind="weights", path=path, storage_prefix=published.prefix, manifest_sha256=published.manifest_sha256,
                with_optimizer=True, size_bytes=_size(published.manifest), created_at=int(time.time())))
        return "json", json.dumps({"path": path}).encode()

    def load_state(self, ctx: WorkerContext, state: dict[str, Any]) -> None:
        """A saved state's adapter, and its optimizer's moments and step counts where `optimizer` is asked."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = Path(tempfile.mkdtemp(prefix="ftaas-state-"))
        try:
            download_artifact(ctx.store, state["prefix"], state["manifest_sha256"], folder,
                              allowed_suffixes=(".safetensors", ".json"))
            saved = json.loads((folder / STATE_FILE).read_text())
            if saved["parameters"] != len(self.parameters) or saved["lora"]["rank"] != self.info.lora["rank"]:
                raise UserError(f"{state['path']} was saved by a training model of another shape", code="invalid_state")
            set_peft_model_state_dict(self.model, {k: v.to(self.device) for k, v in load_file(
                str(folder / ADAPTER_FILE)).items()})
            self.optimizer.zero_grad(set_to_none=True)
            self.optimizer.state.clear()
            if state["optimizer"]:
                moments = load_file(str(folder / OPTIMIZER_FILE))
                for index, parameter in enumerate(self.parameters):
                    if f"{index}.exp_avg" in moments:
                        self.optimizer.state[parameter] = {
                            "step": torch.tensor(saved["steps"][index]),
                            "exp_avg": moments[f"{index}.exp_avg"].to(self.device),
                            "exp_avg_sq": moments[f"{index}.exp_avg_sq"].to(self.device)}
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def run(self, ctx: WorkerContext, kind: str, payload: bytes) -> tuple[str, bytes]:
        if kind in ("forward_backward", "forward"):
            return self.forward_backward(payload, backward=kind == "forward_backward")
        if kind == "optim_step":
            return self.optim_step(payload)
        if kind == "save_weights_for_sampler":
            return self.save_for_sampler(ctx, payload)
        if kind == "save_weights":
            return self.save_state(ctx, payload)
        if kind == "load_weights":
            state = json.loads(payload)
            self.load_state(ctx, state)
            return "json", json.dumps({"path": state["path"]}).encode()
        raise UserError(f"{kind} is not supported by this server", code="unsupported")


def _size(manifest: dict[str, Any]) -> int:
    return sum(int(entry["bytes"]) for entry in manifest["files"].values())


def _suffix(name: str) -> str:
    """A checkpoint name as a model name's suffix (1-64 of A-Z a-z 0-9 _ . -)."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "_.-") else "-" for c in name)[:64]
    return cleaned or "loop"


def hold_model(ctx: WorkerContext, model_id: str) -> str:
    """The task body: not-claimed, released (the session ended or idled out), failed or lease-lost."""
    ttl = ctx.settings.work.lease_ttl_seconds

    def read(session: Any, row: TrainingModel) -> ModelInfo:
        project = session.get(Project, row.project_id)
        return ModelInfo(row.id, row.project_id, project.name, row.session_id, row.base_model, dict(row.lora),
                         dict(row.initial_state) if row.initial_state else None)

    claimed = StandaloneWork.claim(ctx.db, rows.MODELS, model_id, owner=ctx.owner, ttl=ttl, read=read)
    if claimed is None:
        return "not-claimed"
    work, info = claimed
    renewal = work.renewal()
    patient = patiently(ctx.outages, alive=lambda: not renewal.lost.is_set())
    try:
        with renewal:
            with ctx.db.read() as session:
                ended = session.get(TrainingSession, info.session_id).finished_at is not None
            if ended:  # closed while the model waited for a worker: nothing will use it
                patient(lambda: _finish(ctx, work), "release the training model")
                return "released"
            held = HeldModel(ctx, info)
            if info.initial_state is not None:
                held.load_state(ctx, info.initial_state)
            answer = {"model_id": model_id, **({"path": info.initial_state["path"]} if info.initial_state else {})}
            with ctx.db.write() as session:
                for kind in ("create_model", "load_weights"):
                    created = rows.first_request(session, model_id, kind)
                    if created is not None:
                        rows.finish_request(session, created.id, result=("json", json.dumps(answer).encode()))
            log.info("holding training model %s (%s, rank %s, %s)", model_id, info.base_model, info.lora["rank"],
                     held.dtype or torch.float32)
            # On a CPU, the machine's thread plan for batch work, as fine-tuning jobs follow it: fewer threads while
            # chats are served, the whole machine otherwise (contracts.machine)
            governor = ctx.settings.resources.governor("batch") if held.device == "cpu" else None
            last, last_done = 0, time.monotonic()
            idle = ctx.settings.training_api.idle_seconds
            while True:
                renewal.check()
                with ctx.db.read() as session:
                    request = rows.next_request(session, model_id, last)
                    request = (request.id, request.kind, request.seq_id, request.payload) if request else None
                    owner = session.get(TrainingSession, info.session_id)
                    finished, active_at = owner.finished_at, owner.active_at
                if request is None:
                    if finished is not None or time.time() - active_at > idle:
                        patient(lambda: _finish(ctx, work), "release the training model")
                        return "released"
                    time.sleep(BUSY_LOOK_SECONDS if time.monotonic() - last_done < IDLE_AFTER_SECONDS else IDLE_LOOK_SECONDS)
                    continue
                request_id, kind, seq_id, payload = request
                try:
                    with computing(governor):
                        outcome: dict[str, Any] = {"result": held.run(ctx, kind, payload)}
                except UserError as exc:  # checked at the API; what only the model can find (a token id too large)
                    outcome = {"error": {"error": exc.public_message, "category": "user"}}
                except (IndexError, RuntimeError) as exc:
                    outcome = {"error": {"error": f"{kind} failed: {exc}", "category": "user"}}
                patient(lambda request_id=request_id, seq_id=seq_id, outcome=outcome: _record(
                    ctx, work, request_id, seq_id, outcome), "record the request's result")
                last, last_done = seq_id, time.monotonic()
    except Exception as exc:  # noqa: BLE001 - every outcome, bugs included, is settled by the taxonomy
        error = {"error": f"the training model is no longer held: {exc}", "category": "server"}
        try:
            with ctx.db.write() as session:
                rows.fail_pending(session, model_id, error)
        except Exception:  # the API reports the pending requests of a failed model by itself
            log.exception("could not fail the pending requests of %s", model_id)
        return work.settle(exc, internal_code="training_model_error")


@contextlib.contextmanager
def computing(governor: ThreadGovernor | None) -> Iterator[None]:
    """A request's computation under the thread plan: this thread's threads set to the budget now, and the work
    marked active on the machine's board while it runs (serving then keeps its share)."""
    if governor is None:
        yield
        return
    apply_budget(governor)
    with governor.working():
        yield


def _record(ctx: WorkerContext, work: StandaloneWork, request_id: str, seq_id: int, outcome: dict[str, Any]) -> None:
    """The request's result and the model's progress in one transaction, under the lease."""
    with ctx.db.write() as session:
        rows.MODELS.renew(session, work.lease, ttl=work.ttl, values={"last_seq_id": seq_id})
        rows.finish_request(session, request_id, result=outcome.get("result"), error=outcome.get("error"))


def _finish(ctx: WorkerContext, work: StandaloneWork) -> None:
    with ctx.db.write() as session:
        rows.MODELS.complete(session, work.lease, {})
