"""JSON responses built from the wire models directly.

Route handlers return these instead of the models: FastAPI would otherwise validate the returned model a
second time, in a thread-pool hop of its own for sync handlers (measured: one of four hops per request,
bench/api_latency.py, docs/benchmarks.md "API latency"). Routes still declare `response_model=` so the OpenAPI schema is
unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fastapi import Response
from pydantic import BaseModel

JSON = "application/json"


def model_response(model: BaseModel) -> Response:
    return Response(content=model.model_dump_json(), media_type=JSON)


def list_response(items: Sequence[Any], *, has_more: bool) -> Response:
    """The cursor-list envelope (docs/architecture.md, "Wire contract"). `items`: wire models, each with an
    `id` where first_id/last_id name them (api.pagination.Listed); items without one give null ids."""
    body = ",".join(item.model_dump_json() for item in items)
    first = json.dumps(getattr(items[0], "id", None) if items else None)
    last = json.dumps(getattr(items[-1], "id", None) if items else None)
    return Response(content=f'{{"object":"list","data":[{body}],"has_more":{"true" if has_more else "false"},'
                            f'"first_id":{first},"last_id":{last}}}', media_type=JSON)
