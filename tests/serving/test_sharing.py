"""One machine shared by serving and batch work (contracts.machine): the thread plan, the activity board that
processes of one machine read, and the engine and the trainer taking their budget between units of work."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from contracts.machine import ActivityBoard, ThreadGovernor, plan_threads
from contracts.settings import DEMO_BASE_MODEL, Settings
from serving.engine import Engine, EngineObserver, FinishEvent, SamplingParams, Sequence
from tests.serving.conftest import forward_for

WINDOW = 0.4  # seconds a mark counts as computing (the product's: 2 s)


@pytest.mark.parametrize("cores,serving,batch", [(1, 1, 1), (2, 1, 1), (3, 2, 1), (4, 2, 2), (16, 8, 8)])
def test_shared_budgets_split_the_cores_and_alone_each_kind_takes_them_all(cores: int, serving: int, batch: int) -> None:
    plan = plan_threads(cores, sharing=True)
    assert (plan.serving_shared, plan.batch_shared) == (serving, batch)
    assert plan.serving_alone == plan.batch_alone == cores
    assert plan.serving_shared + plan.batch_shared <= max(cores, 2)  # one core: one thread each, no teams
    assert plan.budget("serving", other_active=True) == serving and plan.budget("batch", other_active=False) == cores


def test_pinned_counts_and_sharing_off_are_kept_whatever_runs() -> None:
    pinned = plan_threads(8, sharing=True, serving_threads=3, batch_threads=2)
    assert [pinned.budget(k, other_active=o) for k in ("serving", "batch") for o in (False, True)] == [3, 3, 2, 2]
    off = plan_threads(8, sharing=False)
    assert off.budget("serving", other_active=True) == 8 and off.budget("batch", other_active=True) == 8
    assert plan_threads(16, sharing=True, serving_share=0.75).serving_shared == 12


def test_settings_take_the_cores_from_openmp_s_limit_or_the_affinity(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    settings = Settings(data_dir=tmp_path)
    assert settings.resources.plan().cores == 3 and settings.resources.board_dir == tmp_path / "resources"
    assert Settings(data_dir=tmp_path, resources_cores=6).resources.plan().serving_shared == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert Settings(data_dir=tmp_path).resources.cores == len(__import__("os").sched_getaffinity(0))
    governor = Settings(data_dir=tmp_path, resources_sharing="off", resources_cores=2).resources.governor("batch")
    assert governor.board is None and governor.threads() == 2


def test_another_process_s_work_makes_this_one_yield_until_it_stops(tmp_path: Path) -> None:
    plan = plan_threads(2, sharing=True)
    board = ActivityBoard(tmp_path, window=WINDOW)
    serving = ThreadGovernor(plan, "serving", board, interval=0)
    assert serving.threads() == 2  # nothing else computes
    # A training step running in another process, marked for as long as it runs.
    script = ("import sys, time; from pathlib import Path; from contracts.machine import *; "
              f"g = ThreadGovernor(plan_threads(2, sharing=True), 'batch', ActivityBoard(Path(sys.argv[1]), "
              f"window={WINDOW}), interval=0.05)\nwith g.working(): time.sleep(1.5)")
    other = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 30
        while serving.threads() != 1:
            assert time.monotonic() < deadline, "the other process's work was never seen"
            time.sleep(0.05)
        assert serving.shared
        # The batch side sees serving once serving marks itself.
        batch = ThreadGovernor(plan, "batch", board, interval=0)
        assert batch.threads() == 1
    finally:
        other.wait(timeout=30)
    time.sleep(WINDOW + 0.1)
    assert serving.threads(busy=False) == 2 and not serving.shared


def test_a_fixed_count_governor_never_changes_but_still_marks_its_work(tmp_path: Path) -> None:
    board = ActivityBoard(tmp_path, window=WINDOW)
    fixed = ThreadGovernor(plan_threads(4, sharing=True), "batch", board, interval=0).fixed_count()
    assert fixed.threads() == 2  # the shared budget, alone or not: results cannot depend on the load
    assert board.active("batch")
    ThreadGovernor(plan_threads(4, sharing=True), "serving", board, interval=0).threads()
    assert fixed.threads() == 2


class ThreadLog(EngineObserver):
    def __init__(self) -> None:
        self.counts: list[int] = []

    def threads(self, count: int) -> None:
        self.counts.append(count)


class Done:
    def __init__(self) -> None:
        self.finished = threading.Event()

    def __call__(self, event: Any) -> None:
        if isinstance(event, FinishEvent):
            self.finished.set()


def test_the_engine_computes_on_its_share_while_batch_work_runs_and_on_every_core_after(
        base_model: Any, tmp_path: Path) -> None:
    board = ActivityBoard(tmp_path, window=WINDOW)
    observer = ThreadLog()
    engine = Engine(forward_for(base_model), name="shared", max_queue=8, prefill_tokens=512, max_rank=8,
                    observer=observer, governor=ThreadGovernor(plan_threads(2, sharing=True), "serving", board,
                                                               interval=0))

    def generate() -> None:
        done = Done()
        engine.submit([Sequence([1, 2, 3, 4], SamplingParams(max_new_tokens=8), done)])
        assert done.finished.wait(60)

    try:
        generate()
        assert observer.counts[-1] == 2
        batch = ThreadGovernor(plan_threads(2, sharing=True), "batch", board, interval=0.05)
        with batch.working():
            generate()
            assert observer.counts[-1] == 1
            assert board.active("serving")  # and the batch side learns of it
        time.sleep(WINDOW + 0.1)
        generate()
        assert observer.counts[-1] == 2
    finally:
        engine.stop()


def test_the_trainer_takes_its_budget_before_every_step_and_reports_it(loader: Any, tokenizer: Any,
                                                                       tmp_path: Path) -> None:
    from tests.worker.test_training import Recorder, facts, spec
    from worker.training.data import encode_lines
    from worker.training.trainer import Trainer

    board = ActivityBoard(tmp_path / "board", window=WINDOW)
    serving = ThreadGovernor(plan_threads(2, sharing=True), "serving", board, interval=0)

    class ServingDuringSteps(Recorder):
        def after_step(self, metrics: Any) -> Any:
            if metrics.step >= 2:
                serving.threads()  # a chat computes from step 3 on
            return super().after_step(metrics)

    data = encode_lines(facts(8), "chat", tokenizer, 128)
    recorder = ServingDuringSteps()
    before = torch.get_num_threads()
    try:
        Trainer(spec(n_epochs=1, batch_size=2), loader.load_model(DEMO_BASE_MODEL), tokenizer, data.examples, [],
                recorder, tmp_path / "run", governor=ThreadGovernor(plan_threads(2, sharing=True), "batch", board,
                                                                    interval=0)).run()
    finally:
        torch.set_num_threads(before)
    assert [m.threads for m in recorder.metrics] == [2, 2, 1, 1]
    assert all(m.step_seconds and m.step_seconds > 0 for m in recorder.metrics)
    assert recorder.metrics[0].as_event_data()["threads"] == 2 and "step_seconds" in recorder.metrics[0].as_event_data()
    time.sleep(WINDOW + 0.1)
    assert not board.active("batch")  # the run's marks stopped with it


@pytest.mark.parametrize("starts_in", ["forward", "backward"])
def test_a_step_under_way_yields_at_the_next_layer_when_serving_starts(loader: Any, tokenizer: Any, tmp_path: Path,
                                                                       starts_in: str) -> None:
    """A chat that starts in the middle of a training step: the step's thread drops to its shared budget at the
    next decoder layer (worker.training.thread_budget), in the forward or the backward pass, not at the next
    step (a step begun on both cores took 18 s beside a chat, measured)."""
    from tests.worker.test_training import Recorder, facts, spec
    from worker.training.data import encode_lines
    from worker.training.thread_budget import repeated_layers
    from worker.training.trainer import Trainer

    board = ActivityBoard(tmp_path / "board", window=30)  # one step: no mark ages out during it
    serving = ThreadGovernor(plan_threads(2, sharing=True), "serving", board, interval=0)
    model = loader.load_model(DEMO_BASE_MODEL)
    layers = repeated_layers(model)
    assert len(layers) >= 2
    seen: list[tuple[str, int]] = []

    def chat_starts(*args: Any) -> None:
        if not seen:
            seen.append(("before the chat", torch.get_num_threads()))
            serving.threads()  # the engine computes from here on

    if starts_in == "forward":
        layers[0].register_forward_pre_hook(lambda module, args: chat_starts())  # before the trainer's hook
        layers[-1].register_forward_hook(lambda module, args, out: seen.append(("last layer", torch.get_num_threads())))
    else:
        def in_backward(module: Any, args: Any, out: Any) -> None:
            first = out[0] if isinstance(out, tuple) else out
            if not first.requires_grad:  # the final pass over the training data computes no gradient
                return
            if module is layers[-1]:  # the backward pass reaches the last layer first
                first.register_hook(lambda grad: chat_starts())
            else:  # the first layer's output gradient comes after the trainer's hooks of the layers above
                first.register_hook(lambda grad: seen.append(("first layer", torch.get_num_threads())))

        layers[-1].register_forward_hook(in_backward)
        layers[0].register_forward_hook(in_backward)
    data = encode_lines(facts(2), "chat", tokenizer, 128)
    before = torch.get_num_threads()
    try:
        Trainer(spec(n_epochs=1, batch_size=2), model, tokenizer, data.examples, [], Recorder(), tmp_path / "run",
                governor=ThreadGovernor(plan_threads(2, sharing=True), "batch", board, interval=0)).run()
    finally:
        torch.set_num_threads(before)
    assert seen[0] == ("before the chat", 2)
    assert seen[1][1] == 1, seen  # the same step, a layer later
