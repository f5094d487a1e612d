"""Data-parallel training: two processes (gloo, CPU) follow the loss curve of one."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from basemodels.loader import BaseModelLoader
from basemodels.registry import BaseModelRegistry
from contracts.settings import DEMO_BASE_MODEL, DEMO_BASE_MODEL_SOURCE
from contracts.training.spec import TrainingSpec
from tests.worker.test_training_engine import Recorder, varied_chats
from worker.training.data import encode_lines
from worker.training.distributed import DistributedContext
from worker.training.trainer import Trainer

SPEC = TrainingSpec(base_model=DEMO_BASE_MODEL, method="supervised", n_epochs=2, batch_size=6, learning_rate=3e-3,
                    seed=9, packing=True)


def _train(rank: int, world_size: int, port: int, out_dir: str, cache_dir: str) -> None:
    """One process of the group (also the single-process reference, with world_size 1)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed = DistributedContext.initialise(rank, world_size, "gloo")
    loader = BaseModelLoader(BaseModelRegistry({DEMO_BASE_MODEL: DEMO_BASE_MODEL_SOURCE}), Path(cache_dir))
    tokenizer = loader.load_tokenizer(DEMO_BASE_MODEL)
    train = encode_lines(varied_chats(20, seed=3), "chat", tokenizer, 256).examples
    valid = encode_lines(varied_chats(5, seed=4), "chat", tokenizer, 256).examples
    recorder = Recorder()
    trainer = Trainer(SPEC, loader.load_model(DEMO_BASE_MODEL), tokenizer, train, valid,
                      recorder if distributed.is_main else None, Path(out_dir) / f"work-{world_size}-{rank}",
                      precision="fp32", distributed=distributed)
    outcome = trainer.run()
    if distributed.is_main:
        (Path(out_dir) / f"curve-{world_size}.json").write_text(json.dumps({
            "train_loss": [m.train_loss for m in recorder.metrics],
            "full_valid_loss": [m.full_valid_loss for m in recorder.metrics if m.full_valid_loss is not None],
            "trained_tokens": outcome.trained_tokens}))
        save_file({k: v.contiguous() for k, v in trainer.adapter_state().items()},
                  str(Path(out_dir) / f"adapter-{world_size}.safetensors"))
    if distributed.active:
        distributed.finish_and_exit(0)  # as worker.jobs.launch ends its processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_train_like_one(tmp_path: Path, model_cache_dir: Path) -> None:
    _train(0, 1, free_port(), str(tmp_path), str(model_cache_dir))
    group = mp.start_processes(_train, args=(2, free_port(), str(tmp_path), str(model_cache_dir)), nprocs=2,
                               join=False, start_method="spawn")
    deadline = time.monotonic() + 180
    while not group.join(timeout=2):
        if time.monotonic() > deadline:
            for process in group.processes:
                process.kill()
            pytest.fail("the two training processes did not finish within 180 s")
    one: dict[str, Any] = json.loads((tmp_path / "curve-1.json").read_text())
    two: dict[str, Any] = json.loads((tmp_path / "curve-2.json").read_text())
    assert len(one["train_loss"]) == len(two["train_loss"]) == 8  # 20 examples / 6 per step * 2 epochs
    assert two["trained_tokens"] == one["trained_tokens"]
    # Same data, same order, gradients summed in another order: equal up to float rounding.
    assert torch.allclose(torch.tensor(two["train_loss"]), torch.tensor(one["train_loss"]), rtol=1e-4)
    assert torch.allclose(torch.tensor(two["full_valid_loss"]), torch.tensor(one["full_valid_loss"]), rtol=1e-4)
    adapter_one = load_file(str(tmp_path / "adapter-1.safetensors"))
    adapter_two = load_file(str(tmp_path / "adapter-2.safetensors"))
    assert all(torch.allclose(adapter_one[k], adapter_two[k], atol=1e-5) for k in adapter_one)
