"""The Celery application: queues, reliability settings, task registration.

Settings (docs/architecture.md, "Reliability rules"): late acks with requeue on worker loss (duplicates are harmless
because every task checks the database and jobs are claimed with a lease), prefetch 1 so a busy training
worker never holds a second job, the same visibility timeout in all three places it must be set for
Redis, and cancellation of long tasks on broker connection loss. Results are never stored: the database
is where outcomes live.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

import worker.broker  # noqa: F401  (registers the embedded transport)
from contracts.settings import Settings
from db.outbox import ALL_ROUTES

QUEUES = ("default", "gpu")


def celery_config(settings: Settings) -> dict:
    config: dict = {
        "broker_url": settings.broker.url,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": False,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": "default",
        "task_queues": tuple(Queue(name) for name in QUEUES),
        "task_routes": {route.name: {"queue": route.queue} for route in ALL_ROUTES},
        "broker_connection_retry_on_startup": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }
    if not settings.broker.embedded:
        timeout = settings.broker.visibility_timeout_seconds
        config["broker_transport_options"] = {"visibility_timeout": timeout}
        config["result_backend_transport_options"] = {"visibility_timeout": timeout}
        config["visibility_timeout"] = timeout
    return config


def create_celery_app(settings: Settings, *, with_tasks: bool = True) -> Celery:
    """A Celery app for these settings. Publishers (the relay) need no tasks registered."""
    app = Celery("ftaas", set_as_current=False)
    app.conf.update(celery_config(settings))
    if with_tasks:
        from worker.tasks import register_tasks

        register_tasks(app, settings)
        _connect_preemption()
    return app


def _connect_preemption() -> None:
    """A stopping worker asks its running jobs to checkpoint and requeue (see worker.preemption)."""
    from celery.signals import worker_process_init, worker_shutting_down

    from worker import preemption

    def on_pool_process_start(**_: object) -> None:
        preemption.install_in_pool_process()

    def on_shutdown(**_: object) -> None:
        preemption.notify_pool_processes()

    # Celery's signals are process-wide: the uids keep one receiver each however many apps are created.
    worker_process_init.connect(on_pool_process_start, weak=False, dispatch_uid="ftaas.preemption.install")
    worker_shutting_down.connect(on_shutdown, weak=False, dispatch_uid="ftaas.preemption.notify")
