"""`ftaas completions export`: stored chat completions -> a chat training file on a running server.

    ftaas completions export --model ft:gpt-4o-mini:acme::abc --metadata team=search --since 2026-11-01 \\
                             [--until 2026-12-31] [--filename search.jsonl] [--include-truncated]

Prints the new file's id once the server has validated it (its line-numbered errors otherwise).
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import Any

import click

from ftaas.cli_http import check, server_options
from ftaas.cli_http import client as http_client


@click.group("completions")
def completions_group() -> None:
    """Stored chat completions (kept with store: true)."""


def _moment(value: str | None, name: str) -> int | None:
    """Unix seconds from an integer or an ISO 8601 date/time (UTC unless it says otherwise)."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("an ISO 8601 date or time (2026-11-01, 2026-11-01T12:00) or Unix seconds",
                                 param_hint=name) from None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


@completions_group.command("export")
@click.option("--model", default=None, help="Only completions of this model.")
@click.option("--metadata", "metadata", multiple=True, help="KEY=VALUE that a completion's metadata holds (repeat).")
@click.option("--since", default=None, help="Created at or after (ISO 8601 or Unix seconds).")
@click.option("--until", default=None, help="Created at or before (ISO 8601 or Unix seconds).")
@click.option("--filename", default="stored_completions.jsonl", show_default=True)
@click.option("--include-truncated", is_flag=True, help="Also export answers cut off by max_tokens.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the file's validation.")
@server_options
def export(model: str | None, metadata: tuple[str, ...], since: str | None, until: str | None, filename: str,
           include_truncated: bool, wait: bool, base_url: str, api_key: str) -> None:
    """Turn the stored completions matching the filter into a chat JSONL training file (Files API)."""
    pairs: dict[str, str] = {}
    for item in metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"KEY=VALUE, not {item!r}", param_hint="--metadata")
        pairs[key] = value
    body: dict[str, Any] = {"filename": filename, "include_truncated": include_truncated}
    if model:
        body["model"] = model
    if pairs:
        body["metadata"] = pairs
    for name, value in (("created_after", _moment(since, "--since")), ("created_before", _moment(until, "--until"))):
        if value is not None:
            body[name] = value
    with http_client(base_url, api_key) as client:
        result = check(client.post("/chat/completions/export", json=body)).json()
        file = result["file"]
        skipped = ", ".join(f"{n} {reason}" for reason, n in result["skipped"].items()) or "none"
        click.echo(f"{result['completions']} completions -> {result['lines']} lines (skipped: {skipped})", err=True)
        while wait and file["status"] == "uploaded":
            time.sleep(0.5)
            file = check(client.get(f"/files/{file['id']}")).json()
    if file["status"] == "error":
        click.echo(file["id"])
        raise click.ClickException(f"the file failed validation: {file.get('status_details')}")
    click.echo(file["id"])
    if not wait:
        click.echo("(not waiting for validation: see `status` of the file)", err=True)
    sys.stdout.flush()
