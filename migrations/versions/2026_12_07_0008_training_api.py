"""The training API: sessions, training models held by workers, futures, saved weights, sampling sessions.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_sessions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("project_id", sa.String(40), sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("active_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
    )
    op.create_index("ix_training_sessions_project_id_id", "training_sessions", ["project_id", "id"])
    op.create_table(
        "training_models",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("project_id", sa.String(40), sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("session_id", sa.String(40), sa.ForeignKey("training_sessions.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("base_model", sa.String(128), nullable=False),
        sa.Column("lora", sa.JSON(), nullable=False),
        sa.Column("last_seq_id", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("initial_state", sa.JSON(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=True),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("fencing_token", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("dispatched_at", sa.Float(), nullable=True),
        sa.CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
                           name=op.f("ck_training_models_status")),
    )
    op.create_index("ix_training_models_project_id_status", "training_models", ["project_id", "status"])
    op.create_index("ix_training_models_status_lease_expires_at", "training_models", ["status", "lease_expires_at"])
    op.create_table(
        "training_requests",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("project_id", sa.String(40), sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model_id", sa.String(80), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("seq_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("result_format", sa.String(16), nullable=True),
        sa.Column("result", sa.LargeBinary(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'succeeded', 'failed')", name=op.f("ck_training_requests_status")),
        sa.UniqueConstraint("model_id", "seq_id", name="uq_training_requests_model_id_seq_id"),
    )
    op.create_index("ix_training_requests_model_id_status_seq_id", "training_requests", ["model_id", "status", "seq_id"])
    op.create_table(
        "training_checkpoints",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("project_id", sa.String(40), sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model_id", sa.String(80), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("path", sa.String(400), nullable=False),
        sa.Column("storage_prefix", sa.String(512), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("with_optimizer", sa.Boolean(), nullable=False),
        sa.Column("served_model", sa.String(320), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("kind IN ('weights', 'sampler_weights')", name=op.f("ck_training_checkpoints_kind")),
        sa.UniqueConstraint("project_id", "path", name="uq_training_checkpoints_project_id_path"),
    )
    op.create_index("ix_training_checkpoints_model_id", "training_checkpoints", ["model_id"])
    op.create_table(
        "training_samplers",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("project_id", sa.String(40), sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("session_id", sa.String(40), sa.ForeignKey("training_sessions.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("served_model", sa.String(320), nullable=False),
        sa.Column("base_model", sa.String(128), nullable=False),
        sa.Column("model_path", sa.String(400), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    for table in ("training_samplers", "training_checkpoints", "training_requests", "training_models",
                  "training_sessions"):
        op.drop_table(table)
