"""Multi-process training: two processes (gloo, CPU) follow the loss curve of one, holding the model either
whole in each (DDP) or sharded across them (FSDP); a sharded run killed mid-way resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import replace
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
from tests.worker.test_training_engine import varied_chats
from worker.training.control import Directive, StepMetrics
from worker.training.data import encode_lines
from worker.training.distributed import DistributedContext
from worker.training.trainer import Trainer

#: a checkpoint after every step (the resume test kills a run once step KILL_AFTER's is published)
SPEC = TrainingSpec(base_model=DEMO_BASE_MODEL, method="supervised", n_epochs=2, batch_size=6, learning_rate=3e-3,
                    seed=9, packing=True, n_checkpoints=8)
KILL_AFTER = 4


class CurveRecorder:
    """The main process's control: records each step's losses and publishes checkpoints by copying them to
    `published/`; with `kill_after`, it announces that step's checkpoint (the test then SIGKILLs the group)
    and waits to be killed."""

    def __init__(self, out_dir: Path, label: str, kill_after: int | None = None) -> None:
        self.out_dir, self.label, self.kill_after = out_dir, label, kill_after
        self.train_loss: dict[int, float] = {}
        self.full_valid_loss: dict[int, float] = {}

    def after_step(self, metrics: StepMetrics) -> Directive:
        self.train_loss[metrics.step] = metrics.train_loss
        return Directive.CONTINUE

    def on_checkpoint(self, state_dir: Path, metrics: StepMetrics, *, best: bool) -> None:
        import shutil

        if metrics.full_valid_loss is not None:
            self.full_valid_loss[metrics.step] = metrics.full_valid_loss
        shutil.copytree(state_dir, self.out_dir / "published" / self.label / f"step-{metrics.step}")
        if metrics.step == self.kill_after:
            (self.out_dir / "kill-me").write_text(str(os.getpid()))
            time.sleep(600)  # the test kills this process (and its sibling) with SIGKILL meanwhile


def _train(rank: int, world_size: int, port: int, out_dir: str, cache_dir: str, sharded: bool, label: str,
           spec: TrainingSpec = SPEC, resume: str | None = None, kill_after: int | None = None) -> None:
    """One process of the group (also the single-process reference, with world_size 1)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed = replace(DistributedContext.initialise(rank, world_size, "gloo"), sharded=sharded)
    (Path(out_dir) / f"pid-{label}-{rank}").write_text(str(os.getpid()))
    loader = BaseModelLoader(BaseModelRegistry({DEMO_BASE_MODEL: DEMO_BASE_MODEL_SOURCE}), Path(cache_dir))
    tokenizer = loader.load_tokenizer(DEMO_BASE_MODEL)
    train = encode_lines(varied_chats(20, seed=3), "chat", tokenizer, 256).examples
    valid = encode_lines(varied_chats(5, seed=4), "chat", tokenizer, 256).examples
    recorder = CurveRecorder(Path(out_dir), label, kill_after)
    trainer = Trainer(spec, loader.load_model(DEMO_BASE_MODEL), tokenizer, train, valid,
                      recorder if distributed.is_main else None, Path(out_dir) / f"work-{label}-{rank}",
                      precision="fp32", distributed=distributed)
    # (counted before training: FSDP leaves the root's own parameters gathered after the last forward pass)
    held = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in trainer.model.parameters())
    total = sum(p.numel() for p in trainer.model.parameters())
    outcome = trainer.run(Path(resume) if resume else None)
    adapter = trainer.adapter_state()  # every process: under FSDP it gathers the shards
    if distributed.is_main:
        (Path(out_dir) / f"curve-{label}.json").write_text(json.dumps({
            "train_loss": recorder.train_loss, "full_valid_loss": recorder.full_valid_loss,
            "trained_tokens": outcome.trained_tokens, "share_of_weights_held": held / total}))
        save_file({k: v.contiguous() for k, v in adapter.items()}, str(Path(out_dir) / f"adapter-{label}.safetensors"))
    if distributed.active:
        distributed.finish_and_exit(0)  # as worker.jobs.launch ends its processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: Each group's processes fork from a server that imported this module (torch, transformers, peft and the
#: trainer) once, instead of importing them anew: 7 s per process on a 2-core CPU, eight processes here. The
#: server imports and computes nothing else, so its forks start as clean as spawned processes.
mp.get_context("forkserver").set_forkserver_preload([__name__])


def _group(out_dir: Path, cache_dir: Path, sharded: bool, label: str, **options: Any) -> Any:
    return mp.start_processes(_train, args=(2, free_port(), str(out_dir), str(cache_dir), sharded, label,
                                            *options.values()), nprocs=2, join=False, start_method="forkserver")


def _wait(group: Any, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not group.join(timeout=2):
        if time.monotonic() > deadline:
            for process in group.processes:
                process.kill()
            pytest.fail(f"the two training processes did not finish within {seconds:.0f} s")


def _curve(out_dir: Path, label: str) -> dict[str, Any]:
    data = json.loads((out_dir / f"curve-{label}.json").read_text())
    return {"train_loss": {int(k): v for k, v in data["train_loss"].items()},
            "full_valid_loss": {int(k): v for k, v in data["full_valid_loss"].items()},
            "trained_tokens": data["trained_tokens"], "share_of_weights_held": data["share_of_weights_held"]}


def _same_adapter(out_dir: Path, first: str, second: str, atol: float = 1e-5) -> None:
    one = load_file(str(out_dir / f"adapter-{first}.safetensors"))
    two = load_file(str(out_dir / f"adapter-{second}.safetensors"))
    assert one.keys() == two.keys() and one
    for key in one:
        assert torch.allclose(one[key], two[key], atol=atol), f"{key}: max diff {(one[key] - two[key]).abs().max()}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Path:
    """A directory holding the single-process run ("one") and the uninterrupted FSDP run ("fsdp"); the
    tests below add theirs."""
    out_dir = tmp_path_factory.mktemp("runs")
    _train(0, 1, free_port(), str(out_dir), str(model_cache_dir), False, "one")
    _wait(_group(out_dir, model_cache_dir, True, "fsdp"))
    return out_dir


@pytest.mark.parametrize("sharded", [False, True], ids=["ddp", "fsdp"])
def test_two_processes_train_like_one(runs: Path, model_cache_dir: Path, sharded: bool) -> None:
    label = "fsdp" if sharded else "ddp"
    if not sharded:
        _wait(_group(runs, model_cache_dir, False, label))
    one, two = _curve(runs, "one"), _curve(runs, label)
    assert len(one["train_loss"]) == len(two["train_loss"]) == 8  # 20 examples / 6 per step * 2 epochs
    assert two["trained_tokens"] == one["trained_tokens"]
    # Same data, same order, gradients summed in another order: equal up to float rounding.
    steps = sorted(one["train_loss"])
    assert torch.allclose(torch.tensor([two["train_loss"][s] for s in steps]),
                          torch.tensor([one["train_loss"][s] for s in steps]), rtol=1e-4)
    assert one["full_valid_loss"] and two["full_valid_loss"].keys() == one["full_valid_loss"].keys()
    assert torch.allclose(torch.tensor(list(two["full_valid_loss"].values())),
                          torch.tensor(list(one["full_valid_loss"].values())), rtol=1e-4)
    _same_adapter(runs, "one", label)
    # DDP: each process holds the whole model; FSDP: each holds its half of every parameter
    assert two["share_of_weights_held"] == pytest.approx(0.5 if sharded else 1.0, abs=0.01)


def test_sharded_training_killed_mid_run_resumes_exactly(runs: Path, model_cache_dir: Path) -> None:
    """SIGKILL both processes of an FSDP group after step 4's checkpoint; a new group resumes from it and
    ends where an uninterrupted sharded run does: the same losses for steps 5-8 and the same adapter."""
    group = _group(runs, model_cache_dir, True, "killed", spec=SPEC, resume=None, kill_after=KILL_AFTER)
    deadline = time.monotonic() + 180
    while not (runs / "kill-me").exists():
        assert time.monotonic() < deadline, "step 4's checkpoint was never published"
        assert all(p.is_alive() for p in group.processes), "a process ended before it was killed"
        time.sleep(0.2)
    for rank in (0, 1):
        os.kill(int((runs / f"pid-killed-{rank}").read_text()), signal.SIGKILL)
    with pytest.raises(mp.ProcessExitedException, match="SIGKILL"):
        group.join(timeout=30)
    for process in group.processes:
        process.join(timeout=30)
    assert [p.exitcode for p in group.processes] == [-signal.SIGKILL] * 2
    assert not (runs / "curve-killed.json").exists()

    published = runs / "published" / "killed" / f"step-{KILL_AFTER}"
    _wait(_group(runs, model_cache_dir, True, "resumed", spec=SPEC, resume=str(published)))
    uninterrupted, resumed = _curve(runs, "fsdp"), _curve(runs, "resumed")
    assert sorted(resumed["train_loss"]) == [5, 6, 7, 8]
    assert torch.allclose(torch.tensor([resumed["train_loss"][s] for s in range(5, 9)]),
                          torch.tensor([uninterrupted["train_loss"][s] for s in range(5, 9)]), rtol=1e-5)
    assert resumed["trained_tokens"] == uninterrupted["trained_tokens"]
    _same_adapter(runs, "fsdp", "resumed", atol=1e-6)
