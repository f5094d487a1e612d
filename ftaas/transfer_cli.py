"""`ftaas transfer ...`: carry fine-tuning work from an OpenAI-compatible source (OpenAI, or another ftaas) to
this ftaas.

    ftaas transfer plan --base-model gpt-4o-mini-2024-07-18=smollm2-135m-instruct
    ftaas transfer copy --base-model '*=smollm2-135m-instruct' [--job ftjob-...] [--state-dir DIR]

The source is `--source-base-url` (default OpenAI's) with `--source-api-key` (or OPENAI_API_KEY); the target is
`--base-url` / `--api-key` (FTAAS_BASE_URL / FTAAS_API_KEY). `plan` changes nothing; `copy` is resumable and
idempotent (transfer.copy). Rate limits (429, retry-after honoured) and server errors of either end are
retried with backoff by the official SDK; a rejected key stops at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ftaas.cli_http import server_options

OPENAI_BASE_URL = "https://api.openai.com/v1"


def source_options(function: Any) -> Any:
    function = click.option("--source-api-key", envvar="OPENAI_API_KEY", required=True,
                            help="The source's API key (OPENAI_API_KEY).")(function)
    function = click.option("--source-base-url", default=OPENAI_BASE_URL, show_default=True,
                            help="The source's /v1 URL (any OpenAI-compatible API, another ftaas included).")(function)
    function = click.option("--retries", type=int, default=6, show_default=True,
                            help="Retries of a request that hit a rate limit, a server error or a dropped "
                                 "connection (exponential backoff; retry-after honoured).")(function)
    function = click.option("--base-model", "base_models", multiple=True,
                            help="SRC=DST: jobs on the source model SRC train on the ftaas base model DST "
                                 "(repeat; '*=DST' for every other model).")(function)
    function = click.option("--job", "jobs", multiple=True, help="Only these source jobs (repeat).")(function)
    return click.option("--state-dir", type=click.Path(path_type=Path), default=Path("ftaas-transfer"),
                        show_default=True, help="Downloads and what was made (resume, no duplicates).")(function)


@click.group("transfer")
def transfer_group() -> None:
    """Carry fine-tuning jobs and files from an OpenAI-compatible source to this ftaas."""


def _clients(source_base_url: str, source_api_key: str, base_url: str, api_key: str, retries: int) -> tuple[Any, Any]:
    import openai

    source = openai.OpenAI(base_url=source_base_url, api_key=source_api_key, max_retries=retries, timeout=300)
    target = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=retries, timeout=300)
    return source, target


def _source_jobs(source: Any, only: tuple[str, ...]) -> list[dict[str, Any]]:
    import openai

    try:
        if only:
            return [source.fine_tuning.jobs.retrieve(job).model_dump() for job in only]
        return [job.model_dump() for job in source.fine_tuning.jobs.list(limit=100)]
    except openai.AuthenticationError as exc:
        raise click.ClickException(f"the source rejected the API key (HTTP 401): {exc.message}") from None
    except openai.APIStatusError as exc:
        raise click.ClickException(f"the source answered HTTP {exc.status_code} listing its jobs: {exc.message}") from None


def _bar() -> Any:
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def progress(what: str, done: int, total: int | None) -> None:
        bar = bars.get(what)
        if bar is None:
            bar = bars[what] = tqdm(desc=what, total=total, unit="B", unit_scale=True, file=sys.stderr, leave=False)
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()

    return progress


def _plans(source: Any, jobs: tuple[str, ...], base_models: tuple[str, ...], state_dir: Path) -> tuple[list[Any], Any]:
    import openai

    from transfer.copy import TransferError, estimate
    from transfer.plan import parse_base_models, plan_job
    from transfer.state import TransferState

    try:
        mapping = parse_base_models(base_models)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--base-model") from None
    state = TransferState(state_dir)
    plans = [plan_job(job, mapping) for job in _source_jobs(source, jobs)]
    progress = _bar()
    for plan in plans:
        try:
            estimate(source, plan, state, progress)
        except (TransferError, openai.APIError) as exc:  # one unreadable file must not hide the other jobs
            plan.problems.append(f"training file {plan.training_file}: {exc}")
    return plans, state


@transfer_group.command("plan")
@source_options
@server_options
def plan_command(source_base_url: str, source_api_key: str, retries: int, base_models: tuple[str, ...],
                 jobs: tuple[str, ...], state_dir: Path, base_url: str, api_key: str) -> None:
    """List the source's jobs and what each would become here; changes nothing on either end."""
    source, _ = _clients(source_base_url, source_api_key, base_url, api_key, retries)
    plans, _ = _plans(source, jobs, base_models, state_dir)
    for plan in plans:
        click.echo(f"{plan.source_job}  {plan.status}  {plan.method}  {plan.source_model} -> {plan.base_model or '?'}")
        click.echo(f"    files: training {plan.training_file}" +
                   (f", validation {plan.validation_file}" if plan.validation_file else ""))
        if plan.create is not None:
            hp = plan.create["method"][plan.method]["hyperparameters"]
            click.echo(f"    hyperparameters: {hp or '{}'}" +
                       (f"; left to ftaas: {', '.join(plan.left_to_ftaas)}" if plan.left_to_ftaas else ""))
            click.echo(f"    suffix: {plan.create.get('suffix')}  seed: {plan.create.get('seed')}  "
                       f"metadata: {plan.create['metadata']}")
        tokens = f"~{plan.estimated_tokens:,}" if plan.estimated_tokens is not None else "?"
        known = f" (the source trained {plan.trained_tokens:,})" if plan.trained_tokens else ""
        click.echo(f"    tokens to train: {tokens}{known}")
        for note in plan.not_carried:
            click.echo(f"    not carried: {note}")
        for problem in plan.problems:
            click.echo(f"    CANNOT COPY: {problem}")
    copyable = sum(plan.create is not None and not plan.problems for plan in plans)
    click.echo(f"{len(plans)} jobs at the source; {copyable} can be copied.")


@transfer_group.command("copy")
@source_options
@server_options
def copy_command(source_base_url: str, source_api_key: str, retries: int, base_models: tuple[str, ...],
                 jobs: tuple[str, ...], state_dir: Path, base_url: str, api_key: str) -> None:
    """Download the source jobs' files, upload them here, and create the jobs (once, however often it runs)."""
    from tqdm import tqdm

    from transfer.copy import copy_job

    source, target = _clients(source_base_url, source_api_key, base_url, api_key, retries)
    plans, state = _plans(source, jobs, base_models, state_dir)
    failed = 0
    for plan in tqdm(plans, desc="jobs", unit="job", file=sys.stderr):
        outcome = copy_job(source, target, plan, state, _bar())
        line = f"{plan.source_job} -> {outcome.target_job or '-'}  {outcome.result}"
        tqdm.write(line + "".join(f"\n    {m}" for m in outcome.messages))
        failed += outcome.result in ("failed", "skipped")
    if failed:
        raise click.ClickException(f"{failed} of {len(plans)} jobs were not copied (see above); the rest were")
