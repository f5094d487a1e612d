"""Fine-tuning jobs: creation (checks, quota, idempotency), lookups, and user-driven transitions.

Creation writes the job row, its first events and the outbox message that starts file validation in one
transaction (docs/architecture.md, "A job's life"), so a job can never exist without the message that moves it, nor the
message without the job.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import secrets
import time
from collections.abc import Callable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.fine_tuning.schemas import JobCreateRequest
from api.knowledge_evals.service import KnowledgeEvalService
from basemodels.registry import BaseModelRegistry
from contracts.errors import Conflict, InvalidRequest, NotFound, QuotaExceeded
from contracts.files.formats import FORMATS_FOR_METHOD
from contracts.settings import GraderSettings
from contracts.training.spec import Method, ReinforcementMethod, SupervisedMethod
from db import checkpoints, events, files, idempotency, ids, jobs
from db.pagination import Cursor, Page
from db.projects import Principal
from db.session import Database
from db.states import FileStatus, JobStatus
from db.tables import Checkpoint, File, FineTuningJob, JobEvent
from graders import grading
from graders.deployment import grading_context

MAX_SEED = 2_147_483_647


class JobService:
    def __init__(self, db: Database, registry: BaseModelRegistry, *, max_active_jobs: int, max_attempts: int,
                 knowledge_evals: KnowledgeEvalService | None = None,
                 integrations: frozenset[str] = frozenset(), graders: GraderSettings | None = None) -> None:
        """`integrations`: the tracker types this deployment has configured (wandb, mlflow); `graders`: how
        reinforcement jobs' graders are answered."""
        self.db = db
        self.graders = graders or GraderSettings()
        self.integrations = integrations
        self.knowledge_evals = knowledge_evals
        self.registry = registry
        self.max_active_jobs = max_active_jobs
        self.max_attempts = max_attempts

    # ------------------------------------------------------------------------------------ create
    def create(self, principal: Principal, request: JobCreateRequest, idempotency_key: str | None) -> FineTuningJob:
        method = _method_of(request)
        if request.model.startswith("ft:"):
            raise InvalidRequest("Fine-tuning a fine-tuned model is not supported yet; start from a base model.",
                                 code="model_not_available", param="model")
        if request.model not in self.registry:
            raise InvalidRequest(f"Model {request.model!r} does not exist or is not available for fine-tuning. "
                                 f"Available: {', '.join(self.registry.names())}.", code="model_not_found",
                                 param="model")
        for index, integration in enumerate(request.integrations or []):
            if integration.type not in self.integrations:
                raise InvalidRequest(
                    f"The {integration.type} integration is not configured on this deployment (its credentials and "
                    "destination are deployment settings, and its library comes with `pip install "
                    "\"ftaas[tracking]\"`: docs/training.md, \"Experiment tracking\").",
                    code="integration_not_configured", param=f"integrations[{index}].type")
        if method.section.adapter.quantization is not None and importlib.util.find_spec("bitsandbytes") is None:
            raise InvalidRequest("QLoRA (adapter.quantization) needs bitsandbytes, which this deployment does not "
                                 "have: `pip install \"ftaas[qlora]\"`.", code="quantization_unavailable",
                                 param=f"method.{method.type}.adapter.quantization")
        if isinstance(method.section, ReinforcementMethod):
            self._check_grader(method.section, request.model)
        knowledge_eval = None
        if request.knowledge_eval is not None:
            assert self.knowledge_evals is not None
            try:
                spec, _ = self.knowledge_evals.check_options(principal, request.knowledge_eval)
            except InvalidRequest as exc:
                exc.param = f"knowledge_eval.{exc.param}" if exc.param else "knowledge_eval"
                raise
            knowledge_eval = {"spec": spec.document, "spec_sha256": spec.sha256}
        request_hash = hashlib.sha256(request.model_dump_json().encode()).hexdigest()
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
            raise InvalidRequest("Idempotency-Key must be 1-255 characters.", param="Idempotency-Key")
        try:
            with self.db.write() as session:
                replay = self._replay(session, principal, idempotency_key, request_hash)
                if replay is not None:
                    return replay
                job = self._insert(session, principal, request, method, knowledge_eval)
                if idempotency_key is not None:
                    idempotency.remember(session, project_id=principal.project_id, key=idempotency_key,
                                         request_hash=request_hash, resource_id=job.id)
                return job
        except IntegrityError:
            if idempotency_key is None:
                raise
            # A concurrent request with the same key won the insert; answer with its job.
            with self.db.read() as session:
                replay = self._replay(session, principal, idempotency_key, request_hash)
            if replay is None:
                raise
            return replay

    def _replay(self, session: Session, principal: Principal, key: str | None, request_hash: str) -> FineTuningJob | None:
        if key is None:
            return None
        seen = idempotency.lookup(session, principal.project_id, key)
        if seen is None:
            return None
        if seen.request_hash != request_hash:
            raise Conflict("This Idempotency-Key was already used with a different request.",
                           code="idempotency_key_reused", param="Idempotency-Key")
        job = jobs.get(session, principal.project_id, seen.resource_id)
        if job is None:
            raise Conflict("The object created with this Idempotency-Key no longer exists.",
                           code="idempotency_key_reused", param="Idempotency-Key")
        return job

    def _insert(self, session: Session, principal: Principal, request: JobCreateRequest, method: Method,
                knowledge_eval: dict | None = None) -> FineTuningJob:
        if getattr(method.section, "early_stopping", None) is not None and request.validation_file is None:
            raise InvalidRequest("Early stopping watches the validation loss: give a validation_file.",
                                 code="invalid_method", param=f"method.{method.type}.early_stopping")
        training = self._usable_file(session, principal, request.training_file, "training_file", method)
        if request.validation_file is not None:
            self._usable_file(session, principal, request.validation_file, "validation_file", method)
        if jobs.count_active(session, principal.project_id, at_most=self.max_active_jobs) >= self.max_active_jobs:
            raise QuotaExceeded(f"This project already has {self.max_active_jobs} unfinished fine-tuning jobs; "
                                "wait for one to finish or cancel one.", retry_after=60)
        job = FineTuningJob(
            id=ids.new_id(ids.JOB), project_id=principal.project_id, base_model=request.model,
            training_file_id=training.id, validation_file_id=request.validation_file,
            status=JobStatus.VALIDATING_FILES, method=method.to_json(),
            hyperparameters=method.hyperparameters.model_dump(mode="json", include={
                "n_epochs", "batch_size", "learning_rate_multiplier"}),
            suffix=request.suffix, seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
            user_metadata=request.metadata, model_name_id=ids.short_model_suffix(), result_files=[],
            created_at=int(time.time()), attempt=0, max_attempts=self.max_attempts, fencing_token=0,
            knowledge_eval=knowledge_eval,
            integrations=[i.model_dump(mode="json", exclude_none=True) for i in request.integrations or []] or None,
        )
        jobs.insert(session, job, training_file=training.id, validation_file=request.validation_file)
        return job

    def _check_grader(self, section: ReinforcementMethod, base_model: str) -> None:
        """The grader can run where the job will train: its templates and formulas parse, python graders can
        be isolated, and model graders have an endpoint (the configured one, or the training worker's own
        engine, which serves the job's base model)."""
        context = grading_context(self.graders)
        try:
            grading.check(section.grader, context, param="method.reinforcement.grader", require_endpoint=False)
        finally:
            context.close()
        if self.graders.model_base_url is None:
            for grader in grading.model_graders_in(section.grader):
                if grader.model != base_model:
                    raise InvalidRequest(
                        f"The {grader.type} grader {grader.name!r} asks model {grader.model!r}: this deployment has no "
                        f"grader endpoint (FTAAS_GRADER_MODEL_BASE_URL), and the training worker's engine answers only "
                        f"with the job's base model ({base_model!r}).", code="grader_unavailable",
                        param="method.reinforcement.grader")

    @staticmethod
    def _usable_file(session: Session, principal: Principal, file_id: str, param: str, method: Method) -> File:
        row = files.get(session, principal.project_id, file_id)
        if row is None:
            raise InvalidRequest(f"Invalid file ID: {file_id} (no such file in this project).",
                                 code="file_not_found", param=param)
        if row.purpose != "fine-tune":
            raise InvalidRequest(f"File {file_id} has purpose {row.purpose!r}; fine-tuning needs purpose 'fine-tune'.",
                                 code=f"invalid_{param}", param=param)
        if row.status == FileStatus.ERROR:
            raise InvalidRequest(f"File {file_id} failed validation: {row.status_details}",
                                 code=f"invalid_{param}", param=param)
        if row.status == FileStatus.PROCESSED and row.data_format not in FORMATS_FOR_METHOD[method.type]:
            raise InvalidRequest(
                f"File {file_id} is in the {row.data_format} format; {method.type} fine-tuning needs "
                f"{' or '.join(FORMATS_FOR_METHOD[method.type])}.", code=f"invalid_{param}", param=param)
        if row.status == FileStatus.PROCESSED and isinstance(method.section, ReinforcementMethod):
            missing = grading.first_line_missing(method.section.grader, row.item_fields or {})
            if missing is not None:
                raise InvalidRequest(missing_field_message(file_id, missing), code=f"invalid_{param}", param=param)
        return row

    # ------------------------------------------------------------------------------------ lookups
    def get(self, principal: Principal, job_id: str) -> FineTuningJob:
        with self.db.read() as session:
            return self._get(session, principal, job_id)

    @staticmethod
    def _get(session: Session, principal: Principal, job_id: str) -> FineTuningJob:
        job = jobs.get(session, principal.project_id, job_id)
        if job is None:
            raise NotFound(f"No such fine-tuning job: {job_id}", code="fine_tuning_job_not_found",
                           param="fine_tuning_job_id")
        return job

    def list(self, principal: Principal, cursor: Cursor, *, metadata: dict[str, str]) -> Page[FineTuningJob]:
        with self.db.read() as session:
            return jobs.list_page(session, principal.project_id, cursor, metadata=metadata)

    def events(self, principal: Principal, job_id: str, cursor: Cursor) -> Page[JobEvent]:
        with self.db.read() as session:
            self._get(session, principal, job_id)
            return events.list_page(session, principal.project_id, job_id, cursor)

    def checkpoints(self, principal: Principal, job_id: str, cursor: Cursor) -> Page[Checkpoint]:
        with self.db.read() as session:
            self._get(session, principal, job_id)
            return checkpoints.list_page(session, principal.project_id, job_id, cursor)

    # -------------------------------------------------------------------------------- transitions
    def cancel(self, principal: Principal, job_id: str) -> FineTuningJob:
        return self._transition(principal, job_id, jobs.cancel)

    def pause(self, principal: Principal, job_id: str) -> FineTuningJob:
        return self._transition(principal, job_id, jobs.pause)

    def resume(self, principal: Principal, job_id: str) -> FineTuningJob:
        return self._transition(principal, job_id, jobs.resume)

    def _transition(self, principal: Principal, job_id: str,
                    change: Callable[[Session, FineTuningJob], FineTuningJob]) -> FineTuningJob:
        with self.db.write() as session:
            return change(session, self._get(session, principal, job_id))


def missing_field_message(file_id: str, missing: tuple[str, int]) -> str:
    name, line = missing
    return (f"File {file_id}, line {line}, has no field {name!r}, which the grader reads as "
            f"{{{{item.{name}}}}}: every line needs it.")


def _method_of(request: JobCreateRequest) -> Method:
    """The method, from `method` or the deprecated top-level `hyperparameters` (not both, unless equal)."""
    if request.method is None:
        hyperparameters = request.hyperparameters or SupervisedMethod().hyperparameters
        return Method(type="supervised", supervised=SupervisedMethod(hyperparameters=hyperparameters))
    if request.hyperparameters is not None:
        given = request.hyperparameters.model_dump()
        in_method = request.method.hyperparameters.model_dump(include=set(given))
        if json.dumps(given, sort_keys=True) != json.dumps(in_method, sort_keys=True):
            raise InvalidRequest("Give hyperparameters either at the top level (deprecated) or in "
                                 "method.<type>.hyperparameters, not both.", param="hyperparameters")
    return request.method
