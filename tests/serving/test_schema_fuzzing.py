"""Schema-driven fuzzing of the inference routes (chat and legacy completions) with schemathesis, against
a live server with the serving engine on the demo model: no generated request, valid or not, gets a 5xx or
skips authentication. Bounded for CI (a short context keeps generated `max_tokens` cheap)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import ignored_auth, not_a_server_error

EXAMPLES_PER_OPERATION = 40


@pytest.fixture
def serving_live(start_serving: Callable[..., Any]) -> Any:
    return start_serving(serving_max_context=192)


@pytest.fixture
def serving_schema(serving_live: Any) -> Any:
    return schemathesis.openapi.from_url(serving_live.base_url + "/openapi.json")


# The other routes of this app are the API's, fuzzed in tests/api/test_schema_fuzzing.py.
schema = schemathesis.pytest.from_fixture("serving_schema").include(path_regex=r"^/v1/(chat/)?completions$")


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_generated_inference_request_gets_a_server_error(case: Any, serving_live: Any) -> None:
    case.call_and_validate(base_url=serving_live.base_url, headers={"Authorization": f"Bearer {serving_live.key}"},
                           checks=[not_a_server_error, ignored_auth])
