"""Data-parallel training of one job: the runner starts `training_processes` processes with torchrun
(worker.jobs.launch), relays preemption to them and reads back their outcome."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Any

from contracts import errors
from db.leased import Lease
from worker.context import WorkerContext
from worker.jobs.lease import LeaseKeeper
from worker.jobs.plan import JobPlan
from worker.jobs.workspace import Workspace, read_outcome
from worker.training.control import TrainingOutcome


def training_device() -> str:
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def train_in_group(ctx: WorkerContext, lease: Lease, plan: JobPlan, workspace: Workspace, keeper: LeaseKeeper,
                    preempt: Any) -> TrainingOutcome:
    """Data-parallel training over `training_processes` processes started with torchrun."""
    launch_file = workspace.root / "launch.json"
    launch_file.write_text(json.dumps({
        "lease": asdict(lease),
        "plan": plan.to_json(),
        "workspace": str(workspace.root),
    }))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={ctx.settings.training.processes}", "-m", "worker.jobs.launch", str(launch_file)]
    env = {**os.environ, **ctx.settings.child_environment()}
    process = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        while process.poll() is None:
            if preempt.is_set() and not workspace.preempt_flag.exists():
                workspace.preempt_flag.touch()  # the group's main process reads it after each step
            if keeper.lost.is_set():
                break  # the main process notices at its next fenced write and stops the group
            time.sleep(0.2)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    outcome, error = read_outcome(workspace)
    if error is not None:
        error_class = getattr(errors, error["class"], errors.FTaaSError)
        raise error_class(error["message"], code=error["code"], param=error["param"])
    if outcome is None:
        raise RuntimeError(f"the training processes exited with {process.returncode} without an outcome")
    return outcome
