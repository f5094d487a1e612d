"""Adapter operations in a worker: claim, do the work in a scratch folder, publish, complete.

Each operation was validated when it was created (api.adapter_operations); its row holds the parents'
storage prefixes and manifest hashes, the parameters and the name of the model it makes. Here:

    merge / lines / compress / import -> a new adapter directory -> published under models/{uid}/ with a
        manifest recording the operation (type, parents, parameters, measurements) -> a model row
    export -> a tar of the merged model (or of the adapter folder) -> a file of the project

The model row (or file row) and the `succeeded` status are written in one transaction, and only after the
objects are stored; a worker that lost its lease removes what it stored. User errors fail the operation;
infrastructure errors put it back in the queue until its attempts are spent.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from adapters.archive import extract_adapter
from adapters.compress import compress_adapter_dir
from adapters.export import export_merged
from adapters.files import (
    COMPRESSED_WEIGHTS,
    CONFIG,
    WEIGHTS,
    adapter_files,
    check_fits_base,
    load_tensors,
)
from adapters.lora_files import merge_adapters, module_shapes, read_lora, write_lora
from contracts.errors import InvalidRequest
from db import adapter_operations, files, ids, models
from db.leased import Lease
from db.states import FileStatus
from db.tables import AdapterOperation, File
from storage import layout
from storage.manifest import download_artifact, publish_directory
from worker.context import WorkerContext
from worker.outages import Patiently, patiently
from worker.standalone import StandaloneWork

log = logging.getLogger(__name__)

QUEUE = adapter_operations.QUEUE
PROGRESS_EVERY_SECONDS = 1.0


def fetch_adapter(ctx: WorkerContext, prefix: str, manifest_sha256: str, target: Path) -> Path:
    """A published adapter's verified files (dense or compressed weights, and the config)."""
    download_artifact(ctx.store, prefix, manifest_sha256, target, allowed_suffixes=(".safetensors", ".json"),
                      only=adapter_files)
    return target


def base_model_dir(ctx: WorkerContext, base_model: str) -> Path:
    """The base model's files on local disk (materialised by the loader; hub models from the local cache)."""
    path, revision = ctx.loader.resolve(base_model)
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path, revision=revision, local_files_only=ctx.settings.models.hf_offline))




class Progress:
    """The operation's progress on its row (`progress`: stage, done, total), written with a lease renewal at
    most every PROGRESS_EVERY_SECONDS and at each new stage; a write that finds the lease gone stops the work
    (`LeaseLost`), so a cancelled operation stops within seconds."""

    def __init__(self, write: Callable[[dict[str, Any]], None]) -> None:
        self.write = write
        self._stage = ""
        self._last = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage != self._stage or done == total or now - self._last >= PROGRESS_EVERY_SECONDS:
            self._stage, self._last = stage, now
            self.write({"stage": stage, "done": done, "total": total})

    def of(self, stage: str) -> Callable[[int, int], None]:
        """A (done, total) callback for the adapters library's loops."""
        return lambda done, total: self(stage, done, total)


def _perform(ctx: WorkerContext, row: AdapterOperation, work: Path, patient: Patiently, progress: Progress,
             ) -> tuple[Path | None, Path | None, dict]:
    """Do the operation: (adapter directory to publish, file to store, measurements)."""
    params = row.params
    parents = []
    for index, parent in enumerate(params.get("parents", [])):
        progress("downloading", index, len(params["parents"]))
        target = work / f"parent-{index}"
        parents.append(patient(lambda parent=parent, target=target: fetch_adapter(
            ctx, parent["prefix"], parent["manifest_sha256"], target), f"download adapter {index}"))
    out = work / "adapter"
    if row.type in ("merge", "lines"):
        adapters = [read_lora(directory) for directory in parents]
        lines = params.get("lines")
        result = merge_adapters(
            adapters, params.get("weights") or [1.0], method=params.get("method", "linear"),
            density=params.get("density", 1.0), majority_sign=params.get("majority_sign", "total"),
            seed=params.get("seed", 0), rank=params.get("rank"),
            lines=(lines["alpha"], lines["beta"]) if lines else None,
            num_layers=int(ctx.loader.config(row.base_model)["num_hidden_layers"]) if lines else None,
            progress=progress.of("merging"))
        write_lora(out, result.modules, template=adapters[0].config)
        ranks = sorted({f.rank for f in result.modules.values()})
        return out, None, {"ranks": ranks, "max_truncation_error": round(result.max_error, 6),
                           "modules": len(result.modules)}
    if row.type == "compress":
        ratio = compress_adapter_dir(parents[0], out, density=params["density"], progress=progress.of("compressing"))
        return out, None, {"compression_ratio": round(ratio, 3), "density": params["density"],
                           "stored_bytes": (out / COMPRESSED_WEIGHTS).stat().st_size}
    if row.type == "import":
        progress("importing", 0, 1)
        archive = work / "upload"
        patient(lambda: ctx.store.download_file(params["storage_key"], archive, sha256=params["sha256"],
                                                size=params["bytes"]), "download the uploaded archive")
        extracted = extract_adapter(archive, work / "extracted")
        adapter = read_lora(extracted, param="file")
        check_fits_base(module_shapes(adapter), ctx.loader.config(row.base_model), max_rank=ctx.settings.serving.max_lora_rank)
        out.mkdir()
        for name in (CONFIG, WEIGHTS):
            shutil.copyfile(extracted / name, out / name)
        return out, None, {"rank": adapter.max_rank, "modules": len(adapter.modules)}
    if row.type == "export":
        package = work / "export"
        if params["format"] == "merged":
            export_merged(base_model_dir(ctx, row.base_model), read_lora(parents[0]), package,
                          progress=progress.of("exporting"))
        else:  # the PEFT folder, with dense weights (a compressed model's decompressed) that PEFT loads
            package.mkdir()
            shutil.copyfile(parents[0] / CONFIG, package / CONFIG)
            save_file(load_tensors(parents[0]), str(package / WEIGHTS))
        tar_path = work / "export.tar"
        with tarfile.open(tar_path, "w") as archive:  # uncompressed: safetensors barely compress
            for path in sorted(package.iterdir()):
                archive.add(path, arcname=f"{params['name']}/{path.name}", recursive=False)
        return None, tar_path, {"format": params["format"], "bytes": tar_path.stat().st_size}
    raise InvalidRequest(f"unknown operation type {row.type!r}")


def run_operation(ctx: WorkerContext, operation_id: str) -> str:
    """The task body. Returns not-claimed, succeeded, failed, requeued or lease-lost."""

    def detached(session: Any, row: AdapterOperation) -> AdapterOperation:
        session.expunge(row)
        return row

    claimed = StandaloneWork.claim(ctx.db, QUEUE, operation_id, owner=ctx.owner, ttl=ctx.settings.work.lease_ttl_seconds,
                                   read=detached, values={"progress": None})  # an earlier attempt's is stale
    if claimed is None:
        return "not-claimed"
    standalone, row = claimed
    work = ctx.work_dir / f"adapter-op-{operation_id}-{standalone.lease.token}-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    stored: list[str] = []
    renewal = standalone.renewal()
    # A store or database step waits out an outage (worker.outages) instead of spending an attempt.
    patient = patiently(ctx.outages, alive=lambda: not renewal.lost.is_set())

    try:
        with renewal:
            progress = Progress(lambda value: patient(lambda: standalone.renew({"progress": value}),
                                                      "report the operation's progress"))
            directory, file_path, result = _perform(ctx, row, work, patient, progress)
            renewal.check()
            progress("storing", 0, 1)
            _publish(ctx, standalone.lease, row, directory, file_path, result, stored, patient)
        return "succeeded"
    except Exception as exc:  # noqa: BLE001 - every outcome, bugs included, is settled by the taxonomy
        _remove(ctx, stored)
        return standalone.settle(exc, internal_code="operation_error")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _publish(ctx: WorkerContext, lease: Lease, row: AdapterOperation, directory: Path | None,
             file_path: Path | None, result: dict[str, Any], stored: list[str], patient: Patiently) -> None:
    provenance = {"kind": "adapter", "model": row.result_model, "base_model": row.base_model,
                  "operation": {"id": row.id, "type": row.type, "parameters": row.params, "result": result}}
    values: dict[str, Any] = {"result": result}
    file_row = None
    #: the new model's (uid, prefix, manifest SHA-256), where the operation makes an adapter
    published: tuple[str, str, str] | None = None
    if directory is not None:
        uid = ids.new_id(ids.MODEL_UID)
        prefix = layout.model_prefix(uid)
        stored.append(prefix)
        manifest = patient(lambda: publish_directory(ctx.store, prefix, directory, provenance),
                           "publish the adapter")
        published = uid, prefix, manifest.manifest_sha256
    if file_path is not None:
        file_id = ids.new_id(ids.FILE)
        key = layout.file_key(file_id)
        stored.append(key)
        object_ = patient(lambda: ctx.store.put_file(key, file_path), "store the exported file")
        file_row = File(id=file_id, project_id=row.project_id, filename=f"{row.params['name']}.tar",
                        purpose="adapter-export", bytes=object_.size, sha256=object_.sha256, storage_key=key,
                        status=FileStatus.PROCESSED, created_at=int(time.time()), error_count=0)
        values["result_file_id"] = file_id
    def complete() -> None:
        with ctx.db.write() as session:
            if published is not None:
                uid, prefix, manifest_sha256 = published
                assert row.result_model is not None  # operations that make an adapter name it at creation
                models.add(session, name=row.result_model, uid=uid, project_id=row.project_id, job_id=None,
                           base_model=row.base_model, storage_prefix=prefix, manifest_sha256=manifest_sha256)
            if file_row is not None:
                files.insert(session, file_row)
            QUEUE.complete(session, lease, values)

    patient(complete, "complete the operation")


def _remove(ctx: WorkerContext, stored: list[str]) -> None:
    """Objects this attempt stored under keys of its own, which no row points at."""
    for key in stored:
        if key.endswith("/"):
            ctx.store.delete_prefix(key)
        else:
            ctx.store.delete(key)
