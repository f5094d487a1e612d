"""/v1/fine_tuning/jobs: create (with "auto" and idempotency keys), list, retrieve, cancel, pause, resume,
events and checkpoints."""
