"""Persistence: SQLAlchemy models, sessions, and the repositories that own the job state machine,
leases, the outbox and every project-scoped query."""
