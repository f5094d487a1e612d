"""Serving fixtures: the demo base model (its loader and tokenizer come from tests/conftest.py), random LoRA-family adapters, and a live in-process server.

Adapters are made with peft itself (random, non-zero factors, so every adapter visibly changes the
output) and registered the way training registers them: published to the artifact store with a
manifest, and a model row in the database.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from basemodels.loader import BaseModelLoader
from contracts.settings import DEMO_BASE_MODEL, Settings
from db import migrate, models, projects
from serving.model import LlamaForward
from storage.manifest import publish_directory


@pytest.fixture(scope="session")
def base_model(loader: BaseModelLoader) -> Any:
    model = loader.load_model(DEMO_BASE_MODEL)
    model.eval()
    return model


def forward_for(model: Any, *, slots: int = 8, context: int = 256, tile_rows: int = 64) -> LlamaForward:
    return LlamaForward(model, max_slots=slots, max_context=context, tile_rows=tile_rows)


AdapterFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def make_adapter(loader: BaseModelLoader, tmp_path_factory: pytest.TempPathFactory) -> AdapterFactory:
    """make_adapter(seed, r=8, dora=False, rslora=False, targets="all-linear", **lora) -> adapter directory."""
    from peft import LoraConfig, get_peft_model

    made: dict[tuple[Any, ...], Path] = {}

    def make(seed: int, *, r: int = 8, dora: bool = False, rslora: bool = False,
             targets: Any = "all-linear", **options: Any) -> Path:
        key = (seed, r, dora, rslora, str(targets), repr(sorted(options.items())))
        if key in made:
            return made[key]
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = loader.load_model(DEMO_BASE_MODEL)
            config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False,
                                use_dora=dora, use_rslora=rslora, **options)
            peft_model = get_peft_model(model, config)
            with torch.no_grad():  # make the adapter matter: larger B than peft's random init
                for name, parameter in peft_model.named_parameters():
                    if "lora_B" in name:
                        parameter.mul_(4.0)
            directory = tmp_path_factory.mktemp(f"adapter-{seed}")
            peft_model.save_pretrained(directory, save_embedding_layers=False)  # lm_head targets: factors only
        finally:
            torch.random.set_rng_state(state)
        made[key] = directory
        return directory

    return make


#: The adapter types ftaas trains besides the LoRA family, as the engine serves them (peft's configurations).
PEFT_KINDS = ("ia3", "ia3-every-module", "prompt_tuning", "prefix_tuning")


def peft_adapter(model: Any, kind: str, directory: Path, *, seed: int = 0, virtual_tokens: int = 6) -> Path:
    """A random adapter of `kind` (PEFT_KINDS) on `model` (left unchanged), saved by peft into `directory`.
    IA3 starts as the identity in peft, so its scales are drawn around 1; prompt and prefix embeddings are
    peft's own random initialisation. Phi-3's fused modules are named as Phi-3 names them."""
    import copy

    from peft import IA3Config, PrefixTuningConfig, PromptTuningConfig, get_peft_model

    fused = getattr(model.config, "model_type", "") == "phi3"
    if kind == "ia3":
        targets, feedforward = (["qkv_proj", "down_proj"] if fused else ["k_proj", "v_proj", "down_proj"]), ["down_proj"]
    elif kind == "ia3-every-module":
        targets = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"] if fused else \
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        feedforward = ["down_proj", "o_proj"]
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if kind.startswith("ia3"):
            config: Any = IA3Config(task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=feedforward)
        elif kind == "prompt_tuning":
            config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=virtual_tokens)
        elif kind == "prefix_tuning":
            config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=virtual_tokens)
        else:
            raise ValueError(kind)
        peft_model = get_peft_model(copy.deepcopy(model), config)
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "ia3_l" in name:
                    parameter.copy_(1 + 0.5 * torch.randn_like(parameter))
        peft_model.save_pretrained(directory)
    finally:
        torch.random.set_rng_state(state)
    return directory


@dataclass
class LiveServing:
    """An in-process API with the serving engine, on SQLite and a local artifact store."""

    base_url: str
    key: str
    other_key: str
    settings: Settings
    services: Any
    project_id: str

    def client(self, key: str | None = None, **options: Any) -> openai.OpenAI:
        options.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=key or self.key, **options)

    @property
    def inference(self) -> Any:
        return self.services.inference

    def register(self, directory: Path, suffix: str = "a") -> str:
        """Publish an adapter directory as a fine-tuned model of this project; returns its name."""
        uid = uuid.uuid4().hex[:12]
        published = publish_directory(self.services.store, f"models/{uid}/", directory, {"kind": "adapter"})
        name = models.fine_tuned_model_name(DEMO_BASE_MODEL, "alpha", suffix, uid[:8])
        with self.services.db.write() as session:
            models.add(session, name=name, uid=uid, project_id=self.project_id, job_id=None,
                       base_model=DEMO_BASE_MODEL, storage_prefix=published.prefix,
                       manifest_sha256=published.manifest_sha256)
        return name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served_forward(start_serving: Callable[..., LiveServing], **overrides: Any) -> LlamaForward:
    """The demo model's forward pass as a server started with `overrides` builds it, after one chat answered."""
    live = start_serving(**overrides)
    answer = live.client().chat.completions.create(model=DEMO_BASE_MODEL, max_tokens=4,
                                                   messages=[{"role": "user", "content": "Say hello."}])
    assert answer.choices[0].message.content
    return live.inference.engine_for(DEMO_BASE_MODEL).engine.forward


@pytest.fixture
def start_serving(tmp_path: Path, model_cache_dir: Path) -> Iterator[Callable[..., LiveServing]]:
    """start_serving(**setting overrides) -> a running server; stopped (and drained) after the test."""
    import uvicorn

    from api.app import build_services, create_app
    from api.inference.router import router as inference_router
    from ftaas.launcher import attach_inference

    started: list[tuple[Any, threading.Thread, Any]] = []

    def start(**overrides: Any) -> LiveServing:
        port = _free_port()
        settings = Settings(data_dir=tmp_path / f"data-{len(started)}", model_cache_dir=model_cache_dir,
                            port=port, **overrides)
        settings.data_dir.mkdir(parents=True)
        services = build_services(settings)
        migrate.upgrade(services.db)
        with services.db.write() as session:
            project = projects.ensure_project(session, "alpha")
            _, key = projects.create_api_key(session, project)
            _, other = projects.create_api_key(session, projects.ensure_project(session, "beta"))
            project_id = project.id
        attach_inference(services, settings)
        app = create_app(settings, services=services, extra_routers=[inference_router])
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        started.append((server, thread, services))
        return LiveServing(f"http://127.0.0.1:{port}", key, other, settings, services, project_id)

    yield start
    for server, thread, services in started:
        server.should_exit = True
        thread.join(timeout=30)
        services.inference.close()
        services.db.dispose()
