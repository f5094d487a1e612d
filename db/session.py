"""Engines and transaction scopes for SQLite (embedded default) and PostgreSQL (cluster).

SQLite is configured as the reliability notes require: WAL journal, foreign keys enforced on every
connection, a generous busy timeout. Write transactions start with `BEGIN IMMEDIATE`: a deferred
transaction that reads and then writes fails at once with "database is locked" when another process
committed in between, whereas an immediate one waits its turn on the busy timeout. Read transactions
stay deferred so that readers never queue behind writers (WAL lets them run concurrently).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from contracts.errors import DatabaseUnavailable
from db.stalls import UNBOUNDED, StallGuard

_SQLITE_BEGIN = "ftaas_sqlite_begin"


def normalise_url(url: str) -> str:
    """Pin the PostgreSQL driver to psycopg 3 whatever spelling the operator used."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


class Database:
    """Owns one engine and hands out transaction-scoped sessions.

    `write()` and `read()` commit on success and roll back on error. Connection failures surface as
    `DatabaseUnavailable` (an infrastructure error: retryable); constraint violations surface unchanged.

    `read()` is reentrant per thread: a read scope opened inside another one on the same thread joins it,
    so the API can run a whole request (authentication and the service's reads) in one transaction and one
    consistent snapshot. `write()` always opens its own transaction.
    """

    def __init__(self, url: str, *, pool_size: int = 10, max_overflow: int | None = None,
                 statement_timeout_seconds: float = 10.0) -> None:
        """`pool_size` should cover the threads that use the database at once (for the API, the request
        thread pool): connections beyond it are opened and closed per use, which is costly under load.

        PostgreSQL: the server cancels a statement after `statement_timeout_seconds`, and a round trip still
        unanswered `STALL_GRACE_SECONDS` later has its connection closed (db/stalls.py): either way the
        caller gets `DatabaseUnavailable`. `unbounded()` connections (migrations) are exempt."""
        self.url = normalise_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            self.engine: Engine = create_engine(
                self.url,
                connect_args={"check_same_thread": False, "timeout": 30},
                pool_size=pool_size,
                max_overflow=pool_size if max_overflow is None else max_overflow,
            )
            _configure_sqlite(self.engine)
        else:
            self.engine = create_engine(
                self.url, pool_size=pool_size, max_overflow=pool_size if max_overflow is None else max_overflow,
                # No pre-ping (a round trip per checkout): a dropped connection fails one request with a
                # retryable 503, and SQLAlchemy then invalidates the whole pool.
                pool_recycle=1800, pool_timeout=POSTGRES_TIMEOUTS["pool_seconds"],
                connect_args=postgres_connect_args(statement_timeout_seconds),
            )
            self.stall_guard = StallGuard(statement_timeout_seconds + STALL_GRACE_SECONDS)
            self.stall_guard.install(self.engine)
        self._reader = sessionmaker(bind=self.engine, expire_on_commit=False, autoflush=False)
        self._current_read = threading.local()
        # SQLite has one writer at a time. Writers of this process queue here, handing the lock over at once,
        # instead of in SQLite's busy handler, which sleeps (up to 100 ms per retry) and made the p99 of
        # job creation over a second under load (docs/benchmarks.md). Other processes still meet the busy
        # timeout.
        self._write_lock = threading.Lock() if self.is_sqlite else None
        self._writer = sessionmaker(
            bind=self.engine.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"}), expire_on_commit=False
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def write(self) -> Iterator[Session]:
        with self._write_lock or nullcontext(), _translated(), self._writer.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        current = getattr(self._current_read, "session", None)
        if current is not None:
            yield current
            return
        with _translated(), self._reader.begin() as session:
            self._current_read.session = session
            try:
                yield session
            finally:
                self._current_read.session = None

    @contextmanager
    def unbounded(self) -> Iterator[Connection]:
        """A connection of its own with no statement timeout and no stall deadline, for work that may
        legitimately run long (migrations). It is discarded afterwards, never returned to the pool."""
        connection = self.engine.connect().execution_options(**{UNBOUNDED: True})
        try:
            if not self.is_sqlite:
                connection.exec_driver_sql("SET statement_timeout = 0")
                connection.commit()
            yield connection
        finally:
            connection.invalidate()
            connection.close()

    def dispose(self) -> None:
        self.engine.dispose()


#: Bounds on every wait on PostgreSQL, so that a database that is down or stalled costs a request a prompt
#: retryable 503 (DatabaseUnavailable) instead of a hang: connecting, waiting for a pooled connection, a
#: lock, a transaction left idle, and unacknowledged data on the socket (the kernel drops a connection whose
#: peer stopped acknowledging, which a half-open connection would not say). Statements: see `Database`.
POSTGRES_TIMEOUTS = {"connect_seconds": 5, "pool_seconds": 10, "lock_ms": 10_000,
                     "idle_in_transaction_ms": 60_000, "tcp_user_timeout_ms": 15_000}
#: how long past the server's statement timeout a round trip may go unanswered before its connection is closed
STALL_GRACE_SECONDS = 2.0


def postgres_connect_args(statement_timeout_seconds: float) -> dict[str, object]:
    t = POSTGRES_TIMEOUTS
    statement_ms = round(statement_timeout_seconds * 1000)
    return {
        "connect_timeout": t["connect_seconds"],
        "options": f"-c statement_timeout={statement_ms} -c lock_timeout={min(t['lock_ms'], statement_ms)} "
                   f"-c idle_in_transaction_session_timeout={t['idle_in_transaction_ms']}",
        "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
        "tcp_user_timeout": t["tcp_user_timeout_ms"],
    }


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        raise DatabaseUnavailable(f"database error: {exc.orig or exc}") from exc
    except PoolTimeout as exc:  # every pooled connection is busy (or stuck on a stalled database)
        raise DatabaseUnavailable(f"no database connection within the pool timeout: {exc}") from exc


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so that BEGIN is ours (see module docstring).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        # NORMAL in WAL mode survives process crashes; only an OS crash can lose the last commits.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
        # Straight to the driver: this runs for every transaction, and SQLAlchemy's statement machinery
        # would cost more than the statement (pysqlite then knows it is in a transaction and commits it).
        driver = connection.connection.driver_connection
        assert driver is not None  # a connection that begins a transaction is checked out
        driver.execute(f"BEGIN {mode}")
