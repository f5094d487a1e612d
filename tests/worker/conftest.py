"""Worker fixtures: a live server and random adapters (from the serving tests), for standalone work."""

from tests.serving.conftest import base_model, make_adapter, start_serving  # noqa: F401
