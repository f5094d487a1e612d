"""Adapter operations: merges, LiNeS scaling, compression, export and import of adapters.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adapter_operations",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("base_model", sa.String(length=128), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("result_model", sa.String(length=320), nullable=True),
        sa.Column("result_file_id", sa.String(length=40), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=True),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("fencing_token", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("dispatched_at", sa.Float(), nullable=True),
        sa.CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
                           name=op.f("ck_adapter_operations_status")),
        sa.CheckConstraint("type IN ('merge', 'lines', 'compress', 'export', 'import')",
                           name=op.f("ck_adapter_operations_type")),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_adapter_operations_project_id_projects"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapter_operations")),
    )
    op.create_index("ix_adapter_operations_project_id_id", "adapter_operations", ["project_id", "id"], unique=False)
    op.create_index("ix_adapter_operations_status_lease_expires_at", "adapter_operations",
                    ["status", "lease_expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_adapter_operations_status_lease_expires_at", table_name="adapter_operations")
    op.drop_index("ix_adapter_operations_project_id_id", table_name="adapter_operations")
    op.drop_table("adapter_operations")
