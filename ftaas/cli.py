"""The `ftaas` command: every process entrypoint reads its settings here, once, and passes them down."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from db.session import Database

import logging
import os
import sys
from pathlib import Path

import click

from contracts.settings import Settings


def _settings(**overrides: object) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _configure_logging(settings: Settings, log_file: Path | None = None) -> None:
    """Logs at the settings' level to stderr; with `log_file`, there instead, and only warnings to stderr."""
    form = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers[0].setLevel(logging.WARNING)
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(form)
    logging.basicConfig(level=settings.log_level.upper(), handlers=handlers)
    for noisy in ("httpx", "botocore", "urllib3", "filelock", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """ftaas: self-hosted, OpenAI-compatible fine-tuning as a service."""
    # Library switches, set before those libraries load: Hugging Face tokenizers' thread pool does not
    # survive fork (Celery's prefork pool), so it stays off in every ftaas process.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@main.command()
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1, FTAAS_HOST).")
@click.option("--port", type=int, default=None, help="Port to bind (default 8000, FTAAS_PORT).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Data directory (default ~/.local/share/ftaas, FTAAS_DATA_DIR).")
@click.option("--verbose", "-v", is_flag=True,
              help="Every process's log on this terminal (default: in <data dir>/logs, warnings here).")
def up(host: str | None, port: int | None, data_dir: Path | None, verbose: bool) -> None:
    """API + workers + serving + relay in one command, on the embedded default (no servers needed)."""
    from ftaas.launcher import log_folder, run_embedded

    settings = _settings(host=host, port=port, data_dir=data_dir)
    _configure_logging(settings, None if verbose else log_folder(settings) / "ftaas.log")
    sys.exit(run_embedded(settings, verbose=verbose))


@main.command()
@click.option("--host", default=None, help="Address to bind (FTAAS_HOST).")
@click.option("--port", type=int, default=None, help="Port to bind (FTAAS_PORT).")
@click.option("--with-relay/--without-relay", default=False,
              help="Also run the outbox relay and reaper in this process.")
def api(host: str | None, port: int | None, with_relay: bool) -> None:
    """The API server alone (cluster mode: the schema must already be migrated)."""
    from ftaas.launcher import run_api

    settings = _settings(host=host, port=port)
    _configure_logging(settings)
    sys.exit(run_api(settings, with_relay=with_relay))


@main.command()
@click.option("--host", default=None, help="Address to bind (FTAAS_HOST).")
@click.option("--port", type=int, default=None, help="Port to bind (FTAAS_PORT).")
def serve(host: str | None, port: int | None) -> None:
    """The inference server alone: chat/completions for base, ft: and checkpoint models, batched on one
    copy of each base model (cluster mode: the schema must already be migrated)."""
    from ftaas.launcher import run_serve

    settings = _settings(host=host, port=port)
    _configure_logging(settings)
    sys.exit(run_serve(settings))


@main.command()
@click.option("--queues", default="default,gpu", show_default=True, help="Comma-separated queues to consume.")
@click.option("--concurrency", type=int, default=None, help="Worker processes (FTAAS_WORKER_CONCURRENCY).")
@click.option("--parent-pid", type=int, default=None, hidden=True,
              help="Exit when this process exits (used by `ftaas up` for its workers).")
def worker(queues: str, concurrency: int | None, parent_pid: int | None) -> None:
    """A Celery worker for the given queues."""
    from ftaas.launcher import exit_with_parent, run_worker

    if parent_pid is not None:
        exit_with_parent(parent_pid)
    settings = _settings(worker_concurrency=concurrency)
    _configure_logging(settings)
    sys.exit(run_worker(settings, [q.strip() for q in queues.split(",") if q.strip()]))


@main.command()
def relay() -> None:
    """The outbox relay and the reaper (run one or more per cluster)."""
    from ftaas.launcher import run_relay

    settings = _settings()
    _configure_logging(settings)
    sys.exit(run_relay(settings))


@main.command()
def migrate() -> None:
    """Upgrade the database schema to the latest migration."""
    from db import migrate as migrations

    settings = _settings()
    _configure_logging(settings)
    database = _database(settings)
    try:
        migrations.upgrade(database)
        click.echo(f"database at revision {migrations.current_revision(database)}")
    finally:
        database.dispose()


@main.group()
def keys() -> None:
    """Manage API keys."""


@keys.command("create")
@click.option("--project", default=None, help="Project name (created if missing; default FTAAS_DEFAULT_PROJECT).")
@click.option("--name", default=None, help="A label for the key.")
def keys_create(project: str | None, name: str | None) -> None:
    """Create a key and print it. It is shown once; only its hash is stored."""
    from db import projects

    settings = _settings()
    database = _database(settings, require_schema=True)
    with database.write() as session:
        row = projects.ensure_project(session, project or settings.api.default_project)
        key, plaintext = projects.create_api_key(session, row, name=name)
        key_id, project_name = key.id, row.name
    database.dispose()
    click.echo(plaintext)
    click.echo(f"(key {key_id} for project {project_name}; it will not be shown again)", err=True)


@keys.command("list")
@click.option("--project", default=None, help="Only this project.")
def keys_list(project: str | None) -> None:
    """List keys (hints only; keys themselves are never stored)."""
    from db import projects

    database = _database(_settings(), require_schema=True)
    with database.read() as session:
        for key, project_name in projects.list_keys(session, project):
            state = "revoked" if key.revoked_at else "active"
            click.echo(f"{key.id}  {project_name:<20} {key.hint:<20} {state:<8} {key.name or ''}")
    database.dispose()


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by id; requests with it get 401 from then on."""
    from contracts.errors import NotFound
    from db import projects

    database = _database(_settings(), require_schema=True)
    try:
        with database.write() as session:
            projects.revoke_key(session, key_id)
    except NotFound as exc:
        raise click.ClickException(exc.message) from None
    finally:
        database.dispose()
    click.echo(f"revoked {key_id}")


def _register_subcommands() -> None:
    from ftaas.adapters_cli import adapters_group
    from ftaas.completions_cli import completions_group
    from ftaas.eval_cli import eval_group
    from ftaas.transfer_cli import transfer_group

    main.add_command(eval_group)
    main.add_command(adapters_group)
    main.add_command(completions_group)
    main.add_command(transfer_group)


_register_subcommands()


def _database(settings: Settings, *, require_schema: bool = False) -> Database:
    from db import migrate as migrations
    from db.session import Database

    if settings.database.url and settings.database.url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    assert settings.database.url is not None
    database = Database(settings.database.url, pool_size=1,
                        statement_timeout_seconds=settings.database.statement_timeout_seconds)
    if require_schema and not migrations.is_at_head(database):
        database.dispose()
        raise click.ClickException("the database schema is not up to date: run `ftaas migrate` (or `ftaas up`)")
    return database


if __name__ == "__main__":
    main()
