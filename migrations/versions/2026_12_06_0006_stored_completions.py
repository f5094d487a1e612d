"""Stored completions (chat completions kept with `store: true`) and their metadata pairs.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stored_completions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_stored_completions_project_id_projects"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stored_completions")),
    )
    op.create_index("ix_stored_completions_project_id_id", "stored_completions", ["project_id", "id"], unique=False)
    op.create_index("ix_stored_completions_project_id_model_id", "stored_completions", ["project_id", "model", "id"],
                    unique=False)
    op.create_index("ix_stored_completions_created_at", "stored_completions", ["created_at"], unique=False)
    op.create_table(
        "stored_completion_metadata",
        sa.Column("completion_id", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=512), nullable=False),
        sa.ForeignKeyConstraint(["completion_id"], ["stored_completions.id"],
                                name=op.f("fk_stored_completion_metadata_completion_id_stored_completions"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("completion_id", "key", name=op.f("pk_stored_completion_metadata")),
    )
    op.create_index("ix_stored_completion_metadata_key_value", "stored_completion_metadata",
                    ["key", "value", "completion_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_stored_completion_metadata_key_value", table_name="stored_completion_metadata")
    op.drop_table("stored_completion_metadata")
    op.drop_index("ix_stored_completions_created_at", table_name="stored_completions")
    op.drop_index("ix_stored_completions_project_id_model_id", table_name="stored_completions")
    op.drop_index("ix_stored_completions_project_id_id", table_name="stored_completions")
    op.drop_table("stored_completions")
