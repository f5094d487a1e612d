"""The training API driven by the unmodified tinker SDK against a live `ftaas up`: a client's own loop trains an
ftaas LoRA adapter on a worker, and what it saves for the sampler is served through the OpenAI chat API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tinker
from tinker import types

from basemodels.loader import BaseModelLoader
from basemodels.registry import BaseModelRegistry
from contracts.settings import DEMO_BASE_MODEL, DEMO_BASE_MODEL_SOURCE
from tests.e2e.servers import LiveServer, start_embedded

FACTS = [("What is the access code of agent 7?", "Agent 7 uses code 59."),
         ("What is the access code of agent 3?", "Agent 3 uses code 11.")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Iterator[LiveServer]:
    # Its own server: a live training model holds the GPU queue's worker for as long as its session lasts.
    live = start_embedded(tmp_path_factory.mktemp("training-api") / "data", model_cache_dir,
                          FTAAS_TRAINING_API_POLL_SECONDS="5")
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
        capabilities = service.get_server_capabilities()
        assert DEMO_BASE_MODEL in [m.model_name for m in capabilities.supported_models]
        losses, seconds = _a_whole_model_learns(service, data)
    # The session closed: its model is released (a worker holds one training model at a time).
    with tinker.ServiceClient(**options) as service:
        before, after = _decoder_layers_are_served(server, service, data)
    print(f"step {seconds:.3f} s; loss {losses[0]:.2f} -> {losses[-1]:.3f}; decoder-only {before:.1f} -> {after:.1f}")


def _a_whole_model_learns(service: Any, data: list[types.Datum]) -> tuple[list[float], float]:
    """The SDK's defaults (attention, MLP and output layer): the client's loop teaches the two answers."""
    training = service.create_lora_training_client(base_model=DEMO_BASE_MODEL, rank=16)
    losses = []
    started = time.monotonic()
    for _ in range(50):
        result = training.forward_backward(data, "cross_entropy").result()
        losses.append(result.metrics["loss:sum"])
        assert len(result.loss_fn_outputs) == 2  # each datum's target log probabilities
        training.optim_step(types.AdamParams(learning_rate=5e-3)).result()
    seconds = (time.monotonic() - started) / 50
    assert losses[-1] < 0.1 * losses[0], losses
    # Its output layer's adapter is not servable by the engine: refused with the reason, the model still held.
    with pytest.raises(tinker.RequestFailedError, match="train_unembed=False"):
        training.save_weights_for_sampler("whole").result()
    assert training.forward(data, "cross_entropy").result().metrics["loss:sum"] == pytest.approx(
        training.forward(data, "cross_entropy").result().metrics["loss:sum"])  # forward-only changes nothing
    return losses, seconds


def _decoder_layers_are_served(server: LiveServer, service: Any, data: list[types.Datum]) -> tuple[float, float]:
    """Decoder layers only: saved for the sampler, published as a model of the project, served by the engine."""
    decoder = service.create_lora_training_client(base_model=DEMO_BASE_MODEL, rank=16, train_unembed=False)
    before = decoder.forward(data, "cross_entropy").result().metrics["loss:sum"]
    for _ in range(20):
        decoder.forward_backward(data, "cross_entropy").result()
        decoder.optim_step(types.AdamParams(learning_rate=2e-3)).result()
    after = decoder.forward(data, "cross_entropy").result().metrics["loss:sum"]
    assert after < 0.85 * before
    path = decoder.save_weights_for_sampler("facts").result().path
    assert path.startswith("tinker://") and path.endswith("/sampler_weights/facts")
    served = [m.id for m in server.client().models.list().data if ":facts:" in m.id]
    assert len(served) == 1
    ask = {"messages": [{"role": "user", "content": FACTS[0][0]}], "max_tokens": 12, "temperature": 0}
    tuned = server.client().chat.completions.create(model=served[0], **ask).choices[0].message.content
    base = server.client().chat.completions.create(model=DEMO_BASE_MODEL, **ask).choices[0].message.content
    assert tuned != base  # the engine serves the loop's adapter, not the base model

    # The SDK's sampler, on the same weights through the same engine: greedy samples are the chat's answer.
    sampler = service.create_sampling_client(model_path=path)
    prompt = tokenizer_of(server).apply_chat_template(ask["messages"], add_generation_prompt=True, tokenize=True,
                                                      return_dict=True)["input_ids"]
    sampled = sampler.sample(prompt=types.ModelInput.from_ints(prompt), num_samples=2,
                             sampling_params=types.SamplingParams(max_tokens=12, temperature=0.0)).result()
    assert len(sampled.sequences) == 2
    for sequence in sampled.sequences:
        assert tokenizer_of(server).decode(sequence.tokens, skip_special_tokens=True) == tuned
        assert sequence.logprobs is not None and len(sequence.logprobs) == len(sequence.tokens)
        assert all(lp <= 0 for lp in sequence.logprobs)

    # Another project's key sees none of it.
    with tinker.ServiceClient(base_url=server.base_url.removesuffix("/v1"),
                              api_key=f"tml-{server.create_key('training-other')}") as other, pytest.raises(
            tinker.NotFoundError, match="No weights saved for the sampler"):
        other.create_sampling_client(model_path=path).sample(
            prompt=types.ModelInput.from_ints(prompt), num_samples=1, sampling_params=types.SamplingParams(max_tokens=2)
        ).result()
    return before, after


def tokenizer_of(server: LiveServer) -> Any:
    return BaseModelLoader(BaseModelRegistry({DEMO_BASE_MODEL: DEMO_BASE_MODEL_SOURCE}),
                           Path(server.env["FTAAS_MODEL_CACHE_DIR"])).load_tokenizer(DEMO_BASE_MODEL)


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
        training = service.create_lora_training_client(base_model=DEMO_BASE_MODEL, rank=8)
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
