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

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ftaas.cli_http import server_options

OPENAI_BASE_URL = "https://api.openai.com/v1"


def connection_options(function: Any) -> Any:
    function = click.option("--source-api-key", envvar="OPENAI_API_KEY", required=True,
                            help="The source's API key (OPENAI_API_KEY).")(function)
    function = click.option("--source-base-url", default=OPENAI_BASE_URL, show_default=True,
                            help="The source's /v1 URL (any OpenAI-compatible API, another ftaas included).")(function)
    function = click.option("--retries", type=int, default=6, show_default=True,
                            help="Retries of a request that hit a rate limit, a server error or a dropped "
                                 "connection (exponential backoff; retry-after honoured).")(function)
    function = click.option("--state-dir", type=click.Path(path_type=Path), default=Path("ftaas-transfer"),
                            show_default=True, help="Downloads and what was made (resume, no duplicates).")(function)
    return server_options(function)


def source_options(function: Any) -> Any:
    function = click.option("--base-model", "base_models", multiple=True,
                            help="SRC=DST: jobs on the source model SRC train on the ftaas base model DST "
                                 "(repeat; '*=DST' for every other model).")(function)
    function = click.option("--job", "jobs", multiple=True, help="Only these source jobs (repeat).")(function)
    return connection_options(function)


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


def _confirm_spending(requests: int, yes: bool) -> None:
    """Ask before spending requests at an endpoint (never without a terminal: `--yes` says yes)."""
    if requests and not yes:
        if not sys.stdin.isatty():
            raise click.ClickException("not asking without a terminal: add --yes to spend these requests")
        click.confirm("Spend them?", abort=True, err=True)


@contextlib.contextmanager
def _translated_errors(source_base_url: str, state_dir: Path) -> Iterator[None]:
    """What either end answered, as the command's error message: a rejected key names the side that rejected
    it; any other failure says that what was fetched so far is kept for the next run."""
    import openai

    from transfer.copy import TransferError

    try:
        yield
    except openai.AuthenticationError as exc:
        side = "source" if str(exc.request.url).startswith(source_base_url.rstrip("/")) else "target"
        raise click.ClickException(f"the {side} rejected the API key (HTTP 401): {exc.message}") from None
    except (TransferError, openai.APIError) as exc:
        raise click.ClickException(f"{exc} (answers so far are kept in {state_dir}; run again to resume)") from None


def _bar() -> Any:
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def progress(what: str, done: int, total: int | None) -> None:
        bar = bars.get(what)
        if bar is None:
            in_bytes = what.startswith("download")
            bar = bars[what] = tqdm(desc=what, total=total, unit="B" if in_bytes else "it", unit_scale=in_bytes,
                                    file=sys.stderr, leave=False)
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
def copy_command(source_base_url: str, source_api_key: str, retries: int, base_models: tuple[str, ...],
                 jobs: tuple[str, ...], state_dir: Path, base_url: str, api_key: str) -> None:
    """Download the source jobs' files, upload them here, and create the jobs (once, however often it runs)."""
    from tqdm import tqdm

    from transfer.copy import copy_job

    source, target = _clients(source_base_url, source_api_key, base_url, api_key, retries)
    plans, state = _plans(source, jobs, base_models, state_dir)
    failed = 0
    for plan in tqdm(plans, desc="jobs", unit="job", file=sys.stderr):
        with _translated_errors(source_base_url, state_dir):
            outcome = copy_job(source, target, plan, state, _bar())
        line = f"{plan.source_job} -> {outcome.target_job or '-'}  {outcome.result}"
        tqdm.write(line + "".join(f"\n    {m}" for m in outcome.messages))
        failed += outcome.result in ("failed", "skipped")
    if failed:
        raise click.ClickException(f"{failed} of {len(plans)} jobs were not copied (see above); the rest were")


@transfer_group.command("distill")
@click.option("--source-model", required=True, help="The source model to learn from (e.g. an ft: model about to retire).")
@click.option("--prompts-from-job", default=None, help="Prompts: the messages of this source job's training file.")
@click.option("--prompts-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Prompts: a local chat JSONL file (a final assistant turn, if any, is left out).")
@click.option("--prompts-from-stored-completions", is_flag=True,
              help="Prompts: the source's stored chat completions (filtered by --metadata and --stored-model).")
@click.option("--stored-model", default=None, help="With --prompts-from-stored-completions: only this model's.")
@click.option("--metadata", "metadata", multiple=True, help="KEY=VALUE filter of stored completions (repeat).")
@click.option("--base-model", required=True, help="The ftaas base model the distilled job trains.")
@click.option("--suffix", default=None, help="Suffix of the distilled model's name.")
@click.option("--n-epochs", type=int, default=None, help="Epochs of the job (default: ftaas's 'auto').")
@click.option("--batch-size", type=int, default=None, help="Batch size of the job (default: 'auto').")
@click.option("--learning-rate-multiplier", type=float, default=None, help="Of the job (default: 'auto').")
@click.option("--seed", type=int, default=None, help="Seed of the job.")
@click.option("--method-options", default=None,
              help="JSON object of further method.supervised options (ftaas's training options, e.g. "
                   "'{\"rehearsal\": false}').")
@click.option("--max-tokens", type=int, default=512, show_default=True, help="Longest answer asked of the source.")
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--samples-per-prompt", type=int, default=1, show_default=True)
@click.option("--concurrency", type=int, default=4, show_default=True, help="Requests to the source at once.")
@click.option("--include-truncated", is_flag=True, help="Also train on answers cut off by --max-tokens.")
@click.option("--yes", is_flag=True, help="Do not ask before spending the requests.")
@connection_options
def distill_command(source_model: str, prompts_from_job: str | None, prompts_file: Path | None,
                    prompts_from_stored_completions: bool, stored_model: str | None, metadata: tuple[str, ...],
                    base_model: str, suffix: str | None, n_epochs: int | None, batch_size: int | None,
                    learning_rate_multiplier: float | None, seed: int | None, method_options: str | None,
                    max_tokens: int, temperature: float,
                    samples_per_prompt: int, concurrency: int, include_truncated: bool, yes: bool,
                    source_base_url: str, source_api_key: str, retries: int, state_dir: Path, base_url: str,
                    api_key: str) -> None:
    """Sample a source model on prompts, make its answers a training file here, and start a job on them."""
    import json

    from tqdm import tqdm

    from transfer import distill as distilling
    from transfer.copy import download
    from transfer.distill import (
        DistillRun,
        Sampling,
        estimate,
        load_answers,
        prompts_from_lines,
        publish,
        sample,
    )
    from transfer.state import TransferState

    chosen = [bool(prompts_from_job), prompts_file is not None, prompts_from_stored_completions]
    if sum(chosen) != 1:
        raise click.UsageError("give exactly one of --prompts-from-job, --prompts-file, "
                               "--prompts-from-stored-completions")
    try:
        options = json.loads(method_options) if method_options else {}
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--method-options") from None
    if not isinstance(options, dict) or "hyperparameters" in options:
        raise click.BadParameter("a JSON object of method.supervised options other than hyperparameters "
                                 "(give those as --n-epochs, --batch-size, --learning-rate-multiplier)",
                                 param_hint="--method-options")
    pairs = dict(item.partition("=")[::2] for item in metadata)
    source, target = _clients(source_base_url, source_api_key, base_url, api_key, retries)
    state = TransferState(state_dir)
    with _translated_errors(source_base_url, state_dir):
        if prompts_from_job:
            job = source.fine_tuning.jobs.retrieve(prompts_from_job)
            digest, _ = download(source, job.training_file, state, _bar())
            prompts = prompts_from_lines(state.file_path(digest).read_bytes(), f"source file {job.training_file}")
        elif prompts_file is not None:
            prompts = prompts_from_lines(prompts_file.read_bytes(), str(prompts_file))
        else:
            prompts = distilling.prompts_from_stored_completions(source, model=stored_model, metadata=pairs or None,
                                                      progress=_bar())
        if not prompts:
            raise click.ClickException("no prompts found")
        run = DistillRun(prompts, Sampling(source_model, max_tokens, temperature, samples_per_prompt))
        load_answers(state, run)
        requests, prompt_tokens, completion_tokens = estimate(run)
        click.echo(f"{len(prompts)} prompts x {samples_per_prompt}: {requests} requests to {source_model} still to "
                   f"make ({run.requests - requests} done before), about {prompt_tokens:,} prompt tokens and at most "
                   f"{completion_tokens:,} completion tokens.", err=True)
        _confirm_spending(requests, yes)
        with tqdm(total=run.requests, initial=run.requests - requests, desc=f"sampling {source_model}",
                  unit="req", file=sys.stderr) as bar:
            sample(source, run, state, concurrency=concurrency, progress=lambda done, _: bar.update(done - bar.n))
        hyperparameters = {name: value for name, value in (("n_epochs", n_epochs), ("batch_size", batch_size),
                                                           ("learning_rate_multiplier", learning_rate_multiplier))
                           if value is not None}
        file_id, job_id, skipped = publish(target, run, state, base_model=base_model, suffix=suffix,
                                           hyperparameters=hyperparameters, include_truncated=include_truncated,
                                           method_options=options, seed=seed)
    for index, reason in sorted(run.refused.items()):
        click.echo(f"prompt {index + 1}: the source refused it: {reason}", err=True)
    click.echo(f"training file {file_id} ({len(run.answers)} answers; skipped: {skipped or 'none'})", err=True)
    click.echo(job_id)


@transfer_group.command("compare")
@click.option("--source-model", required=True, help="The original (the model at the source).")
@click.option("--model", "candidate", required=True, help="The copy: a model of this ftaas (ft:..., a base model).")
@click.option("--prompts-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Held-out prompts: a chat JSONL file (a final assistant turn, if any, is left out).")
@click.option("--prompts-from-job", default=None, help="Held-out prompts: this source job's validation file.")
@click.option("--max-tokens", type=int, default=512, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--concurrency", type=int, default=4, show_default=True)
@click.option("--judge-model", default=None, help="Ask this model which answer is better (default: no judge).")
@click.option("--judge-base-url", default=None, help="The judge's /v1 URL (default: this ftaas).")
@click.option("--judge-api-key", default=None, envvar="FTAAS_JUDGE_API_KEY", help="The judge's key (default: --api-key).")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where report.json and items.jsonl go (default: under --state-dir).")
@click.option("--yes", is_flag=True, help="Do not ask before spending the requests.")
@connection_options
def compare_command(source_model: str, candidate: str, prompts_file: Path | None, prompts_from_job: str | None,
                    max_tokens: int, temperature: float, concurrency: int, judge_model: str | None,
                    judge_base_url: str | None, judge_api_key: str | None, output: Path | None, yes: bool,
                    source_base_url: str, source_api_key: str, retries: int, state_dir: Path, base_url: str,
                    api_key: str) -> None:
    """Compare the copy with its original on held-out prompts: agreement, similarity, tool calls, JSON
    validity, a judge's preference; Wilson intervals; per-item records. The original's answers are kept in
    the state directory, so a comparison can be run again after the original stopped answering."""
    import json

    from tqdm import tqdm

    from evals.comparison import compare, reference_line
    from transfer.copy import download
    from transfer.distill import DistillRun, Sampling, estimate, load_answers, prompts_from_lines, sample
    from transfer.state import TransferState

    if (prompts_file is None) == (prompts_from_job is None):
        raise click.UsageError("give exactly one of --prompts-file, --prompts-from-job")
    source, target = _clients(source_base_url, source_api_key, base_url, api_key, retries)
    state = TransferState(state_dir)
    with _translated_errors(source_base_url, state_dir):
        if prompts_from_job:
            job = source.fine_tuning.jobs.retrieve(prompts_from_job)
            if not job.validation_file:
                raise click.ClickException(f"{prompts_from_job} has no validation file; give held-out prompts with "
                                           "--prompts-file")
            digest, _ = download(source, job.validation_file, state, _bar())
            prompts = prompts_from_lines(state.file_path(digest).read_bytes(), f"source file {job.validation_file}")
        else:
            assert prompts_file is not None
            prompts = prompts_from_lines(prompts_file.read_bytes(), str(prompts_file))
        runs = {"original": (source, DistillRun(prompts, Sampling(source_model, max_tokens, temperature))),
                "copy": (target, DistillRun(prompts, Sampling(candidate, max_tokens, temperature)))}
        for _, run in runs.values():
            load_answers(state, run)
        requests = sum(estimate(run)[0] for _, run in runs.values())
        click.echo(f"{len(prompts)} held-out prompts: {requests} requests still to make "
                   f"({source_model} and {candidate}).", err=True)
        _confirm_spending(requests, yes)
        for name, (client, run) in runs.items():
            with tqdm(total=run.requests, initial=run.requests - len(run.missing()), desc=f"{name}: {run.sampling.model}",
                      unit="req", file=sys.stderr) as bar:
                sample(client, run, state, concurrency=concurrency, progress=lambda done, _: bar.update(done - bar.n))
        judge = None
        if judge_model:
            from evals.judge import JudgeClient

            judging = JudgeClient(judge_base_url or base_url, judge_api_key or api_key)
            judge = lambda prompts: judging.complete_many(judge_model, prompts, temperature=0, max_tokens=4)
    original, copy = runs["original"][1], runs["copy"][1]
    both = [i for i in range(len(prompts)) if (i, 0) in original.answers and (i, 0) in copy.answers]
    from contracts.errors import FTaaSError

    try:
        report = compare([prompts[i] for i in both], [original.answers[(i, 0)] for i in both],
                         [copy.answers[(i, 0)] for i in both], judge=judge)
    except FTaaSError as exc:  # the judge refused or could not be reached
        raise click.ClickException(exc.message) from None
    report["models"] = {"reference": source_model, "candidate": candidate}
    report["left_out"] = {"refused_by_original": len(original.refused), "refused_by_copy": len(copy.refused)}
    folder = output or state_dir / f"compare-{original.key}-{copy.key}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({k: v for k, v in report.items() if k != "items"}, indent=2))
    (folder / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in report["items"]))
    # The original's answers as a reference file: upload it and the server compares any model with the
    # original (`ftaas eval run --compare-with`, or a job's knowledge_eval.comparison), long after it retired.
    (folder / "reference.jsonl").write_text("".join(
        json.dumps(reference_line(prompts[i], original.answers[(i, 0)])) + "\n" for i in both))
    _print_comparison(report["summary"])
    click.echo(f"report: {folder / 'report.json'}  items: {folder / 'items.jsonl'}  "
               f"the original's answers: {folder / 'reference.jsonl'}", err=True)


def _print_comparison(summary: dict[str, Any]) -> None:
    from evals.comparison import summary_lines

    for line in summary_lines(summary):
        click.echo(line)
