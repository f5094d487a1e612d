"""Routes of the training API under /api/v1: the paths, bodies and answers of the tinker SDK's protocol
(docs/training-api.md). Authentication: the SDK sends its key in `X-API-Key` and refuses keys that do not
start with `tml-`, so an ftaas key is given to it as `tml-<key>` (an `Authorization: Bearer` header works too).
Errors are the OpenAI-shaped envelope every route answers with (the SDK reads any JSON body)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from api.dependencies import Caller, Inference, Services
from api.training_api.service import TRY_AGAIN
from contracts.errors import AuthenticationFailed, InvalidRequest

router = APIRouter(prefix="/api/v1", tags=["training api"])
KEY_PREFIX = "tml-"
#: between looks at a pending future while its poll is held open (a database read each: a training step waits on
#: two futures, so this is up to 20 ms of every step)
LOOK_EVERY_SECONDS = 0.01


async def get_training_caller(request: Request, services: Services) -> Caller:
    key = request.headers.get("x-api-key")
    if key is None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else None
    if not key:
        raise AuthenticationFailed(f"Send an API key in X-API-Key, as the tinker SDK does ('{KEY_PREFIX}<ftaas key>').",
                                   code="missing_api_key")
    return Caller(services, key.removeprefix(KEY_PREFIX),
                  rate_limit_headers=request.scope.setdefault("state", {}).setdefault("rate_limit_headers", {}))


TrainingCaller = Annotated[Caller, Depends(get_training_caller)]


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise InvalidRequest("the body is not JSON", param="body") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object", param="body")
    return body


def _ok(value: Any = None) -> Response:
    return Response(json.dumps({} if value is None else value), media_type="application/json")


# ------------------------------------------------------------------------------------- client and server
@router.post("/client/config")
async def client_config(caller: TrainingCaller) -> Response:
    await caller.principal()
    # Chunks of one forward_backward in order: the holder runs them in seq_id order either way, and in order
    # none waits on a later-numbered chunk's arrival.
    return _ok({"parallel_fwdbwd_chunks": False})


@router.post("/client/dynamic_config")
async def dynamic_config(caller: TrainingCaller) -> Response:
    await caller.principal()
    return _ok({"refresh_interval_sec": 300, "sample_cancel_enabled": True})


@router.get("/healthz")
async def healthz() -> Response:
    return _ok({"status": "ok"})


@router.get("/get_server_capabilities")
async def capabilities(services: Services, caller: TrainingCaller) -> Response:
    await caller.principal()
    return _ok({"supported_models": [{"model_name": name, "trainable": True, "sampleable": True}
                                     for name in services.registry.names()]})


@router.post("/telemetry")
async def telemetry(caller: TrainingCaller) -> Response:
    # The SDK's usage reports are not kept: accepted and dropped, as documented (docs/training-api.md).
    await caller.principal()
    return _ok({"status": "accepted"})


# ------------------------------------------------------------------------------------------- sessions
#: Routes whose JSON body goes whole to the service method of the same name, and whose answer is its result.
JSON_ROUTES = ("create_session", "create_model", "optim_step", "save_weights_for_sampler", "save_weights",
               "load_weights", "create_sampling_session", "weights_info")


def _json_route(name: str) -> None:
    async def handler(request: Request, services: Services, caller: TrainingCaller) -> Response:
        body = await _json(request)
        return await caller.run(lambda principal: _ok(getattr(services.training_api, name)(principal, body)))

    handler.__name__ = name
    router.add_api_route(f"/{name}", handler, methods=["POST"], name=name)


for _name in JSON_ROUTES:
    _json_route(_name)


@router.post("/session_heartbeat")
async def session_heartbeat(request: Request, services: Services, caller: TrainingCaller) -> Response:
    body = await _json(request)
    await caller.run(lambda principal: services.training_api.heartbeat(principal, body.get("session_id")))
    return _ok()


@router.get("/sessions")
async def list_sessions(services: Services, caller: TrainingCaller, limit: int = 20, offset: int = 0) -> Response:
    return await caller.run(lambda principal: _ok(services.training_api.list_sessions(principal, limit, offset)))


@router.get("/sessions/{session_id}")
async def get_session(session_id: str, services: Services, caller: TrainingCaller) -> Response:
    return await caller.run(lambda principal: _ok(services.training_api.get_session(principal, session_id)))


@router.post("/sessions/{session_id}/finish")
async def finish_session(session_id: str, services: Services, caller: TrainingCaller) -> Response:
    await caller.run(lambda principal: services.training_api.finish_session(principal, session_id))
    return _ok()


# --------------------------------------------------------------------------------------------- models
@router.post("/get_info")
async def get_info(request: Request, services: Services, caller: TrainingCaller) -> Response:
    body = await _json(request)
    return await caller.run(lambda principal: _ok(services.training_api.get_info(principal, body.get("model_id"))))


@router.post("/forward_backward")
async def forward_backward(request: Request, services: Services, caller: TrainingCaller) -> Response:
    body = await request.body()
    return await caller.run(lambda principal: _ok(services.training_api.forward_backward(principal, body)))


# ----------------------------------------------------------------- training runs and checkpoints (RestClient)
@router.get("/training_runs")
async def list_training_runs(services: Services, caller: TrainingCaller, limit: int = 20, offset: int = 0,
                             project_id: str | None = None) -> Response:
    await caller.principal()
    if project_id is not None:  # one key, one project: the runs listed are always the key's project's
        raise InvalidRequest("project_id is not supported: a key lists its own project's runs", code="unsupported",
                             param="project_id")
    return await caller.run(lambda principal: _ok(services.training_api.list_training_runs(principal, limit, offset)))


@router.get("/training_runs/{run_id}")
async def get_training_run(run_id: str, services: Services, caller: TrainingCaller) -> Response:
    return await caller.run(lambda principal: _ok(services.training_api.get_training_run(principal, run_id)))


@router.get("/training_runs/{run_id}/checkpoints")
async def list_checkpoints(run_id: str, services: Services, caller: TrainingCaller) -> Response:
    return await caller.run(lambda principal: _ok(services.training_api.list_checkpoints(principal, run_id)))


@router.get("/checkpoints")
async def list_user_checkpoints(services: Services, caller: TrainingCaller, limit: int = 100,
                                offset: int = 0) -> Response:
    return await caller.run(lambda principal: _ok(services.training_api.list_user_checkpoints(principal, limit,
                                                                                              offset)))


@router.delete("/training_runs/{run_id}/checkpoints/{checkpoint_id:path}")
async def delete_checkpoint(run_id: str, checkpoint_id: str, services: Services, caller: TrainingCaller) -> Response:
    await caller.run(lambda principal: services.training_api.delete_checkpoint(principal, run_id, checkpoint_id))
    return _ok()


async def _the_checkpoint(services: Services, caller: Caller, run_id: str, checkpoint_id: str) -> None:
    """404 unless the key's project has this checkpoint (before saying what is not offered on it)."""
    await caller.run(lambda principal: services.training_api.checkpoint_at(principal, run_id, checkpoint_id))


def _not_offered(feature: str) -> InvalidRequest:
    return InvalidRequest(f"{feature} is not supported by ftaas's training API", code="unsupported")


@router.put("/training_runs/{run_id}/checkpoints/{checkpoint_id:path}/ttl")
async def checkpoint_ttl(run_id: str, checkpoint_id: str, services: Services, caller: TrainingCaller) -> Response:
    await _the_checkpoint(services, caller, run_id, checkpoint_id)
    raise _not_offered("checkpoint TTLs")


@router.api_route("/training_runs/{run_id}/checkpoints/{checkpoint_id:path}/publish", methods=["POST", "DELETE"])
async def publish_checkpoint(run_id: str, checkpoint_id: str, services: Services, caller: TrainingCaller) -> Response:
    await _the_checkpoint(services, caller, run_id, checkpoint_id)
    raise _not_offered("publishing checkpoints (a checkpoint belongs to its project)")


@router.get("/training_runs/{run_id}/checkpoints/{checkpoint_id:path}/external_weights_urls")
async def external_weights_urls(run_id: str, checkpoint_id: str, services: Services,
                                caller: TrainingCaller) -> Response:
    await _the_checkpoint(services, caller, run_id, checkpoint_id)
    raise _not_offered("external weight URLs (export the model sampler weights were published as through "
                       "/v1/adapter_operations)")


# ------------------------------------------------------------------------------------------- sampling
@router.get("/samplers/{sampler_id}")
async def get_sampler(sampler_id: str, services: Services, caller: TrainingCaller) -> Response:
    return await caller.run(lambda principal: _ok(services.training_api.get_sampler(principal, sampler_id)))


#: Sampling tasks running in this process, by request id (kept referenced until they end; cancel_future
#: cancels them, which frees their engine slots).
_SAMPLING: dict[str, asyncio.Task[None]] = {}


@router.post("/asample")
async def asample(request: Request, services: Services, caller: TrainingCaller, inference: Inference) -> Response:
    """Checked and resolved at once (a bad request is a 400 here), then sampled by this process's engine in the
    background, batched with every other request: the future's result is the SDK's SampleResponse."""
    body = await _json(request)
    principal = await caller.principal()
    training_api = services.training_api
    completion, tokens = await services.run_blocking(lambda: training_api.completion_of(principal, body))
    resolved, parts = await services.run_blocking(lambda: inference.resolve_request(principal, completion))
    answer = await services.run_blocking(lambda: training_api.add_sample(principal, body, completion.n))
    loop = asyncio.get_running_loop()

    async def sample() -> None:
        # Shielded: a cancel_future arriving while the sequences are being submitted cancels them once they are
        # (the thread submitting them cannot be interrupted).
        starting = asyncio.ensure_future(services.run_blocking(
            lambda: inference.start(resolved, parts, completion, loop, tokens)))
        try:
            stream = await asyncio.shield(starting)
            results = await stream.collect()  # cancelled here, the stream cancels its sequences
        except asyncio.CancelledError:  # cancel_future: the request is settled already
            if starting.done():
                _cancel_started(starting)
            else:
                starting.add_done_callback(_cancel_started)
            return
        except Exception as exc:  # noqa: BLE001 - the client's future reports every failure
            message = getattr(exc, "public_message", None) or str(exc)
            await services.run_blocking(lambda: training_api.finish_sample(answer["request_id"], None, message))
            return
        await services.run_blocking(lambda: training_api.finish_sample(
            answer["request_id"], results, last_n=body.get("prompt_logprobs_last_n")))

    request_id = answer["request_id"]
    task = asyncio.create_task(sample())
    _SAMPLING[request_id] = task
    task.add_done_callback(lambda _: _SAMPLING.pop(request_id, None))
    return _ok(answer)


def _cancel_started(starting: asyncio.Future[Any]) -> None:
    """The sequences a cancelled sample submitted (where submitting them succeeded), cancelled."""
    if not starting.cancelled() and starting.exception() is None:
        starting.result().cancel()


@router.post("/cancel_future")
async def cancel_future(request: Request, services: Services, caller: TrainingCaller) -> Response:
    """A sample the client abandoned: its future answers "cancelled" and, where this process computes it, the
    engine stops generating it at once (another replica's sample stops at its end; its result is dropped)."""
    body = await _json(request)
    request_id = str(body.get("request_id"))
    await caller.run(lambda principal: services.training_api.cancel_sample(principal, request_id))
    task = _SAMPLING.get(request_id)
    if task is not None:
        task.cancel()
    return _ok()


# -------------------------------------------------------------------------------------------- futures
@router.post("/retrieve_future")
async def retrieve_future(request: Request, services: Services, caller: TrainingCaller) -> Response:
    """Held open while the result is pending, up to FTAAS_TRAINING_API_POLL_SECONDS, then `try_again` (the
    SDK asks again at once); a result is returned as the request's own format (JSON or protobuf)."""
    body = await _json(request)
    request_id = body.get("request_id")
    principal = await caller.principal()
    deadline = time.monotonic() + services.settings.training_api.poll_seconds
    while True:
        poll = await services.run_blocking(lambda: services.training_api.poll(principal, request_id))
        if poll.result is not None:
            media = "application/x-protobuf" if poll.result[0] == "protobuf" else "application/json"
            return Response(poll.result[1], media_type=media)
        if poll.error is not None:
            return _ok(poll.error)
        if time.monotonic() >= deadline or await request.is_disconnected():
            return _ok({"request_id": request_id, **TRY_AGAIN})
        await asyncio.sleep(LOOK_EVERY_SECONDS)
