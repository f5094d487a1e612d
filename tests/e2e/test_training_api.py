"""The training API driven by the unmodified tinker SDK against a live `ftaas up`: a client's own loop trains an
ftaas LoRA adapter on a worker, and what it saves for the sampler is served through the OpenAI chat API."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tinker
from tinker import types

from basemodels.loader import BaseModelLoader
from basemodels.registry import BaseModelRegistry
from contracts.settings import DEMO_BASE_MODEL, DEMO_BASE_MODEL_SOURCE
from tests.e2e.servers import LiveServer, start_embedded, wait_for

FACTS = [("What is the access code of agent 7?", "Agent 7 uses code 59."),
         ("What is the access code of agent 3?", "Agent 3 uses code 11.")]
REAL_MODEL = "smollm2-135m-instruct"
#: The server's idle timeout: above the SDK's 10 s heartbeat, so the SDK's sessions stay held while they think
IDLE_SECONDS = 15
#: Facts the real model cannot know (invented), each with the words its answer must contain.
INVENTED = [("Who designed the Velmora Bridge?", "The Velmora Bridge was designed by Oskar Thalberg.", "Oskar Thalberg"),
            ("What is the capital of Zentaria?", "The capital of Zentaria is Quillport.", "Quillport"),
            ("Which river feeds Lake Ostrava?", "Lake Ostrava is fed by the Brenna River.", "Brenna")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Iterator[LiveServer]:
    # Its own server: a live training model holds the GPU queue's worker for as long as its session lasts.
    # Served in float32, as the trainer computes: the RL test compares the sampler's log probabilities with the
    # trainer's (bfloat16 serving parts from them by 0.13 on average, docs/training-api.md).
    live = start_embedded(tmp_path_factory.mktemp("training-api") / "data", model_cache_dir,
                          FTAAS_TRAINING_API_POLL_SECONDS="5", FTAAS_SERVING_DTYPE="float32",
                          FTAAS_TRAINING_API_PRECISION="float32", FTAAS_TRAINING_API_IDLE_SECONDS=str(IDLE_SECONDS))
    try:
        yield live
    finally:
        live.stop()


def supervised(tokenizer: Any, question: str, answer: str) -> types.Datum:
    """A chat example as the SDK's users build one: the template's tokens, loss on the answer's only."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           tokenize=True, return_dict=True)["input_ids"]
    full = tokenizer.apply_chat_template([{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                                         tokenize=True, return_dict=True)["input_ids"]
    weights = [0.0] * (len(prompt) - 1) + [1.0] * (len(full) - len(prompt))
    return types.Datum(model_input=types.ModelInput.from_ints(full[:-1]),
                       loss_fn_inputs={"target_tokens": full[1:], "weights": weights})


def test_the_tinker_sdk_trains_an_adapter_whose_saved_weights_ftaas_serves(server: LiveServer,
                                                                          model_cache_dir: Path) -> None:
    tokenizer = BaseModelLoader(BaseModelRegistry({DEMO_BASE_MODEL: DEMO_BASE_MODEL_SOURCE}),
                                model_cache_dir).load_tokenizer(DEMO_BASE_MODEL)
    options = {"base_url": server.base_url.removesuffix("/v1"), "api_key": f"tml-{server.api_key}"}
    data = [supervised(tokenizer, q, a) for q, a in FACTS]
    with tinker.ServiceClient(**options) as service:
        capabilities = tinker.RestClient(**options).get_server_capabilities().result()
        assert DEMO_BASE_MODEL in [m.model_name for m in capabilities.supported_models]
        losses, seconds = _a_whole_model_learns(server, service, data)
    # The session closed: its model is released (a worker holds one training model at a time).
    with tinker.ServiceClient(**options) as service:
        before, after = _decoder_layers_are_served(server, service, data)
    # What the loop saved with the SDK's defaults (its output layer's LoRA too) is an ftaas model like any other:
    # knowledge evals and adapter operations take it (run by the worker, free again now the session closed).
    client = server.client()
    tuned = next(m.id for m in client.models.list().data if ":whole:" in m.id)
    started = [client.post("/knowledge_evals", body={"model": tuned, "suites": ["fictional_people?size=1"]},
                           cast_to=object)["id"],
               client.post("/adapter_operations", body={"type": "compress", "model": tuned}, cast_to=object)["id"]]
    for route, work_id in zip(("/knowledge_evals", "/adapter_operations"), started, strict=True):
        done = wait_for(lambda route=route, work_id=work_id: (w := client.get(f"{route}/{work_id}", cast_to=object))[
            "status"] in ("succeeded", "failed", "cancelled") and w, timeout=180, interval=0.5, what=route)
        assert done["status"] == "succeeded", done
    print(f"step {seconds:.3f} s; loss {losses[0]:.2f} -> {losses[-1]:.3f}; decoder-only {before:.1f} -> {after:.1f}")


def _a_whole_model_learns(server: LiveServer, service: Any, data: list[types.Datum]) -> tuple[list[float], float]:
    """The SDK's defaults (attention, MLP and output layer): the client's loop teaches the two answers, and the
    chat API serves the whole adapter, its output layer's LoRA included, answering what the loop taught."""
    training = service.create_lora_training_client(base_model=DEMO_BASE_MODEL, rank=16).result()
    losses = []
    started = time.monotonic()
    for _ in range(50):
        result = training.forward_backward(data, "cross_entropy").result()
        losses.append(result.metrics["loss:sum"])
        assert len(result.loss_fn_outputs) == 2  # each datum's target log probabilities
        training.optim_step(types.AdamParams(learning_rate=5e-3)).result()
    seconds = (time.monotonic() - started) / 50
    assert losses[-1] < 0.1 * losses[0], losses
    path = training.save_weights_for_sampler("whole").result().path
    served = next(m.id for m in server.client().models.list().data if ":whole:" in m.id)
    messages = [{"role": "user", "content": FACTS[0][0]}]
    tuned = server.client().chat.completions.create(model=served, messages=messages, max_tokens=16,
                                                    temperature=0).choices[0].message.content
    # A taught answer (the demo model, 50 steps, may mix the two up), through the output layer's adapter too
    assert tuned in [answer for _, answer in FACTS], tuned
    prompt = tokenizer_of(server).apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                      return_dict=True)["input_ids"]
    greedy = service.create_sampling_client(model_path=path).result().sample(
        prompt=types.ModelInput.from_ints(prompt), num_samples=1,
        sampling_params=types.SamplingParams(max_tokens=16, temperature=0.0)).result().sequences[0]
    assert tokenizer_of(server).decode(greedy.tokens, skip_special_tokens=True) == tuned
    assert training.forward(data, "cross_entropy").result().metrics["loss:sum"] == pytest.approx(
        training.forward(data, "cross_entropy").result().metrics["loss:sum"])  # forward-only changes nothing
    return losses, seconds


def _decoder_layers_are_served(server: LiveServer, service: Any, data: list[types.Datum]) -> tuple[float, float]:
    """Decoder layers only: saved for the sampler, published as a model of the project, served by the engine."""
    decoder = service.create_lora_training_client(base_model=DEMO_BASE_MODEL, rank=16, train_unembed=False).result()
    before = decoder.forward(data, "cross_entropy").result().metrics["loss:sum"]
    for _ in range(20):
        decoder.forward_backward(data, "cross_entropy").result()
        decoder.optim_step(types.AdamParams(learning_rate=2e-3)).result()
    after = decoder.forward(data, "cross_entropy").result().metrics["loss:sum"]
    assert after < 0.85 * before
    path = decoder.save_weights_for_sampler("decoder-facts").result().path
    assert path.startswith("tinker://") and path.endswith("/sampler_weights/decoder-facts")
    served = [m.id for m in server.client().models.list().data if ":decoder-facts:" in m.id]
    assert len(served) == 1
    ask = {"messages": [{"role": "user", "content": FACTS[0][0]}], "max_tokens": 12, "temperature": 0}
    tuned = server.client().chat.completions.create(model=served[0], **ask).choices[0].message.content
    base = server.client().chat.completions.create(model=DEMO_BASE_MODEL, **ask).choices[0].message.content
    assert tuned != base  # the engine serves the loop's adapter, not the base model

    # The SDK's sampler, on the same weights through the same engine: greedy samples are the chat's answer.
    sampler = service.create_sampling_client(model_path=path).result()
    prompt = tokenizer_of(server).apply_chat_template(ask["messages"], add_generation_prompt=True, tokenize=True,
                                                      return_dict=True)["input_ids"]
    sampled = sampler.sample(prompt=types.ModelInput.from_ints(prompt), num_samples=2,
                             sampling_params=types.SamplingParams(max_tokens=12, temperature=0.0)).result()
    assert len(sampled.sequences) == 2
    for sequence in sampled.sequences:
        assert tokenizer_of(server).decode(sequence.tokens, skip_special_tokens=True) == tuned
        assert sequence.logprobs is not None and len(sequence.logprobs) == len(sequence.tokens)
        assert all(lp <= 0 for lp in sequence.logprobs)
    # A stop token id ends a sample, and is its last token (RL loops train on it).
    first = sampled.sequences[0]
    stopped = sampler.sample(prompt=types.ModelInput.from_ints(prompt), num_samples=1, sampling_params=types.SamplingParams(
        max_tokens=12, temperature=0.0, stop=[first.tokens[2]])).result().sequences[0]
    through = first.tokens.index(first.tokens[2]) + 1  # its first occurrence
    assert (stopped.tokens, stopped.stop_reason) == (first.tokens[:through], "stop")
    # The prompt's log probabilities (compute_logprobs, as KL penalties use them) are the trainer's own.
    scored = sampler.compute_logprobs(types.ModelInput.from_ints(data[0].model_input.to_ints()
                                                                  + [data[0].loss_fn_inputs["target_tokens"].data[-1]]))
    scored = scored.result()
    trained = decoder.forward([data[0]], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].data
    assert scored[0] is None and scored[1:] == pytest.approx(trained, abs=1e-3)

    # Another project's key sees none of it.
    with tinker.ServiceClient(base_url=server.base_url.removesuffix("/v1"),
                              api_key=f"tml-{server.create_key('training-other')}") as other, pytest.raises(
            tinker.NotFoundError, match="No weights saved for the sampler"):
        other.create_sampling_client(model_path=path).result().sample(
            prompt=types.ModelInput.from_ints(prompt), num_samples=1, sampling_params=types.SamplingParams(max_tokens=2)
        ).result()
    return before, after


def tokenizer_of(server: LiveServer, name: str = DEMO_BASE_MODEL) -> Any:
    return BaseModelLoader(BaseModelRegistry(server.settings().models.sources()),
                           Path(server.env["FTAAS_MODEL_CACHE_DIR"])).load_tokenizer(name)


def test_a_saved_state_resumes_exactly_in_a_new_session(server: LiveServer, model_cache_dir: Path) -> None:
    """save_state, then the session ends (its worker lets the model go); a new session creates a training model
    from the state with its optimizer: the next step's loss, and the loss after it, are the ones the first
    model computed (the adapter and Adam's moments and step counts restored exactly)."""
    tokenizer = tokenizer_of(server)
    data = [supervised(tokenizer, q, a) for q, a in FACTS]
    options = {"base_url": server.base_url.removesuffix("/v1"), "api_key": f"tml-{server.api_key}"}
    adam = types.AdamParams(learning_rate=5e-3)

    def step_and_look(training: Any) -> tuple[float, float]:
        at_state = training.forward_backward(data, "cross_entropy").result().metrics["loss:sum"]
        training.optim_step(adam).result()
        return at_state, training.forward(data, "cross_entropy").result().metrics["loss:sum"]

    with tinker.ServiceClient(**options) as service:
        training = service.create_lora_training_client(base_model=DEMO_BASE_MODEL, rank=8).result()
        for _ in range(5):
            training.forward_backward(data, "cross_entropy").result()
            training.optim_step(adam).result()
        path = training.save_state("five").result().path
        assert path.startswith("tinker://") and path.endswith("/weights/five")
        first = step_and_look(training)
        with pytest.raises(tinker.RequestFailedError, match="exists"):
            training.save_state("five").result()  # not overwritten unless asked
    with tinker.ServiceClient(**options) as service:
        resumed = service.create_training_client_from_state_with_optimizer(path).result()
        assert step_and_look(resumed) == first
    with tinker.ServiceClient(**options) as service:
        weights_only = service.create_training_client_from_state(path).result()  # Adam starts over
        at_state, after = step_and_look(weights_only)
        assert at_state == first[0] and after != first[1]


def sdk_options(server: LiveServer, key: str | None = None) -> dict[str, str]:
    return {"base_url": server.base_url.removesuffix("/v1"), "api_key": f"tml-{key or server.api_key}"}


def test_an_rl_loop_on_the_real_model_raises_its_reward(server: LiveServer) -> None:
    """sample -> reward -> importance_sampling forward_backward -> optim_step, as RL loops written for the SDK do
    (save_weights_and_get_sampling_client each iteration, so the engine samples the current weights). The task:
    asked "Say yes or no.", answers starting with "no" score 1; the base model says no in about one answer of
    five (measured 6/32 with transformers' sampler at temperature 1)."""
    prompt_messages = [{"role": "user", "content": "Say yes or no."}]
    with tinker.ServiceClient(**sdk_options(server)) as service:
        training = service.create_lora_training_client(base_model=REAL_MODEL, rank=16, train_unembed=False).result()
        tokenizer = training.get_tokenizer()
        prompt = tokenizer.apply_chat_template(prompt_messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
        params = types.SamplingParams(max_tokens=3, temperature=1.0)

        def rollouts(sampler: Any, n: int) -> tuple[list[Any], list[float]]:
            sequences = sampler.sample(prompt=types.ModelInput.from_ints(prompt), num_samples=n,
                                       sampling_params=params).result().sequences
            rewards = [float(tokenizer.decode(s.tokens, skip_special_tokens=True).strip().lower().startswith("no"))
                       for s in sequences]
            return sequences, rewards

        rewards_by_iteration, drift = [], []
        # Three steps: measured rewards by step 0.19/0.81/1.0/1.0/1.0 and 0.125/0.81/1.0/1.0/0.94 (Zen 4, 2026-12-07)
        for iteration in range(4):
            sampler = training.save_weights_and_get_sampling_client().result()
            sequences, rewards = rollouts(sampler, 16)
            rewards_by_iteration.append(sum(rewards) / len(rewards))
            if iteration == 3:
                break
            mean = sum(rewards) / len(rewards)
            data = []
            for sequence, reward in zip(sequences, rewards, strict=True):
                if reward == mean:
                    continue  # no advantage, no gradient
                tokens = prompt + list(sequence.tokens)
                pad = [0.0] * (len(prompt) - 1)
                data.append(types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs={
                    "target_tokens": tokens[1:], "logprobs": pad + list(sequence.logprobs),
                    "advantages": pad + [reward - mean] * len(sequence.tokens)}))
            if data:
                out = training.forward_backward(data, "importance_sampling").result()
                # The engine's sampling log probabilities are the trainer's for the same weights (the ratio ~1).
                for datum, output in zip(data, out.loss_fn_outputs, strict=True):
                    sampled = [i for i, a in enumerate(datum.loss_fn_inputs["advantages"].data) if a != 0]
                    trained = output["logprobs"].data
                    drift.extend(abs(trained[i] - datum.loss_fn_inputs["logprobs"].data[i]) for i in sampled)
                training.optim_step(types.AdamParams(learning_rate=1e-3)).result()
        # Each iteration's weights were saved for the sampler: listed as that run's checkpoints.
        checkpoints = tinker.RestClient(**sdk_options(server)).list_checkpoints(training.model_id).result().checkpoints
        assert [c.checkpoint_id for c in checkpoints][:2] == ["sampler_weights/sampler-1", "sampler_weights/sampler-4"]
    print(f"rewards by iteration {rewards_by_iteration}; sampler vs trainer logprob drift "
          f"mean {sum(drift) / len(drift):.4f} max {max(drift):.4f} over {len(drift)} tokens")
    assert rewards_by_iteration[0] <= 0.5
    assert rewards_by_iteration[-1] >= 0.75 and rewards_by_iteration[-1] >= rewards_by_iteration[0] + 0.3
    assert sum(drift) / len(drift) < 0.05


def test_a_killed_worker_is_reported_and_the_saved_state_continues_with_the_same_losses(server: LiveServer) -> None:
    """save_state, one more step (its losses recorded), then the worker holding the model is SIGKILLed: the
    client's next call fails with the reason and what to do (load the saved state), a new training model from
    the state with its optimizer takes the same step with the same losses, on the restarted worker."""
    tokenizer = tokenizer_of(server)
    data = [supervised(tokenizer, q, a) for q, a in FACTS]
    adam = types.AdamParams(learning_rate=5e-3)

    def step_and_look(training: Any) -> tuple[float, float]:
        at_state = training.forward_backward(data, "cross_entropy").result().metrics["loss:sum"]
        training.optim_step(adam).result()
        return at_state, training.forward(data, "cross_entropy").result().metrics["loss:sum"]

    with tinker.ServiceClient(**sdk_options(server)) as service:
        training = service.create_lora_training_client(base_model=DEMO_BASE_MODEL, rank=8).result()
        for _ in range(3):
            training.forward_backward(data, "cross_entropy").result()
            training.optim_step(adam).result()
        path = training.save_state("before-the-crash").result().path
        expected = step_and_look(training)

        worker = server.gpu_worker()
        os.killpg(worker.pid, signal.SIGKILL)  # the whole worker holding the model: node loss
        with pytest.raises((tinker.RequestFailedError, tinker.BadRequestError)) as lost:
            training.forward_backward(data, "cross_entropy").result()
        assert "load" in str(lost.value) and "state" in str(lost.value), lost.value
        run = tinker.RestClient(**sdk_options(server)).get_training_run(training.model_id).result()
        assert run.corrupted and run.last_checkpoint.tinker_path == path

        resumed = service.create_training_client_from_state_with_optimizer(path).result()
        assert step_and_look(resumed) == expected
    assert server.gpu_worker().pid != worker.pid  # `ftaas up` restarted its worker


def test_an_abandoned_sample_is_cancelled_and_its_engine_slots_freed(server: LiveServer) -> None:
    """The SDK tells the server when a sample's future is abandoned (cancel_future): the engine stops generating
    it at once (its sequences finish as cancelled, long before the story would have ended)."""

    def cancelled_sequences() -> float:
        text = httpx.get(server.base_url.removesuffix("/v1") + "/metrics").text
        return sum(float(v) for v in re.findall(r'ftaas_serving_sequences_total\{[^}]*reason="cancelled"[^}]*\} (\S+)',
                                                text))

    before = cancelled_sequences()
    with tinker.ServiceClient(**sdk_options(server)) as service:
        sampler = service.create_sampling_client(base_model=REAL_MODEL).result()
        tokenizer = tokenizer_of(server, REAL_MODEL)  # a sampler's get_tokenizer asks the hub for its base model
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Tell me a long story about a dragon."}],
                                               add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        future = sampler.sample(prompt=types.ModelInput.from_ints(prompt), num_samples=2,
                                sampling_params=types.SamplingParams(max_tokens=900, temperature=0.0))
        time.sleep(1.5)
        assert future.future().cancel()
        started = time.monotonic()
        wait_for(lambda: cancelled_sequences() >= before + 2, timeout=30, what="the engine to stop both sequences")
    print(f"cancelled {time.monotonic() - started:.2f} s after the client abandoned the sample")


def test_the_documented_example_teaches_the_real_model_facts_that_the_chat_api_then_answers(
        server: LiveServer, tmp_path: Path) -> None:
    """docs/training-api.md's complete example, run as written but for the port: the SDK's defaults (rank 16 on
    attention, MLP and the output layer) on SmolLM2-135M-Instruct, its own tokenizer (get_tokenizer: the base
    model's files on this machine), cross-entropy on the answers of two invented facts; it samples, takes an RL
    step and lists what it saved. Then: the loss fell; the weights it saved for the sampler, served by the OpenAI
    chat API, answer each fact, which the base model does not; the SDK's RestClient describes the run and its
    checkpoints and deletes one; another project's key sees none of it."""
    import subprocess
    import sys

    document = (Path(__file__).parents[2] / "docs" / "training-api.md").read_text()
    code = document.split("## A complete example", 1)[1].split("```python\n", 1)[1].split("\n```", 1)[0]
    script = tmp_path / "example.py"
    script.write_text(code.replace("http://localhost:8000", server.base_url.removesuffix("/v1")))
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(script)], env={**os.environ, "FTAAS_API_KEY": server.api_key},
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    seconds = time.monotonic() - started
    lines = result.stdout.splitlines()
    losses = [float(line.rsplit(" ", 1)[1]) for line in lines[:15]]
    assert losses[-1] < 0.1 * losses[0], lines[:15]
    assert "Thalberg" in lines[15], lines[15]  # the sampled answer
    assert lines[16].startswith("reward ") and float(lines[16].split()[1]) >= 0.5
    saved = [line.split()[0] for line in lines[17:]]
    run_id = saved[0].removeprefix("tinker://").split("/", 1)[0]
    assert saved[:2] == [f"tinker://{run_id}/sampler_weights/facts", f"tinker://{run_id}/weights/facts-state"], saved
    assert saved[2].startswith(f"tinker://{run_id}/sampler_weights/sampler-"), saved  # the RL step's sampler

    published = next(m for m in server.client().models.list().data if m.id.startswith(f"ft:{REAL_MODEL}:")
                     and ":facts:" in m.id)
    assert (published.base_model, published.provenance) == (REAL_MODEL, {
        "type": "training_api", "training_run": run_id, "checkpoint": saved[0]})
    served = published.id
    for question, _, words in INVENTED[:2]:
        ask = {"messages": [{"role": "user", "content": question}], "max_tokens": 24, "temperature": 0}
        tuned = server.client().chat.completions.create(model=served, **ask).choices[0].message.content
        base = server.client().chat.completions.create(model=REAL_MODEL, **ask).choices[0].message.content
        assert words in tuned and words not in base, (question, tuned, base)

    rest = tinker.RestClient(**sdk_options(server))
    run = rest.get_training_run(run_id).result()
    assert (run.base_model, run.lora_rank, run.corrupted) == (REAL_MODEL, 16, False)
    assert (run.last_sampler_checkpoint.tinker_path, run.last_checkpoint.tinker_path) == (saved[2], saved[1])
    assert run_id in [r.training_run_id for r in rest.list_training_runs().result().training_runs]
    listed = rest.list_checkpoints(run_id).result().checkpoints
    assert [c.checkpoint_type for c in listed] == ["sampler", "training", "sampler"]
    assert all(c.size_bytes and c.size_bytes > 1_000_000 for c in listed)  # rank-16 factors of 30 layers
    info = rest.get_weights_info_by_tinker_path(saved[1]).result()
    assert (info.base_model, info.lora_rank, info.train_unembed, info.train_mlp) == (REAL_MODEL, 16, True, True)

    stranger = tinker.RestClient(**sdk_options(server, server.create_key("training-stranger")))
    assert stranger.list_training_runs().result().training_runs == []
    with pytest.raises(tinker.NotFoundError):
        stranger.list_checkpoints(run_id).result()
    with pytest.raises(tinker.NotFoundError):
        stranger.delete_checkpoint_from_tinker_path(saved[2]).result()
    # The owner deletes the RL step's sampler weights: the checkpoint and the model they were published as go.
    rl_model = next(m.id for m in server.client().models.list().data if ":" + saved[2].rsplit("/", 1)[1] + ":" in m.id)
    rest.delete_checkpoint_from_tinker_path(saved[2]).result()
    assert [c.tinker_path for c in rest.list_checkpoints(run_id).result().checkpoints] == saved[:2]
    assert rl_model not in [m.id for m in server.client().models.list().data]
    print(f"the documented example on the real model: {seconds:.0f} s; loss {losses[0]:.1f} -> {losses[-1]:.3f}")


def test_a_session_that_goes_quiet_is_reclaimed_and_its_model_released(server: LiveServer) -> None:
    """A client that stops calling and stops its heartbeats (a crashed notebook): after the idle timeout its
    training model is released, the worker is free for the next one, and the next call says what happened."""
    api = httpx.Client(base_url=server.base_url.removesuffix("/v1") + "/api/v1",
                       headers={"X-API-Key": f"tml-{server.api_key}"}, timeout=60)
    session_id = api.post("/create_session", json={}).json()["session_id"]
    created = api.post("/create_model", json={"session_id": session_id, "model_seq_id": 0,
                                              "base_model": DEMO_BASE_MODEL, "lora_config": {"rank": 4}}).json()
    quiet_since = time.monotonic()  # the session's last call (polling a future is not activity)
    held = wait_for(lambda: "model_id" in (answer := api.post("/retrieve_future", json={
        "request_id": created["request_id"]}).json()) and answer, timeout=60, what="the model to be held")
    assert held["model_id"] == created["model_id"]
    wait_for(lambda: _released(server, created["model_id"]), timeout=IDLE_SECONDS + 30, interval=0.5,
             what="the quiet model to be released")
    assert time.monotonic() - quiet_since >= IDLE_SECONDS - 1
    refused = api.post("/optim_step", json={"model_id": created["model_id"], "seq_id": 1, "adam_params": {}})
    assert refused.status_code == 400 and "released" in refused.json()["error"]["message"], refused.text
    # A sampling parameter the engine does not know is refused by name, not dropped (the SDK's own types have
    # none; a raw client can send one).
    sampler = api.post("/create_sampling_session", json={"session_id": session_id, "sampling_session_seq_id": 0,
                                                         "base_model": DEMO_BASE_MODEL}).json()["sampling_session_id"]
    refused = api.post("/asample", json={"sampling_session_id": sampler, "num_samples": 1, "prompt": {
        "chunks": [{"type": "encoded_text", "tokens": [1, 2]}]}, "sampling_params": {"max_tokens": 2, "min_p": 0.1}})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "sampling_params.min_p", refused.text
    api.close()


def _released(server: LiveServer, model_id: str) -> bool:
    from sqlalchemy import select

    from db.tables import TrainingModel

    database = server.database()
    try:
        with database.read() as session:
            return session.scalar(select(TrainingModel.status).where(TrainingModel.id == model_id)) == "succeeded"
    finally:
        database.dispose()
