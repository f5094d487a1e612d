"""Celery workers and what they run, as plain modules callable without Celery.

`tasks` and `app` (the Celery edge), `context` (a worker process's collaborators), `jobs` (fine-tuning jobs),
`training` (the trainer), `files` (training-file validation), `knowledge_evals` and `adapter_operations`
(standalone work, claimed through `standalone`), `maintenance` (the outbox relay and the reaper), `sweeper`
(stored objects nothing points at), `webhooks` (the delivery dispatcher), `outages` (waiting out a
dependency), `preemption` (SIGTERM checkpoints), `broker` (the embedded transport).
"""
