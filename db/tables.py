"""ORM tables. Every user-visible row carries `project_id`; repositories filter on it in every query.

Times shown to clients (`created_at`, `finished_at`, ...) are integer Unix seconds, as the OpenAI API uses.
Lease and dispatch bookkeeping uses float Unix seconds. Ids are time-ordered (see `db.ids`), so lists
order and paginate on the primary key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base
from db.states import FileStatus, JobStatus, WorkStatus

ID = String(40)


def _in(column: str, values: list[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)


class ApiKey(Base):
    """An API key, stored only as the SHA-256 of its plaintext (keys are 256-bit random, so no slow KDF)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)


class File(Base):
    __tablename__ = "files"
    __table_args__ = (
        CheckConstraint(_in("status", [s.value for s in FileStatus]), name="status"),
        Index("ix_files_project_id_id", "project_id", "id"),
        # The reaper looks for uploads whose validation never ran.
        Index("ix_files_status_dispatched_at", "status", "dispatched_at"),
        # The reaper deletes expired files.
        Index("ix_files_expires_at", "expires_at"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16))
    status_details: Mapped[str | None] = mapped_column(Text)
    #: chat | preference | prompt_completion | reinforcement, known once validation has run.
    data_format: Mapped[str | None] = mapped_column(String(32))
    #: reinforcement data: each item field -> the first line that lacks it (None: every line has it).
    item_fields: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: processed training files: base model -> {"examples", "tokens", "trained_tokens", "longest_example"}
    #: under that model's tokenizer and chat template (what one epoch of a job on it would see).
    token_counts: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    example_count: Mapped[int | None] = mapped_column(Integer)
    #: [{"line": int|None, "code": str, "message": str}, ...], capped; `error_count` is exact.
    validation_errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    error_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    dispatched_at: Mapped[float | None] = mapped_column(Float)


class LeasedWork:
    """Execution bookkeeping of work a worker claims (jobs, knowledge evals, adapter operations); never shown
    as-is to clients. db.leased.LeasedQueue works on any table with these columns."""

    if TYPE_CHECKING:
        # Each table declares these itself (its own indexes and constraints name them); named here, for type
        # checkers only, so that code over any leased table knows them.
        id: Mapped[str]
        project_id: Mapped[str]
        status: Mapped[str]
        started_at: Mapped[int | None]
        finished_at: Mapped[int | None]

    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(Integer)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    #: Incremented by every claim; every write a worker makes is conditional on it.
    fencing_token: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    #: When the wake-up message was last sent (the reaper re-sends stale ones).
    dispatched_at: Mapped[float | None] = mapped_column(Float)


class FineTuningJob(LeasedWork, Base):
    __tablename__ = "fine_tuning_jobs"
    __table_args__ = (
        CheckConstraint(_in("status", [s.value for s in JobStatus]), name="status"),
        CheckConstraint("attempt >= 0 AND max_attempts >= 1", name="attempts"),
        Index("ix_fine_tuning_jobs_project_id_id", "project_id", "id"),
        # The active-job quota check on every job creation.
        Index("ix_fine_tuning_jobs_project_id_status", "project_id", "status"),
        # The reaper scans running jobs by lease expiry.
        Index("ix_fine_tuning_jobs_status_lease_expires_at", "status", "lease_expires_at"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    base_model: Mapped[str] = mapped_column(String(128))
    training_file_id: Mapped[str] = mapped_column(ID)
    validation_file_id: Mapped[str | None] = mapped_column(ID)
    status: Mapped[str] = mapped_column(String(24))
    #: The normalised training request: {"type": ..., "<type>": {"hyperparameters": {...}, ...}}.
    method: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: Resolved hyperparameters (concrete numbers) once the files are validated; until then as requested.
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    #: experiment trackers (contracts.training.integrations), as the job body gave them
    integrations: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    user_metadata: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON)
    #: Random 8-character segment of the fine-tuned model name, fixed at creation.
    model_name_id: Mapped[str] = mapped_column(String(8))
    fine_tuned_model: Mapped[str | None] = mapped_column(String(300))
    #: The knowledge eval to run on the fine-tuned model before the job completes (ftaas extension):
    #: {"spec": {...validated spec...}, "spec_sha256": str}, or None.
    knowledge_eval: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result_files: Mapped[list[str]] = mapped_column(JSON)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    #: When the files passed validation and the job first became `queued` (None until then).
    validated_at: Mapped[int | None] = mapped_column(BigInteger)
    started_at: Mapped[int | None] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)



class JobStatusTransition(Base):
    """The legal (from, to) status pairs, consulted by a trigger on `fine_tuning_jobs`."""

    __tablename__ = "job_status_transitions"

    from_status: Mapped[str] = mapped_column(String(24), primary_key=True)
    to_status: Mapped[str] = mapped_column(String(24), primary_key=True)


class JobEvent(Base):
    __tablename__ = "fine_tuning_job_events"
    __table_args__ = (
        CheckConstraint(_in("level", ["info", "warn", "error"]), name="level"),
        Index("ix_fine_tuning_job_events_job_id_id", "job_id", "id"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(ID)
    created_at: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Checkpoint(Base):
    __tablename__ = "fine_tuning_checkpoints"
    __table_args__ = (
        UniqueConstraint("job_id", "step_number", name="uq_fine_tuning_checkpoints_job_step"),
        Index("ix_fine_tuning_checkpoints_job_id_id", "job_id", "id"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(ID)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    model_name: Mapped[str] = mapped_column(String(320), unique=True)
    storage_prefix: Mapped[str] = mapped_column(String(512))
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)


class Model(Base):
    """A fine-tuned model owned by a project. Base models come from settings, not from this table."""

    __tablename__ = "models"
    __table_args__ = (Index("ix_models_project_id_created_at", "project_id", "created_at"),)

    #: The public name, `ft:{base}:{project}:{suffix}:{id}`.
    id: Mapped[str] = mapped_column(String(300), primary_key=True)
    #: Internal id used in storage keys (names contain ':').
    uid: Mapped[str] = mapped_column(ID, unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="SET NULL"))
    base_model: Mapped[str] = mapped_column(String(128))
    storage_prefix: Mapped[str] = mapped_column(String(512))
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)


class KnowledgeEval(LeasedWork, Base):
    """A knowledge evaluation of one model against its base model (evals/, run by worker/knowledge_evals).

    Standalone evals are claimed by a worker like jobs are (lease + fencing token); an eval attached to a
    fine-tuning job is run by that job's worker under the job's lease and finishes with the job.
    """

    __tablename__ = "knowledge_evals"
    __table_args__ = (
        CheckConstraint(_in("status", [s.value for s in WorkStatus]), name="status"),
        Index("ix_knowledge_evals_project_id_id", "project_id", "id"),
        Index("ix_knowledge_evals_status_lease_expires_at", "status", "lease_expires_at"),
        UniqueConstraint("job_id", name="uq_knowledge_evals_job_id"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    #: The evaluated model (base, ft: or checkpoint name) and the base model it is compared with.
    model: Mapped[str] = mapped_column(String(320))
    base_model: Mapped[str] = mapped_column(String(128))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_name: Mapped[str] = mapped_column(String(128))
    spec_sha256: Mapped[str] = mapped_column(String(64))
    #: Generations finished / to do (base and tuned answers), for progress reporting.
    progress_done: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    progress_total: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: Headline numbers of the finished report (memorization, generalization, forgetting).
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: Result file ids: report.json, items.jsonl, base_vs_tuned.png (and loss_curve.png when known).
    result_files: Mapped[list[str]] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    user_metadata: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON)
    created_at: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[int | None] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)



class AdapterOperation(LeasedWork, Base):
    """A merge, LiNeS scaling, compression, export or import of adapters (adapters/, run by worker/adapter_operations): each makes a new
    model (or, for exports, a file) of the project, run by a worker like a job (db.leased)."""

    __tablename__ = "adapter_operations"
    __table_args__ = (
        CheckConstraint(_in("status", [s.value for s in WorkStatus]), name="status"),
        CheckConstraint(_in("type", ["merge", "lines", "compress", "export", "import"]), name="type"),
        Index("ix_adapter_operations_project_id_id", "project_id", "id"),
        Index("ix_adapter_operations_status_lease_expires_at", "status", "lease_expires_at"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    base_model: Mapped[str] = mapped_column(String(128))
    #: The validated request: parent models (with their manifest SHA-256), method and parameters.
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: The name the new model gets (fixed at creation, like a job's), or None for exports.
    result_model: Mapped[str | None] = mapped_column(String(320))
    result_file_id: Mapped[str | None] = mapped_column(ID)
    #: What the operation measured: compression ratio, truncation errors, exported sizes.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: While it runs: {"stage": downloading | merging | compressing | exporting | importing | storing,
    #: "done", "total"} (units of the stage: adapters, modules, tensors); None before it starts.
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    user_metadata: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON)
    created_at: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[int | None] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)


class OutboxMessage(Base):
    """A task message to publish, written in the same transaction as the state change it announces."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index(
            "ix_outbox_unpublished",
            "id",
            sqlite_where=text("published_at IS NULL"),
            postgresql_where=text("published_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(128))
    args: Mapped[list[Any]] = mapped_column(JSON)
    queue: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Float)
    published_at: Mapped[float | None] = mapped_column(Float)
    publish_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)


class WebhookEndpoint(Base):
    """Where a project's webhook events go (api.webhooks). The secret signs every delivery; the API shows
    it once, at creation."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_project_id_id", "project_id", "id"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    #: the Standard Webhooks secret, `whsec_<base64>`
    secret: Mapped[str] = mapped_column(String(128))
    #: the event types it receives; None: all
    event_types: Mapped[list[str] | None] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[int] = mapped_column(BigInteger)


class WebhookDelivery(Base):
    """One event to deliver to one endpoint: the webhook outbox, written in the transaction of the state
    change it announces, delivered (with retries) by worker.webhooks."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "next_attempt_at",
              sqlite_where=text("delivered_at IS NULL AND abandoned_at IS NULL"),
              postgresql_where=text("delivered_at IS NULL AND abandoned_at IS NULL")),
        Index("ix_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    #: the event's id (`webhook-id`): the same on every attempt, so receivers can deduplicate
    event_id: Mapped[str] = mapped_column(ID)
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_attempt_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[float | None] = mapped_column(Float)
    abandoned_at: Mapped[float | None] = mapped_column(Float)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)


class IdempotencyKey(Base):
    """Remembers the object an `Idempotency-Key` created, with a hash of the request that created it."""

    __tablename__ = "idempotency_keys"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(ID)
    created_at: Mapped[int] = mapped_column(BigInteger)


class StoredCompletion(Base):
    """A chat completion kept with `store: true` (OpenAI's stored completions): the request as sent and the
    response as returned, in the project that made it. The id is the response's (`chatcmpl-...`)."""

    __tablename__ = "stored_completions"
    __table_args__ = (
        Index("ix_stored_completions_project_id_id", "project_id", "id"),
        Index("ix_stored_completions_project_id_model_id", "project_id", "model", "id"),
        Index("ix_stored_completions_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    #: the model the request named (base, ft: or checkpoint name)
    model: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[int] = mapped_column(BigInteger)
    user_metadata: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON)
    #: the request body as the client sent it (messages, tools, response_format, sampling parameters)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: the `chat.completion` object returned (for a stream: assembled from its chunks)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)


class StoredCompletionMetadata(Base):
    """One metadata pair of a stored completion, as a row so that lists filter on metadata with an index on
    every database (JSON paths differ between SQLite and PostgreSQL)."""

    __tablename__ = "stored_completion_metadata"
    __table_args__ = (Index("ix_stored_completion_metadata_key_value", "key", "value", "completion_id"),)

    completion_id: Mapped[str] = mapped_column(ForeignKey("stored_completions.id", ondelete="CASCADE"),
                                               primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(512))


# ---------------------------------------------------------------------------------------------- training API
class TrainingSession(Base):
    """A client's session on the training API (the tinker SDK's protocol): its training models and sampling
    sessions are numbered within it; heartbeats keep its models held."""

    __tablename__ = "training_sessions"
    __table_args__ = (Index("ix_training_sessions_project_id_id", "project_id", "id"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    created_at: Mapped[int] = mapped_column(BigInteger)
    #: the last heartbeat or request (the idle timeout counts from it)
    active_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)
    tags: Mapped[list[str] | None] = mapped_column(JSON)
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)


class TrainingModel(LeasedWork, Base):
    """A LoRA training model of a session, held in memory by one worker under a lease (db.leased): queued until a
    worker loads it, running while held, then succeeded (released: its session ended or idled) or failed (its
    worker was lost: what it learned since its last saved state is gone, and the client is told so)."""

    __tablename__ = "training_models"
    __table_args__ = (
        CheckConstraint(_in("status", [s.value for s in WorkStatus]), name="status"),
        Index("ix_training_models_project_id_status", "project_id", "status"),
        Index("ix_training_models_status_lease_expires_at", "status", "lease_expires_at"),
    )

    #: "{session id}:train:{n}": the SDK computes it itself
    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(ForeignKey("training_sessions.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    base_model: Mapped[str] = mapped_column(String(128))
    #: {"rank", "seed", "train_mlp", "train_attn", "train_unembed"}
    lora: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: the seq_id of the last training request the holder finished (requests run in seq_id order)
    last_seq_id: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: a saved state the model starts from (created by load_weights): {"path", "prefix", "manifest_sha256",
    #: "optimizer"}; None: a fresh adapter
    initial_state: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[int | None] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)


class TrainingRequest(Base):
    """A future of the training API: a request a client submitted (to a training model, in seq_id order, or to
    the sampler), its result once done (JSON or the SDK's protobuf), or its error."""

    __tablename__ = "training_requests"
    __table_args__ = (
        CheckConstraint(_in("status", ["pending", "succeeded", "failed"]), name="status"),
        # A client's retry of a training request carries the same seq_id: it is the same request.
        UniqueConstraint("model_id", "seq_id", name="uq_training_requests_model_id_seq_id"),
        Index("ix_training_requests_model_id_status_seq_id", "model_id", "status", "seq_id"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    #: the training model it runs on (None: a sampling request)
    model_id: Mapped[str | None] = mapped_column(String(80))
    kind: Mapped[str] = mapped_column(String(32))
    seq_id: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    #: "json" or "protobuf"
    result_format: Mapped[str | None] = mapped_column(String(16))
    result: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: {"error": message, "category": "user" | "server"}
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)


class TrainingSampler(Base):
    """A sampling session of the training API: the model its samples come from (served by the engine)."""

    __tablename__ = "training_samplers"

    #: "{session id}:sample:{n}"
    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(ForeignKey("training_sessions.id", ondelete="CASCADE"))
    #: the model the engine samples: a base model or the model a sampler checkpoint was published as
    served_model: Mapped[str] = mapped_column(String(320))
    base_model: Mapped[str] = mapped_column(String(128))
    model_path: Mapped[str | None] = mapped_column(String(400))
    created_at: Mapped[int] = mapped_column(BigInteger)


class TrainingCheckpoint(Base):
    """Weights a training model saved: its state (adapter and optimizer, to load and continue) or weights for
    the sampler (an adapter published as a model of the project, served by `served_model`)."""

    __tablename__ = "training_checkpoints"
    __table_args__ = (
        CheckConstraint(_in("kind", ["weights", "sampler_weights"]), name="kind"),
        UniqueConstraint("project_id", "path", name="uq_training_checkpoints_project_id_path"),
        Index("ix_training_checkpoints_model_id", "model_id"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    model_id: Mapped[str] = mapped_column(String(80))
    kind: Mapped[str] = mapped_column(String(16))
    #: tinker://{model id}/{kind}/{name}
    path: Mapped[str] = mapped_column(String(400))
    storage_prefix: Mapped[str] = mapped_column(String(512))
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    with_optimizer: Mapped[bool] = mapped_column(Boolean, default=False)
    served_model: Mapped[str | None] = mapped_column(String(320))
    #: the stored files' bytes (None: saved before sizes were recorded)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
