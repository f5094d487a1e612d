"""What each fine-tuning job of a source would become on an ftaas target, without changing anything.

The translation keeps what the source's job fixed and leaves to ftaas what the source left to its own
choice: explicit hyperparameters are kept, "auto" ones are omitted (ftaas chooses them, docs/training.md),
the method type and its grader are kept, the suffix, seed and metadata are kept, and the source job and
model are recorded in the new job's metadata (which is also how a re-run finds what it made before).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from contracts.metadata import MAX_PAIRS

#: Metadata keys the copy adds to a job it creates (and looks jobs up by).
SOURCE_JOB_KEY = "transfer_source_job"
SOURCE_MODEL_KEY = "transfer_source_model"
SOURCE_FINE_TUNED_MODEL_KEY = "transfer_source_fine_tuned_model"
#: Hyperparameters each method takes (OpenAI's names; ftaas takes the same).
METHOD_HYPERPARAMETERS = {
    "supervised": ("n_epochs", "batch_size", "learning_rate_multiplier"),
    "dpo": ("n_epochs", "batch_size", "learning_rate_multiplier", "beta"),
    "reinforcement": ("n_epochs", "batch_size", "learning_rate_multiplier", "compute_multiplier", "eval_interval",
                      "eval_samples", "reasoning_effort"),
}
#: Source job states whose definition is worth carrying (a cancelled job was still a definition someone wrote).
CARRIED_STATES = ("succeeded", "failed", "cancelled", "running", "queued", "validating_files", "paused")


@dataclass
class JobPlan:
    """One source job and what it becomes here. `problems` non-empty: it cannot be copied as it stands."""

    source_job: str
    source_model: str
    status: str
    training_file: str
    validation_file: str | None
    method: str
    fine_tuned_model: str | None
    trained_tokens: int | None
    #: the target base model (None: no --base-model mapping for the source model)
    base_model: str | None
    #: the job creation body for the target (None where `problems` say why not)
    create: dict[str, Any] | None
    #: hyperparameters left to ftaas ("auto" at the source)
    left_to_ftaas: list[str] = field(default_factory=list)
    #: what the source job had that is not carried (integrations hold credentials of the source's trackers)
    not_carried: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: estimated tokens the job trains: the training file's tokens x epochs (None until the file is read)
    estimated_tokens: int | None = None


def parse_base_models(pairs: Iterable[str]) -> dict[str, str]:
    """`SRC=DST` pairs (--base-model) as a mapping; `*=DST` maps every source model without its own pair."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        source, sep, target = pair.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise ValueError(f"--base-model takes SRC=DST (a source model, an ftaas base model), not {pair!r}")
        mapping[source.strip()] = target.strip()
    return mapping


def base_model_for(source_model: str, mapping: dict[str, str]) -> str | None:
    """The target base model for a source job's model: its own pair, else the pair of the model it was
    tuned from when the source model is itself a fine-tune (`ft:<base>:...`), else `*`."""
    if source_model in mapping:
        return mapping[source_model]
    if source_model.startswith("ft:"):
        base = source_model.split(":")[1]
        if base in mapping:
            return mapping[base]
    return mapping.get("*")


def suffix_of(job: dict[str, Any]) -> str | None:
    """The suffix the source job was given: its `user_provided_suffix`, else the suffix segment of its model's
    name (`ft:<base>:<org>:<suffix>:<id>`)."""
    if job.get("user_provided_suffix"):
        return str(job["user_provided_suffix"])
    parts = (job.get("fine_tuned_model") or "").split(":")
    return parts[3] or None if len(parts) >= 5 and parts[0] == "ft" else None


def method_of(job: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(method type, its options) of a source job; a job from before `method` existed is supervised with the
    job's top-level hyperparameters."""
    method = job.get("method") or {}
    kind = method.get("type") or "supervised"
    options = dict(method.get(kind) or {})
    if not options.get("hyperparameters") and job.get("hyperparameters"):
        options["hyperparameters"] = job["hyperparameters"]
    return kind, options


def plan_job(job: dict[str, Any], base_models: dict[str, str]) -> JobPlan:
    kind, options = method_of(job)
    plan = JobPlan(source_job=job["id"], source_model=job["model"], status=job.get("status", "?"),
                   training_file=job["training_file"], validation_file=job.get("validation_file"), method=kind,
                   fine_tuned_model=job.get("fine_tuned_model"), trained_tokens=job.get("trained_tokens"),
                   base_model=base_model_for(job["model"], base_models), create=None)
    if kind not in METHOD_HYPERPARAMETERS:
        plan.problems.append(f"method {kind!r} is not one ftaas runs (supervised, dpo, reinforcement)")
    if plan.base_model is None:
        plan.problems.append(f"no --base-model for {job['model']!r} (give {job['model']}=<an ftaas base model>)")
    if job.get("integrations"):
        plan.not_carried.append("integrations (" + ", ".join(str(i.get("type")) for i in job["integrations"]) + ")")
    if plan.problems:
        return plan
    hyperparameters: dict[str, Any] = {}
    given = options.get("hyperparameters") or {}
    for name in METHOD_HYPERPARAMETERS[kind]:
        value = given.get(name)
        if value is None:
            continue
        if value == "auto":
            plan.left_to_ftaas.append(name)
        else:
            hyperparameters[name] = value
    unknown = sorted(set(given) - set(METHOD_HYPERPARAMETERS[kind]))
    if unknown:
        plan.not_carried.append("hyperparameters " + ", ".join(unknown))
    method: dict[str, Any] = {"type": kind, kind: {"hyperparameters": hyperparameters}}
    if kind == "reinforcement":
        method[kind]["grader"] = options.get("grader")
    metadata = {**(job.get("metadata") or {}), SOURCE_JOB_KEY: job["id"], SOURCE_MODEL_KEY: job["model"]}
    if job.get("fine_tuned_model"):
        metadata[SOURCE_FINE_TUNED_MODEL_KEY] = job["fine_tuned_model"]
    if len(metadata) > MAX_PAIRS:
        plan.problems.append(f"its metadata has {len(job.get('metadata') or {})} pairs; with the {len(metadata) - len(job.get('metadata') or {})} "
                             f"that record the source there would be more than {MAX_PAIRS}")
        return plan
    body: dict[str, Any] = {"model": plan.base_model, "training_file": job["training_file"], "method": method,
                            "metadata": metadata}
    if job.get("validation_file"):
        body["validation_file"] = job["validation_file"]
    if suffix_of(job):
        body["suffix"] = suffix_of(job)
    if job.get("seed") is not None:
        body["seed"] = job["seed"]
    plan.create = body
    return plan


def estimate_tokens(content: bytes, epochs: int | None) -> int:
    """Tokens a training file trains for `epochs` (1 where ftaas chooses), at four characters a token: the
    rule OpenAI's own docs give for English; the target's tokenizer counts exactly once the job runs."""
    characters = 0
    for line in content.splitlines():
        if line.strip():
            characters += len(line.decode("utf-8", errors="replace"))
    return (characters // 4) * (epochs or 1)
