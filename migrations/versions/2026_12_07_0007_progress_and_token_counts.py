"""Adapter operations report their progress; processed training files carry their token counts.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("adapter_operations", sa.Column("progress", sa.JSON(), nullable=True))
    op.add_column("files", sa.Column("token_counts", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.drop_column("token_counts")
    with op.batch_alter_table("adapter_operations") as batch:
        batch.drop_column("progress")
