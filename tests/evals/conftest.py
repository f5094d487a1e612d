"""Eval tests reuse the serving fixtures: the demo base model, random adapters, a live in-process server."""

from tests.serving.conftest import base_model, make_adapter, start_serving  # noqa: F401
