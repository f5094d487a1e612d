"""Initial schema: projects, API keys, files, fine-tuning jobs, events, checkpoints, models, outbox,
idempotency keys, and the job status state machine enforced in the database.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Static copy of db.states.TRANSITIONS at this revision (migrations must not import moving code).
# tests/db/test_job_state_machine.py checks the database content against db.states.
JOB_STATUS_TRANSITIONS = [
    ("paused", "cancelled"), ("paused", "queued"), ("paused", "validating_files"),
    ("pausing", "cancelled"), ("pausing", "failed"), ("pausing", "paused"), ("pausing", "succeeded"),
    ("queued", "cancelled"), ("queued", "failed"), ("queued", "paused"), ("queued", "running"),
    ("running", "cancelled"), ("running", "failed"), ("running", "pausing"), ("running", "queued"),
    ("running", "succeeded"),
    ("validating_files", "cancelled"), ("validating_files", "failed"), ("validating_files", "paused"),
    ("validating_files", "queued"),
]

SQLITE_TRIGGERS = [
    """
    CREATE TRIGGER trg_fine_tuning_jobs_initial_status
    BEFORE INSERT ON fine_tuning_jobs
    FOR EACH ROW WHEN NEW.status <> 'validating_files'
    BEGIN
        SELECT RAISE(ABORT, 'illegal initial job status');
    END
    """,
    """
    CREATE TRIGGER trg_fine_tuning_jobs_status_transition
    BEFORE UPDATE OF status ON fine_tuning_jobs
    FOR EACH ROW WHEN OLD.status <> NEW.status AND NOT EXISTS (
        SELECT 1 FROM job_status_transitions
        WHERE from_status = OLD.status AND to_status = NEW.status)
    BEGIN
        SELECT RAISE(ABORT, 'illegal job status transition');
    END
    """,
]

POSTGRES_TRIGGERS = [
    """
    CREATE FUNCTION ftaas_check_job_status() RETURNS trigger AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            IF NEW.status <> 'validating_files' THEN
                RAISE EXCEPTION 'illegal initial job status %', NEW.status USING ERRCODE = 'check_violation';
            END IF;
        ELSIF NEW.status IS DISTINCT FROM OLD.status AND NOT EXISTS (
            SELECT 1 FROM job_status_transitions
            WHERE from_status = OLD.status AND to_status = NEW.status) THEN
            RAISE EXCEPTION 'illegal job status transition % -> %', OLD.status, NEW.status
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END
    $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER trg_fine_tuning_jobs_status
    BEFORE INSERT OR UPDATE OF status ON fine_tuning_jobs
    FOR EACH ROW EXECUTE FUNCTION ftaas_check_job_status()
    """,
]


def upgrade() -> None:
    op.create_table('job_status_transitions',
    sa.Column('from_status', sa.String(length=24), nullable=False),
    sa.Column('to_status', sa.String(length=24), nullable=False),
    sa.PrimaryKeyConstraint('from_status', 'to_status', name=op.f('pk_job_status_transitions'))
    )
    op.create_table('outbox',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('task', sa.String(length=128), nullable=False),
    sa.Column('args', sa.JSON(), nullable=False),
    sa.Column('queue', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('published_at', sa.Float(), nullable=True),
    sa.Column('publish_attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox'))
    )
    op.create_index('ix_outbox_unpublished', 'outbox', ['id'], unique=False, sqlite_where=sa.text('published_at IS NULL'), postgresql_where=sa.text('published_at IS NULL'))

    op.create_table('projects',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_projects')),
    sa.UniqueConstraint('name', name=op.f('uq_projects_name'))
    )
    op.create_table('api_keys',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('project_id', sa.String(length=40), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('hint', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('revoked_at', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_api_keys_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash'))
    )
    op.create_index(op.f('ix_api_keys_project_id'), 'api_keys', ['project_id'], unique=False)

    op.create_table('files',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('project_id', sa.String(length=40), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('purpose', sa.String(length=32), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('storage_key', sa.String(length=512), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('status_details', sa.Text(), nullable=True),
    sa.Column('data_format', sa.String(length=32), nullable=True),
    sa.Column('example_count', sa.Integer(), nullable=True),
    sa.Column('validation_errors', sa.JSON(), nullable=True),
    sa.Column('error_count', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=True),
    sa.Column('dispatched_at', sa.Float(), nullable=True),
    sa.CheckConstraint("status IN ('uploaded', 'processed', 'error')", name=op.f('ck_files_status')),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_files_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_files'))
    )
    op.create_index('ix_files_project_id_id', 'files', ['project_id', 'id'], unique=False)
    op.create_index('ix_files_status_dispatched_at', 'files', ['status', 'dispatched_at'], unique=False)
    op.create_index('ix_files_expires_at', 'files', ['expires_at'], unique=False)

    op.create_table('fine_tuning_jobs',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('project_id', sa.String(length=40), nullable=False),
    sa.Column('base_model', sa.String(length=128), nullable=False),
    sa.Column('training_file_id', sa.String(length=40), nullable=False),
    sa.Column('validation_file_id', sa.String(length=40), nullable=True),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('method', sa.JSON(), nullable=False),
    sa.Column('hyperparameters', sa.JSON(), nullable=False),
    sa.Column('suffix', sa.String(length=64), nullable=True),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('metadata', sa.JSON(), nullable=True),
    sa.Column('model_name_id', sa.String(length=8), nullable=False),
    sa.Column('fine_tuned_model', sa.String(length=300), nullable=True),
    sa.Column('error', sa.JSON(), nullable=True),
    sa.Column('result_files', sa.JSON(), nullable=False),
    sa.Column('trained_tokens', sa.BigInteger(), nullable=True),
    sa.Column('estimated_finish', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('validated_at', sa.BigInteger(), nullable=True),
    sa.Column('started_at', sa.BigInteger(), nullable=True),
    sa.Column('finished_at', sa.BigInteger(), nullable=True),
    sa.Column('attempt', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=200), nullable=True),
    sa.Column('lease_expires_at', sa.Float(), nullable=True),
    sa.Column('fencing_token', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('dispatched_at', sa.Float(), nullable=True),
    sa.CheckConstraint("status IN ('validating_files', 'queued', 'running', 'pausing', 'paused', 'succeeded', 'failed', 'cancelled')", name=op.f('ck_fine_tuning_jobs_status')),
    sa.CheckConstraint('attempt >= 0 AND max_attempts >= 1', name=op.f('ck_fine_tuning_jobs_attempts')),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_fine_tuning_jobs_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fine_tuning_jobs'))
    )
    op.create_index('ix_fine_tuning_jobs_project_id_id', 'fine_tuning_jobs', ['project_id', 'id'], unique=False)
    op.create_index('ix_fine_tuning_jobs_project_id_status', 'fine_tuning_jobs', ['project_id', 'status'], unique=False)
    op.create_index('ix_fine_tuning_jobs_status_lease_expires_at', 'fine_tuning_jobs', ['status', 'lease_expires_at'], unique=False)

    op.create_table('idempotency_keys',
    sa.Column('project_id', sa.String(length=40), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_idempotency_keys_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('project_id', 'key', name=op.f('pk_idempotency_keys'))
    )
    op.create_table('fine_tuning_checkpoints',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('project_id', sa.String(length=40), nullable=False),
    sa.Column('step_number', sa.Integer(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('model_name', sa.String(length=320), nullable=False),
    sa.Column('storage_prefix', sa.String(length=512), nullable=False),
    sa.Column('manifest_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['fine_tuning_jobs.id'], name=op.f('fk_fine_tuning_checkpoints_job_id_fine_tuning_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fine_tuning_checkpoints')),
    sa.UniqueConstraint('job_id', 'step_number', name='uq_fine_tuning_checkpoints_job_step'),
    sa.UniqueConstraint('model_name', name=op.f('uq_fine_tuning_checkpoints_model_name'))
    )
    op.create_index('ix_fine_tuning_checkpoints_job_id_id', 'fine_tuning_checkpoints', ['job_id', 'id'], unique=False)

    op.create_table('fine_tuning_job_events',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('project_id', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('level', sa.String(length=8), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('data', sa.JSON(), nullable=True),
    sa.CheckConstraint("level IN ('info', 'warn', 'error')", name=op.f('ck_fine_tuning_job_events_level')),
    sa.ForeignKeyConstraint(['job_id'], ['fine_tuning_jobs.id'], name=op.f('fk_fine_tuning_job_events_job_id_fine_tuning_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fine_tuning_job_events'))
    )
    op.create_index('ix_fine_tuning_job_events_job_id_id', 'fine_tuning_job_events', ['job_id', 'id'], unique=False)

    op.create_table('models',
    sa.Column('id', sa.String(length=300), nullable=False),
    sa.Column('uid', sa.String(length=40), nullable=False),
    sa.Column('project_id', sa.String(length=40), nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=True),
    sa.Column('base_model', sa.String(length=128), nullable=False),
    sa.Column('storage_prefix', sa.String(length=512), nullable=False),
    sa.Column('manifest_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['fine_tuning_jobs.id'], name=op.f('fk_models_job_id_fine_tuning_jobs'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_models_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_models')),
    sa.UniqueConstraint('uid', name=op.f('uq_models_uid'))
    )
    op.create_index('ix_models_project_id_created_at', 'models', ['project_id', 'created_at'], unique=False)

    transitions = sa.table("job_status_transitions", sa.column("from_status"), sa.column("to_status"))
    op.bulk_insert(transitions, [{"from_status": a, "to_status": b} for a, b in JOB_STATUS_TRANSITIONS])
    triggers = SQLITE_TRIGGERS if op.get_bind().dialect.name == "sqlite" else POSTGRES_TRIGGERS
    for statement in triggers:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS trg_fine_tuning_jobs_status_transition")
        op.execute("DROP TRIGGER IF EXISTS trg_fine_tuning_jobs_initial_status")
    else:
        op.execute("DROP TRIGGER IF EXISTS trg_fine_tuning_jobs_status ON fine_tuning_jobs")
        op.execute("DROP FUNCTION IF EXISTS ftaas_check_job_status()")
    for table in ("models", "fine_tuning_job_events", "fine_tuning_checkpoints", "idempotency_keys",
                  "fine_tuning_jobs", "files", "api_keys", "projects", "outbox", "job_status_transitions"):
        # Dropping a table drops its indexes on both dialects.
        op.drop_table(table)
