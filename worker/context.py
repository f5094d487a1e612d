"""The collaborators of one worker process, built from settings once per process.

Built lazily in the process that runs tasks (a prefork child), never inherited across fork: database
connections and S3 clients must not be shared between processes.
"""

from __future__ import annotations

import os
import socket
from functools import cached_property
from pathlib import Path
from typing import Any

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
        work = self.settings.work
        return OutagePolicy(work.outage_deadline_seconds, max_delay=work.outage_max_retry_delay_seconds)

    @cached_property
    def db(self) -> Database:
        return Database(self.settings.database.url, pool_size=2,
                        statement_timeout_seconds=self.settings.database.statement_timeout_seconds)

    @cached_property
    def store(self) -> ArtifactStore:
        return open_store(self.settings.storage.artifact_uri, self.settings.storage)

    @cached_property
    def registry(self) -> BaseModelRegistry:
        return BaseModelRegistry(self.settings.models.sources())

    @cached_property
    def loader(self) -> BaseModelLoader:
        return BaseModelLoader(self.registry, self.settings.models.cache_path, hf_offline=self.settings.models.hf_offline,
                               open_store=lambda uri: open_store(uri, self.settings.storage))

    @cached_property
    def _tokenizers(self) -> dict[str, Any]:
        return {}

    def tokenizer(self, base_model: str) -> Any:
        """A base model's tokenizer, loaded once per process (its config and tokenizer files only)."""
        if base_model not in self._tokenizers:
            self._tokenizers[base_model] = self.loader.load_tokenizer(base_model)
        return self._tokenizers[base_model]

    @property
    def validation_limits(self) -> ValidationLimits:
        return ValidationLimits(min_examples=self.settings.files.min_training_examples,
                                max_reported_errors=self.settings.files.max_reported_validation_errors)

    @property
    def work_dir(self) -> Path:
        path = self.settings.data_dir / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path
