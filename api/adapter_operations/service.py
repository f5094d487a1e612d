"""Adapter operations: everything checkable is checked at creation (parents exist in the project and
share one base model, are LoRA adapters a merge can use; an imported archive unpacks safely and fits the
base model), then the operation is queued for a worker (worker.adapter_operations.service)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from adapters.archive import extract_adapter
from adapters.files import CONFIG, check_fits_base, check_lora_config, read_lora_shapes
from api.adapter_operations.schemas import ImportRequest, MergeRequest
from api.leased_work import LeasedWorkService
from basemodels.loader import BaseModelLoader
from basemodels.registry import BaseModelRegistry
from contracts.errors import InvalidRequest, NotFound
from db import adapter_operations, files, ids, models
from db.projects import Principal
from db.session import Database
from db.tables import AdapterOperation
from storage import ArtifactStore
from storage.manifest import read_manifest

QUEUE = adapter_operations.QUEUE
#: Largest archive an import accepts (its members are limited again while unpacking).
MAX_IMPORT_BYTES = 2 * 1024**3


class AdapterOperationService(LeasedWorkService[AdapterOperation]):
    queue = QUEUE
    not_found_code = "adapter_operation_not_found"

    def __init__(self, db: Database, store: ArtifactStore, registry: BaseModelRegistry, loader: BaseModelLoader, *,
                 max_attempts: int, max_rank: int) -> None:
        self.db = db
        self.store = store
        self.registry = registry
        self.loader = loader
        self.max_attempts = max_attempts
        self.max_rank = max_rank

    # ------------------------------------------------------------------------------------ parents
    def _parent(self, principal: Principal, name: str, param: str, *, lines: bool = False) -> dict[str, Any]:
        """A fine-tuned model or checkpoint of the project, as the worker will fetch it. `lines`: LiNeS will scale
        its modules by decoder-layer depth, which an output-layer (lm_head) LoRA has none of (refused)."""
        with self.db.read() as session:
            location = models.find_adapter(session, principal.project_id, name)
        if location is None:
            if name in self.registry:
                raise InvalidRequest(f"{name} is a base model; adapter operations take fine-tuned models.",
                                     code="model_not_adapter", param=param)
            raise NotFound(f"The model '{name}' does not exist or you do not have access to it.",
                           code="model_not_found", param=param)
        found = {"model": name, "base_model": location.base_model, "prefix": location.storage_prefix,
                 "manifest_sha256": location.manifest_sha256}
        manifest = read_manifest(self.store, found["prefix"], found["manifest_sha256"])
        entry = manifest["files"].get(CONFIG)
        if entry is None:
            raise InvalidRequest(f"{name} has no adapter configuration.", code="unsupported_adapter", param=param)
        config = check_lora_config(json.loads(self.store.get_bytes(found["prefix"] + CONFIG,
                                                                   sha256=entry["sha256"])), param)
        if lines and "lm_head" in str(config.get("target_modules") or ""):
            raise InvalidRequest("LiNeS scales each module by its decoder layer's depth; this adapter also trains the "
                                 "output layer (lm_head), which has none: merge without lines", code="unsupported_adapter",
                                 param="lines")
        return found

    # ------------------------------------------------------------------------------------- create
    def create(self, principal: Principal, request: Any) -> AdapterOperation:
        params: dict[str, Any]
        if isinstance(request, MergeRequest):
            parents = [self._parent(principal, name, f"models.{i}", lines=request.lines is not None)
                       for i, name in enumerate(request.models)]
            bases = {p["base_model"] for p in parents}
            if len(bases) > 1:
                raise InvalidRequest(f"The models are fine-tunes of different base models ({', '.join(sorted(bases))}); "
                                     "only adapters of one base model can be merged.", code="adapter_base_mismatch",
                                     param="models")
            weights = request.weights or [1.0 / len(parents)] * len(parents)
            params = {"parents": parents, "weights": weights, "method": request.method, "density": request.density,
                      "majority_sign": request.majority_sign, "seed": request.seed, "rank": request.rank,
                      "lines": request.lines.model_dump() if request.lines else None}
        elif request.type == "lines":
            parents = [self._parent(principal, request.model, "model", lines=True)]
            params = {"parents": parents, "weights": [1.0], "method": "linear",
                      "lines": request.lines.model_dump()}
        elif request.type == "compress":
            parents = [self._parent(principal, request.model, "model")]
            params = {"parents": parents, "density": request.density}
        elif request.type == "export":
            parents = [self._parent(principal, request.model, "model")]
            name = request.model.replace(":", "_")
            params = {"parents": parents, "format": request.format, "name": f"{name}-{request.format}"}
        else:
            params, parents = self._checked_import(principal, request), []
        base_model = parents[0]["base_model"] if parents else request.base_model
        result_model = None
        if request.type != "export":
            result_model = models.fine_tuned_model_name(base_model, principal.project_name,
                                                        request.suffix or request.type, ids.short_model_suffix())
        row = AdapterOperation(
            id=ids.new_id(ids.ADAPTER_OPERATION), project_id=principal.project_id, type=request.type,
            status="queued", base_model=base_model, params=params, result_model=result_model,
            user_metadata=request.metadata, created_at=int(time.time()), attempt=0,
            max_attempts=self.max_attempts, fencing_token=0)
        with self.db.write() as session:
            QUEUE.insert(session, row, dispatch=True)
        return row

    def _checked_import(self, principal: Principal, request: ImportRequest) -> dict[str, Any]:
        """Unpack and check the archive now, in a scratch folder, so that a bad one is a 400 (the worker
        unpacks it again before publishing)."""
        if request.base_model not in self.registry:
            raise InvalidRequest(f"Base model {request.base_model!r} is not available here.", code="model_not_found",
                                 param="base_model")
        with self.db.read() as session:
            file = files.get(session, principal.project_id, request.file)
        if file is None:
            raise InvalidRequest(f"No such file in this project: {request.file}.", code="file_not_found", param="file")
        if file.bytes > MAX_IMPORT_BYTES:
            raise InvalidRequest(f"The archive is {file.bytes} bytes; the limit is {MAX_IMPORT_BYTES}.",
                                 code="invalid_adapter_archive", param="file")
        with tempfile.TemporaryDirectory(prefix="ftaas-import-") as scratch:
            archive = Path(scratch) / "upload"
            self.store.download_file(file.storage_key, archive, sha256=file.sha256, size=file.bytes)
            extracted = extract_adapter(archive, Path(scratch) / "staging")
            _, modules = read_lora_shapes(extracted, param="file")  # the header only: no tensors, no torch
            check_fits_base(modules, self.loader.config(request.base_model), max_rank=self.max_rank)
        return {"file_id": file.id, "storage_key": file.storage_key, "sha256": file.sha256, "bytes": file.bytes}

