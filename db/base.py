"""Declarative base with explicit constraint names.

Explicit names make migrations deterministic on both SQLite (where batch mode recreates tables and needs
names to find constraints) and PostgreSQL.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, MetaData, Result
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def affected_rows(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE changed. `Session.execute` is typed to return a `Result`; for a DML
    statement it is a `CursorResult`, which has the count."""
    return cast(CursorResult[Any], result).rowcount
