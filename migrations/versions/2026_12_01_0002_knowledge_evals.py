"""Knowledge evals: the knowledge_evals table, and the knowledge eval attached to a fine-tuning job.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE on both backends: a batch (table rebuild) on SQLite would drop the status triggers.
    op.add_column("fine_tuning_jobs", sa.Column("knowledge_eval", sa.JSON(), nullable=True))
    op.create_table(
        "knowledge_evals",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=320), nullable=False),
        sa.Column("base_model", sa.String(length=128), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("spec_name", sa.String(length=128), nullable=False),
        sa.Column("spec_sha256", sa.String(length=64), nullable=False),
        sa.Column("progress_done", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("progress_total", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("result_files", sa.JSON(), nullable=False),
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
                           name=op.f("ck_knowledge_evals_status")),
        sa.ForeignKeyConstraint(["job_id"], ["fine_tuning_jobs.id"],
                                name=op.f("fk_knowledge_evals_job_id_fine_tuning_jobs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_knowledge_evals_project_id_projects"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_knowledge_evals")),
        sa.UniqueConstraint("job_id", name="uq_knowledge_evals_job_id"),
    )
    op.create_index("ix_knowledge_evals_project_id_id", "knowledge_evals", ["project_id", "id"], unique=False)
    op.create_index("ix_knowledge_evals_status_lease_expires_at", "knowledge_evals", ["status", "lease_expires_at"],
                    unique=False)


def downgrade() -> None:
    op.drop_index("ix_knowledge_evals_status_lease_expires_at", table_name="knowledge_evals")
    op.drop_index("ix_knowledge_evals_project_id_id", table_name="knowledge_evals")
    op.drop_table("knowledge_evals")
    op.drop_column("fine_tuning_jobs", "knowledge_eval")
