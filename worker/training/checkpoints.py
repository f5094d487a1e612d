"""A trainer checkpoint: everything a run needs to continue exactly where it stopped, as safetensors and
JSON, never pickle.

A checkpoint directory holds the adapter (adapters.save: the servable one, and the raw one where they
differ), the optimizer's state (`optimizer.safetensors`, whole tensors: gathered under FSDP and split back
on resume, so a checkpoint has the same files in every mode), the RNG state of every process
(`rng_state.safetensors`), the best adapter so far when early stopping keeps one (`best_*` files), and
`trainer_state.json`: the loop's position, the optimizer's parameter groups, the scheduler, the validation
cursor, the early-stopping and epoch-tally state, the number of processes and the spec. Batch order is a
pure function of (seed, epoch), so the position (epoch, batch within the epoch) is all the data order
needs; a checkpoint written by N processes resumes only with N (the order of each process would differ).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from contracts.training.spec import TrainingSpec
from worker.training import adapters
from worker.training.distributed import DistributedContext

STATE_FILE = "trainer_state.json"
OPTIMIZER_TENSORS = "optimizer.safetensors"
RNG_TENSORS = "rng_state.safetensors"
BEST_PREFIX = "best_"


@dataclass
class Position:
    epoch: int = 0
    batch: int = 0  # next batch within the epoch
    step: int = 0
    trained_tokens: int = 0


@dataclass
class EpochTally:
    """Trained tokens of the current epoch and how many of them the model predicted right (before each
    step's update): the epoch's training token accuracy, which stop_when_learned reads at the epoch's end."""

    correct: float = 0.0
    trained: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.trained if self.trained else 0.0


@dataclass
class EarlyStopping:
    best_loss: float | None = None
    best_step: int | None = None
    evaluations_without_improvement: int = 0


@dataclass
class LoopState:
    """What the training loop carries from step to step besides the model and the optimizer."""

    position: Position = field(default_factory=Position)
    valid_cursor: int = 0
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    epoch_tally: EpochTally = field(default_factory=EpochTally)


@dataclass
class Optimization:
    """The optimizer and scheduler being checkpointed, and the parameters the optimizer steps."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    trainable: list[torch.nn.Parameter]


class AdapterSaver:
    """Writes the model's adapter (adapters.save: the servable one, and the raw one where they differ). Under
    FSDP the adapter's parameters are shards: they are gathered whole first, a collective every process takes
    part in, and the main process writes."""

    def __init__(self, model: Any, spec: TrainingSpec, dist: DistributedContext, initial_dir: Path) -> None:
        self.model = model
        self.spec = spec
        self.dist = dist
        self.initial_dir = initial_dir
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.parameters = [p for p in model.parameters() if p.requires_grad]

    def whole(self) -> dict[str, torch.Tensor] | None:
        """Under FSDP, the adapter's parameters gathered whole (a collective: every process calls it);
        otherwise None (the model's own are whole)."""
        if not self.dist.fsdp:
            return None
        return self.dist.full_tensors(dict(zip(self.names, self.parameters, strict=True)))

    def save(self, directory: Path) -> None:
        """The servable adapter into `directory` (every process calls it; the main one writes)."""
        whole = self.whole()
        if self.dist.is_main:
            adapters.save(self.model, self.spec.adapter, directory, self.initial_dir, state_dict=whole)

    def peft_state(self) -> dict[str, torch.Tensor]:
        """The adapter as peft saves it (whole tensors; under FSDP a collective every process calls)."""
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.model, state_dict=self.whole())


def optimizer_tensors(optimizer: torch.optim.Optimizer, dist: DistributedContext
                      ) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """The optimizer's state as whole tensors named `state.<parameter index>.<slot>` (gathered under FSDP, a
    collective then: every process calls it), and its parameter groups."""
    optimizer_state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, slots in optimizer_state["state"].items():
        for name, value in slots.items():
            tensors[f"state.{index}.{name}"] = value
    return dist.full_tensors(tensors), optimizer_state["param_groups"]


def save(directory: Path, loop: LoopState, *, model: Any, spec: TrainingSpec, initial_dir: Path, best_dir: Path,
         adapter_state: dict[str, torch.Tensor] | None, optimizer: tuple[dict[str, torch.Tensor], list[dict[str, Any]]],
         scheduler: Any, rng_states: list[torch.Tensor], world_size: int) -> None:
    """Write a checkpoint into `directory` (the main process only). `adapter_state`: the adapter's whole
    tensors where the model's own are sharded (FSDP), else None; `optimizer`: `optimizer_tensors`' result;
    `rng_states`: every process's CPU generator state, by rank."""
    adapters.save(model, spec.adapter, directory, initial_dir, state_dict=adapter_state)
    tensors, param_groups = optimizer
    save_file(tensors, str(directory / OPTIMIZER_TENSORS))
    rng = {f"torch_cpu_rank{rank}": state for rank, state in enumerate(rng_states)}
    if torch.cuda.is_available():
        for device_index, state in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{device_index}"] = state
    save_file(rng, str(directory / RNG_TENSORS))
    if best_dir.exists():
        for path in best_dir.iterdir():
            shutil.copy(path, directory / (BEST_PREFIX + path.name))
    state = {
        "position": asdict(loop.position),
        "optimizer_param_groups": param_groups,
        "scheduler": scheduler.state_dict(),
        "valid_cursor": loop.valid_cursor,
        "early_stopping": asdict(loop.early_stopping),
        "epoch_tally": asdict(loop.epoch_tally),
        "world_size": world_size,
        "spec": spec.to_json(),
    }
    (directory / STATE_FILE).write_text(json.dumps(state, indent=2))


def load(directory: Path, *, model: Any, initial_dir: Path, best_dir: Path, optimization: Optimization,
         device: torch.device, dist: DistributedContext) -> LoopState:
    """Restore a checkpoint written by `save` into the model, the optimizer, the scheduler and this process's
    RNG (every process calls it: under FSDP the optimizer's tensors are split collectively); the loop state."""
    state = json.loads((directory / STATE_FILE).read_text())
    if state.get("world_size", 1) != dist.world_size:
        raise ValueError(f"checkpoint written by {state.get('world_size')} processes, resuming with "
                         f"{dist.world_size}: the data order would differ")
    for name in (adapters.INITIAL_WEIGHTS, adapters.INITIAL_CONFIG):
        if (directory / name).exists():
            shutil.copy(directory / name, initial_dir / name)
    adapters.load_raw(model, directory, dist.distribute_like)
    tensors = load_file(str(directory / OPTIMIZER_TENSORS))
    slots: dict[int, dict[str, torch.Tensor]] = {}
    entries = sorted((int(index), name, key) for key in tensors for _, index, name in [key.split(".", 2)])
    for index, name, key in entries:  # one order on every process: FSDP splits collectively
        slots.setdefault(index, {})[name] = dist.distribute_like(tensors[key].to(device),
                                                                 optimization.trainable[index])
    optimization.optimizer.load_state_dict({"state": slots, "param_groups": state["optimizer_param_groups"]})
    optimization.scheduler.load_state_dict(state["scheduler"])
    rng = load_file(str(directory / RNG_TENSORS))
    torch.random.set_rng_state(rng[f"torch_cpu_rank{dist.rank}"])
    if torch.cuda.is_available():
        for device_index in range(torch.cuda.device_count()):
            if f"torch_cuda_{device_index}" in rng:
                torch.cuda.set_rng_state(rng[f"torch_cuda_{device_index}"], device_index)
    best_files = [p for p in directory.iterdir() if p.name.startswith(BEST_PREFIX)]
    if best_files:
        best_dir.mkdir(parents=True, exist_ok=True)
        for path in best_files:
            shutil.copy(path, best_dir / path.name[len(BEST_PREFIX):])
    return LoopState(position=Position(**state["position"]), valid_cursor=int(state["valid_cursor"]),
                     early_stopping=EarlyStopping(**state.get("early_stopping", {})),
                     epoch_tally=EpochTally(**state.get("epoch_tally", {})))
