"""`ftaas eval ...`: knowledge evals from the command line.

Against a running server (`--base-url`, `--api-key`, or FTAAS_BASE_URL / FTAAS_API_KEY):
    ftaas eval run --model ft:... --suite fictional_people [--suite control] [--wait] [--output DIR]
    ftaas eval run --model ft:... --compare-with reference.jsonl [--reference-model M] [--judge-model J]
    ftaas eval show keval_...  [--output DIR]          status, summary table, downloads
    ftaas eval list
Local, no server needed:
    ftaas eval suites                                  built-in suites
    ftaas eval suite NAME [--seed N] [--size N] -o suite.jsonl [--training-file train.jsonl]
    ftaas eval import-finetunebench DIR -o OUTDIR      your copy of the FineTuneBench CSVs -> suite files
    ftaas eval score-responses --finetunebench DIR     scoring-only mode: re-score published responses
    ftaas eval table report.json                       a report's summary table
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from ftaas.cli_http import check, server_options
from ftaas.cli_http import client as http_client


@click.group("eval")
def eval_group() -> None:
    """Knowledge evals: what a fine-tune taught, and what it broke (base vs tuned)."""


def _print_report(report: dict[str, Any]) -> None:
    from evals.comparison import REPORT_OBJECT, summary_lines
    from evals.report import format_table, summary_rows

    if report.get("object") == REPORT_OBJECT:
        click.echo(f"{report['models']['candidate']} vs {report['models']['reference']}")
        for line in summary_lines(report["summary"]):
            click.echo(line)
        return

    click.echo(f"{report['tuned_model']['id']} vs base {report['base_model']['id']} (spec {report['spec']['name']}, "
               f"{report['spec']['sha256'][:12]})")
    click.echo(format_table(summary_rows(report)))
    for warning in report.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)


def _download(client: Any, eval_id: str, output: Path | None) -> dict[str, Any]:
    report = check(client.get(f"/knowledge_evals/{eval_id}/report")).json()
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        from evals.artifacts import RESULT_FILES

        for kind, (name, _) in RESULT_FILES.items():
            response = client.get(f"/knowledge_evals/{eval_id}/{kind}")
            if response.status_code == 404:
                continue
            (output / name).write_bytes(check(response).content)
        click.echo(f"results written to {output}", err=True)
    return report


def _follow(client: Any, eval_id: str, poll: float) -> dict[str, Any]:
    from tqdm import tqdm

    bar = tqdm(total=0, unit="answer", desc=eval_id, file=sys.stderr, dynamic_ncols=True)
    try:
        while True:
            state = check(client.get(f"/knowledge_evals/{eval_id}")).json()
            progress = state["progress"]
            if progress["total"] and bar.total != progress["total"]:
                bar.total = progress["total"]
            bar.n = progress["done"]
            bar.set_postfix_str(state["status"])
            bar.refresh()
            if state["status"] in ("succeeded", "failed", "cancelled"):
                return state
            time.sleep(poll)
    finally:
        bar.close()


@eval_group.command("run")
@click.option("--model", required=True, help="The model to evaluate (ft:..., a checkpoint, or a base model).")
@click.option("--suite", "suites", multiple=True,
              help="A built-in suite (fictional_people, api_renames, dated_events, control; with options as "
                   "'fictional_people?size=8&seed=1') or an uploaded suite file id. Repeatable.")
@click.option("--spec", "spec_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An eval spec JSON file (instead of --suite).")
@click.option("--compare-with", default=None,
              help="Instead of --suite/--spec: compare MODEL with an original whose answers are in this reference "
                   "file (chat JSONL, each line ending with the original's answer; a path is uploaded first, or a "
                   "file id).")
@click.option("--reference-model", default=None,
              help="With --compare-with: this model answers as the original (the file then holds prompts only).")
@click.option("--judge-model", default=None, help="LLM judge: for free-text answers (--suite) or which answer is "
                                                  "better (--compare-with).")
@click.option("--max-new-tokens", type=int, default=None,
              help="Tokens per answer (default 32 with --suite, 512 with --compare-with).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow progress until it finishes.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write report.json, items.jsonl and the charts here.")
@click.option("--poll", type=float, default=1.0, show_default=True, help="Seconds between status checks.")
@server_options
def run(model: str, suites: tuple[str, ...], spec_path: Path | None, compare_with: str | None,
        reference_model: str | None, judge_model: str | None, max_new_tokens: int | None, wait: bool,
        output: Path | None, poll: float, base_url: str, api_key: str) -> None:
    """Start a knowledge eval of MODEL against its base model (or a comparison with an original), follow it,
    print the summary table."""
    if compare_with is not None and (suites or spec_path is not None):
        raise click.UsageError("give --compare-with or --suite/--spec, not both")
    if reference_model is not None and compare_with is None:
        raise click.UsageError("--reference-model goes with --compare-with")
    body: dict[str, Any] = {"model": model}
    if compare_with is not None:
        with http_client(base_url, api_key) as client:
            reference_file = compare_with
            if Path(compare_with).is_file():
                path = Path(compare_with)
                with path.open("rb") as handle:
                    uploaded = check(client.post("/files", files={"file": (path.name, handle)},
                                                 data={"purpose": "evals"})).json()
                reference_file = uploaded["id"]
                click.echo(f"{path} uploaded as {reference_file}", err=True)
        comparison: dict[str, Any] = {"reference_file": reference_file}
        for key, value in (("reference_model", reference_model), ("judge_model", judge_model),
                           ("max_new_tokens", max_new_tokens)):
            if value is not None:
                comparison[key] = value
        body["comparison"] = comparison
        judge_model = max_new_tokens = None
    if spec_path is not None:
        body["spec"] = json.loads(spec_path.read_text())
    if suites:
        body["suites"] = [s if s.startswith(("file-", "builtin")) else f"builtin:{s}" for s in suites]
    if judge_model:
        body["judge_model"] = judge_model
    if max_new_tokens:
        body["max_new_tokens"] = max_new_tokens
    with http_client(base_url, api_key) as client:
        created = check(client.post("/knowledge_evals", json=body)).json()
        click.echo(created["id"])
        if not wait:
            return
        state = _follow(client, created["id"], poll)
        if state["status"] != "succeeded":
            raise click.ClickException(f"the eval {state['status']}: {(state.get('error') or {}).get('message')}")
        _print_report(_download(client, created["id"], output))


@eval_group.command("show")
@click.argument("eval_id")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None)
@server_options
def show(eval_id: str, output: Path | None, base_url: str, api_key: str) -> None:
    """Status of an eval; for a finished one the summary table (and its files with --output)."""
    with http_client(base_url, api_key) as client:
        state = check(client.get(f"/knowledge_evals/{eval_id}")).json()
        click.echo(f"{state['id']}  {state['status']}  {state['model']}  "
                   f"{state['progress']['done']}/{state['progress']['total']} answers")
        if state["status"] == "succeeded":
            _print_report(_download(client, eval_id, output))
        elif state.get("error"):
            click.echo(f"error: {state['error']['message']}", err=True)


@eval_group.command("list")
@server_options
def list_evals(base_url: str, api_key: str) -> None:
    """The project's evals, newest first."""
    with http_client(base_url, api_key) as client:
        for state in check(client.get("/knowledge_evals", params={"limit": 100})).json()["data"]:
            head = (state.get("summary") or {}).get("memorization") or {}
            click.echo(f"{state['id']}  {state['status']:<9}  {state['model']}  memorization tuned "
                       f"{head.get('mean_tuned')}")


@eval_group.command("suites")
def suites_command() -> None:
    """The built-in suites."""
    from evals.builtin import SUITES

    for info in SUITES.values():
        click.echo(f"{info.name:<18} {info.setting:<18} default size {info.default_size:<4} {info.description}")


@eval_group.command("suite")
@click.argument("name")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", type=int, default=None, help="Suite size (people, renames, events, questions).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Suite JSONL to write.")
@click.option("--training-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the chat JSONL training file of the memorization split.")
def suite_command(name: str, seed: int, size: int | None, output: Path, training_file: Path | None) -> None:
    """Generate a built-in suite (deterministic for a seed)."""
    from contracts.errors import InvalidRequest
    from evals import builtin
    from evals.items import dump_suite

    try:
        items = builtin.generate_suite(name, seed=seed, size=size)
    except InvalidRequest as exc:
        raise click.ClickException(exc.message) from None
    output.write_bytes(dump_suite(items))
    click.echo(f"{len(items)} items -> {output}", err=True)
    if training_file is not None:
        training_file.write_bytes(builtin.training_file(items))
        click.echo(f"training file -> {training_file}", err=True)


@eval_group.command("import-finetunebench")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True)
def import_command(directory: Path, output: Path) -> None:
    """Turn your copy of the FineTuneBench CSVs into suite files (one per dataset) and training files."""
    from evals.builtin import training_file
    from evals.finetunebench import import_finetunebench
    from evals.items import dump_suite

    result = import_finetunebench(directory)
    output.mkdir(parents=True, exist_ok=True)
    for dataset, items in result.items():
        (output / f"{dataset}.jsonl").write_bytes(dump_suite(items))
        if any(i.counts_toward == "memorization" for i in items):
            (output / f"{dataset}.train.jsonl").write_bytes(training_file(items))
        click.echo(f"{dataset}: {len(items)} items", err=True)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{len(result.notes)} items relabelled or dropped (see the importer's notes)", err=True)


@eval_group.command("score-responses")
@click.option("--finetunebench", "directory", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="A FineTuneBench copy with model_responses/ (scoring-only mode).")
def score_responses(directory: Path) -> None:
    """Scoring-only mode: score published responses and compare with the paper's figures."""
    from evals.report import format_table
    from evals.responses import score_finetunebench_responses

    rows = score_finetunebench_responses(directory)
    table = [(r["split"], r["model"], f"{r['accuracy']:.3f} ({r['correct']}/{r['n']})",
              "not reproduced" if r["published"] is None else f"{r['published']:.2f}",
              "" if r["difference"] is None else f"{r['difference']:+.3f}") for r in rows]
    click.echo(format_table(table, header=("split", "model", "ftaas", "published", "difference")))
    compared = [abs(r["difference"]) for r in rows if r["difference"] is not None]
    click.echo(f"{len(compared)} published figures compared; largest difference {max(compared, default=0.0):.3f}",
               err=True)


@eval_group.command("table")
@click.argument("report_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def table_command(report_path: Path) -> None:
    """Print a report's summary table."""
    _print_report(json.loads(report_path.read_text()))
