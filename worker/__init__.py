"""Celery workers and the ML work they run, as plain modules: file validation, job preparation and
training (`worker.training`), plus the outbox relay and the reaper (`worker.maintenance`)."""
