"""The collaborators of one worker process, built from settings once per process.

Built lazily in the process that runs tasks (a prefork child), never inherited across fork: database
connections and S3 clients must not be shared between processes.
"""

from __future__ import annotations

import os
import socket
from functools import cached_property

from basemodels.loader import BaseModelLoader
from basemodels.registry import BaseModelRegistry
from contracts.settings import Settings
from db.session import Database
from storage import ArtifactStore, open_store
from worker.files.validation import ValidationLimits
from worker.outages import OutagePolicy


class WorkerContext:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}"

    @cached_property
    def outages(self) -> OutagePolicy:
        """How long and how this worker waits out an unavailable dependency (worker.outages)."""
        return OutagePolicy(self.settings.outage_deadline_seconds)

    @cached_property
    def db(self) -> Database:
        assert self.settings.database_url is not None
        return Database(self.settings.database_url, pool_size=2,
                        statement_timeout_seconds=self.settings.database_statement_timeout_seconds)

    @cached_property
    def store(self) -> ArtifactStore:
        assert self.settings.artifact_uri is not None
        return open_store(self.settings.artifact_uri, self.settings)

    @cached_property
    def registry(self) -> BaseModelRegistry:
        return BaseModelRegistry(self.settings.base_model_sources())

    @cached_property
    def loader(self) -> BaseModelLoader:
        assert self.settings.model_cache_dir is not None
        return BaseModelLoader(self.registry, self.settings.model_cache_dir, hf_offline=self.settings.hf_offline,
                               open_store=lambda uri: open_store(uri, self.settings))

    @property
    def validation_limits(self) -> ValidationLimits:
        return ValidationLimits(min_examples=self.settings.min_training_examples,
                                max_reported_errors=self.settings.max_reported_validation_errors)

    @property
    def work_dir(self):  # type: ignore[no-untyped-def]
        path = self.settings.data_dir / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path
