"""Migrations are the only source of the schema, and they behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select

from db import migrate
from db.base import Base
from db.session import Database
from db.states import transition_pairs
from db.tables import JobStatusTransition


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'm.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "make_postgres_database")()
    database = Database(url, pool_size=1)
    yield database
    database.dispose()


def test_there_is_a_single_head() -> None:
    assert len(migrate.script_directory().get_heads()) == 1


def test_upgrade_then_models_match_the_migrated_schema(empty_database: Database) -> None:
    migrate.upgrade(empty_database)
    assert migrate.is_at_head(empty_database)
    with empty_database.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
    assert differences == []


def test_every_migration_downgrades_and_upgrades_again(empty_database: Database) -> None:
    script = migrate.script_directory()
    revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
    for revision in revisions:
        migrate.upgrade(empty_database, revision)
    for revision in reversed(revisions):
        down_to = script.get_revision(revision).down_revision or "base"
        migrate.downgrade(empty_database, down_to)
    assert migrate.current_revision(empty_database) is None
    tables = set(inspect(empty_database.engine).get_table_names()) - {"alembic_version"}
    assert tables == set()
    migrate.upgrade(empty_database)
    assert migrate.is_at_head(empty_database)


def test_the_transition_table_in_the_database_is_the_state_machine_in_code(empty_database: Database) -> None:
    migrate.upgrade(empty_database)
    with empty_database.read() as session:
        rows = {(r.from_status, r.to_status) for r in session.scalars(select(JobStatusTransition))}
    assert rows == set(transition_pairs())
