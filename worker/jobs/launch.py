"""Entry point of each process of a data-parallel training group: `torchrun ... -m worker.jobs.launch FILE`.

The runner writes FILE (the lease, the plan, the workspace) and starts torchrun; every process reads its
settings from the environment it inherited, joins the process group, and runs `execute`. The main process
records the outcome (or the error) in the workspace for the runner.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from contracts.errors import FTaaSError
from contracts.settings import Settings
from db.leased import Lease
from worker.context import WorkerContext
from worker.jobs.execution import execute
from worker.jobs.plan import JobPlan
from worker.jobs.workspace import Workspace, write_outcome
from worker.training.distributed import DistributedContext


def main(launch_file: str) -> int:
    # torchrun's variables, read here at the process entry like every other setting.
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    spec = json.loads(Path(launch_file).read_text())
    settings = Settings()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        # The processes share the CPU: give each its share of the cores.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
        device, backend = "cpu", "gloo"
    distributed = DistributedContext.initialise(rank, world_size, backend)
    workspace = Workspace(Path(spec["workspace"]))
    try:
        outcome = execute(WorkerContext(settings), Lease(**spec["lease"]), JobPlan.from_json(spec["plan"]), workspace,
                          distributed, preempt=workspace.preempt_flag.exists, lease_alive=lambda: True, device=device)
        if distributed.is_main:
            write_outcome(workspace, outcome)
        code = 0
    except FTaaSError as exc:
        if distributed.is_main:
            write_outcome(workspace, None, {"class": type(exc).__name__, "code": exc.code, "message": exc.message,
                                            "param": exc.param})
        code = 1
    distributed.finish_and_exit(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
