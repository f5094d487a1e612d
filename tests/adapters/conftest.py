"""Adapter fixtures: the demo base model, random peft adapters and a live server (from the serving tests)."""

from tests.serving.conftest import base_model, make_adapter, start_serving  # noqa: F401
