"""A training API checkpoint records its size (the training runs and checkpoints listing shows it).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("training_checkpoints", sa.Column("size_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_checkpoints") as batch:
        batch.drop_column("size_bytes")
