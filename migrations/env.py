"""Alembic environment. The database URL comes from the caller (db.migrate) or `-x url=...`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from db import tables  # noqa: F401  (registers the tables on Base.metadata)
from db.base import Base
from db.session import Database

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database URL: pass -x url=... or use `ftaas migrate`")
    database = Database(url, pool_size=1)
    try:
        with database.unbounded() as conn:
            _run(conn)
    finally:
        database.dispose()


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things; batch mode recreates tables, finding constraints by name.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    if connection.in_transaction():
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported")
run_migrations_online()
