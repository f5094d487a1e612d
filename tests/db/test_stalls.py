"""A stalled PostgreSQL (connections open, nothing answering) costs a caller a prompt `DatabaseUnavailable`,
never a hang: on a pooled connection (the stall guard closes it past its deadline) and on a new one (the
connect timeout). A slow statement on a healthy server ends with the server's own timeout and keeps its
connection; migrations are exempt. Real PostgreSQL behind a TCP proxy the test stalls (tests/faults.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from contracts.errors import DatabaseUnavailable
from db.session import POSTGRES_TIMEOUTS, STALL_GRACE_SECONDS, Database
from tests.faults import TcpProxy

STATEMENT_TIMEOUT = 1.0


@pytest.fixture
def proxied_database(make_postgres_database) -> Iterator[tuple[Database, TcpProxy]]:
    proxy, url = TcpProxy.in_front_of(make_postgres_database())
    database = Database(url, pool_size=2, statement_timeout_seconds=STATEMENT_TIMEOUT)
    yield database, proxy
    database.dispose()
    proxy.close()


def select_one(database: Database) -> int:
    with database.read() as session:
        return session.execute(text("SELECT 1")).scalar_one()


def timed_failure(database: Database, statement: str = "SELECT 1") -> tuple[DatabaseUnavailable, float]:
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as raised, database.read() as session:
        session.execute(text(statement))
    return raised.value, time.monotonic() - started


def test_a_stall_on_a_pooled_connection_fails_past_the_deadline_and_the_database_recovers(
        proxied_database: tuple[Database, TcpProxy]) -> None:
    database, proxy = proxied_database
    assert select_one(database) == 1  # a connection waits in the pool
    with proxy.outage("stall"):
        _, waited = timed_failure(database)
        # a new connection meets the stall in its handshake: the connect timeout bounds it
        _, waited_to_connect = timed_failure(database)
    deadline = STATEMENT_TIMEOUT + STALL_GRACE_SECONDS
    assert deadline <= waited < deadline + 1.5, waited
    assert waited_to_connect < POSTGRES_TIMEOUTS["connect_seconds"] + 1.5, waited_to_connect
    assert database.stall_guard.severed == 1
    assert select_one(database) == 1


def test_a_write_that_stalls_in_its_commit_fails_too(proxied_database: tuple[Database, TcpProxy],
                                                     ) -> None:
    database, proxy = proxied_database
    with database.write() as session:
        session.execute(text("CREATE TABLE notes (body text)"))
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable), database.write() as session:
        session.execute(text("INSERT INTO notes VALUES ('kept?')"))
        proxy.stall()
    proxy.restore()
    assert time.monotonic() - started < STATEMENT_TIMEOUT + STALL_GRACE_SECONDS + 1.5
    # The outcome of an unanswered commit is unknown to its caller, as with any network failure at that
    # moment (here the proxy delivers the COMMIT once restored): writers are idempotent for that reason.
    with database.read() as session:
        assert session.execute(text("SELECT count(*) FROM notes")).scalar_one() in (0, 1)


def test_a_slow_statement_on_a_healthy_server_ends_with_the_servers_timeout_and_keeps_its_connection(
        proxied_database: tuple[Database, TcpProxy]) -> None:
    database, _ = proxied_database
    error, waited = timed_failure(database, "SELECT pg_sleep(5)")
    assert "statement timeout" in str(error) and waited < STATEMENT_TIMEOUT + 1, (error, waited)
    assert database.stall_guard.severed == 0
    assert select_one(database) == 1


def test_migrations_run_unbounded(proxied_database: tuple[Database, TcpProxy]) -> None:
    database, _ = proxied_database
    with database.unbounded() as connection:
        connection.exec_driver_sql(f"SELECT pg_sleep({STATEMENT_TIMEOUT + STALL_GRACE_SECONDS + 0.5})")
    assert database.stall_guard.severed == 0
