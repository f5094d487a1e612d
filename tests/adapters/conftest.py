"""Adapter fixtures: the demo base model and random peft adapters (from the serving tests)."""

from tests.serving.conftest import base_model, make_adapter  # noqa: F401
