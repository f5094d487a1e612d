"""The demo base model's loader and tokenizer, shared by the training tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from basemodels.loader import BaseModelLoader
from basemodels.registry import BaseModelRegistry
from ftaas.settings import DEMO_BASE_MODEL, DEMO_BASE_MODEL_SOURCE


@pytest.fixture(scope="session")
def loader(model_cache_dir: Path) -> BaseModelLoader:
    return BaseModelLoader(BaseModelRegistry({DEMO_BASE_MODEL: DEMO_BASE_MODEL_SOURCE}), model_cache_dir)


@pytest.fixture(scope="session")
def tokenizer(loader: BaseModelLoader) -> Any:
    return loader.load_tokenizer(DEMO_BASE_MODEL)
