"""Projects and their API keys.

Keys are `sk-ftaas-` followed by 43 url-safe characters (256 random bits). Only the SHA-256 of a key is
stored; authentication looks the hash up and compares it in constant time. A plaintext key exists only in
the return value of `create_api_key` (and in the caller's hands).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from contracts.errors import InvalidRequest, NotFound
from db import ids
from db.tables import ApiKey, Project

KEY_PREFIX = "sk-ftaas-"
PROJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the project every query of the request is scoped to."""

    project_id: str
    project_name: str
    api_key_id: str


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def ensure_project(session: Session, name: str) -> Project:
    """The project called `name`, created if missing."""
    if not PROJECT_NAME.match(name):
        raise InvalidRequest(
            f"project name {name!r}: lower-case letters, digits, '-' and '_', at most 63 characters",
            param="project",
        )
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        project = Project(id=ids.new_id(ids.PROJECT), name=name, created_at=int(time.time()))
        session.add(project)
        session.flush()
    return project


def create_api_key(session: Session, project: Project, *, name: str | None = None,
                   plaintext: str | None = None) -> tuple[ApiKey, str]:
    """Register a key for `project`. With `plaintext`, registers that key (idempotently)."""
    if plaintext is None:
        plaintext = generate_key()
    elif len(plaintext) < 20:
        raise InvalidRequest("an API key must have at least 20 characters", param="api_key")
    digest = hash_key(plaintext)
    existing = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if existing is not None:
        if existing.project_id != project.id:
            raise InvalidRequest("that key is already registered for another project", param="api_key")
        return existing, plaintext
    key = ApiKey(
        id=ids.new_id(ids.API_KEY),
        project_id=project.id,
        key_hash=digest,
        hint=f"{plaintext[:9]}...{plaintext[-4:]}",
        name=name,
        created_at=int(time.time()),
    )
    session.add(key)
    session.flush()
    return key, plaintext


def authenticate(session: Session, plaintext: str) -> Principal | None:
    """The principal for an active key, or None for an unknown or revoked one."""
    digest = hash_key(plaintext)
    # Columns, not entities: this runs on every request.
    row = session.execute(
        select(ApiKey.id, ApiKey.project_id, ApiKey.key_hash, ApiKey.revoked_at, Project.name)
        .join(Project, Project.id == ApiKey.project_id)
        .where(ApiKey.key_hash == digest)
    ).first()
    if row is None:
        return None
    key_id, project_id, key_hash, revoked_at, project_name = row
    # The lookup is by hash already; the constant-time comparison guards against a future change to a
    # prefix or partial-index lookup turning this into a timing oracle.
    if not hmac.compare_digest(key_hash, digest) or revoked_at is not None:
        return None
    return Principal(project_id=project_id, project_name=project_name, api_key_id=key_id)


def list_keys(session: Session, project_name: str | None = None) -> list[tuple[ApiKey, str]]:
    stmt = select(ApiKey, Project.name).join(Project, Project.id == ApiKey.project_id).order_by(ApiKey.id)
    if project_name is not None:
        stmt = stmt.where(Project.name == project_name)
    return [(key, name) for key, name in session.execute(stmt)]


def revoke_key(session: Session, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"no API key {key_id!r}", param="key_id")
    if key.revoked_at is None:
        key.revoked_at = int(time.time())
    return key


def project_has_keys(session: Session, project_id: str) -> bool:
    return session.scalar(
        select(ApiKey.id).where(ApiKey.project_id == project_id, ApiKey.revoked_at.is_(None)).limit(1)
    ) is not None
