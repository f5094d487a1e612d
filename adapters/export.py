"""Export a fine-tuned model as a plain model: the base model's weights with the adapter folded in.

Streamed tensor by tensor: each base shard is opened lazily (`safe_open`), each tensor read, the LoRA
update added where the adapter targets it (in fp32, then back to the tensor's own dtype), and the tensor
appended to the output shard of the same name. At most one base tensor and its output copy are in memory
besides the shard being assembled, never two copies of the model. Config, generation config and tokenizer
files are copied; a sharded base keeps its index. The result loads with plain `transformers`
(`AutoModelForCausalLM.from_pretrained(dir)`), no peft needed.

An adapter of the output layer on a base whose output layer is tied to the input embeddings (SmolLM2) unties
them: the exported model gets its own `lm_head.weight` (the embeddings plus the update) and
`tie_word_embeddings: false`, and its input embeddings stay the base model's.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from adapters.lora_files import LoraAdapter
from contracts.errors import InvalidRequest

#: Files besides the weights that make a model directory loadable (never code: trust_remote_code is off).
COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt")
INDEX = "model.safetensors.index.json"
#: the output layer's weight (transformers' name in the causal LM families ftaas serves)
HEAD = "lm_head.weight"


def base_tensor_name(module: str) -> str:
    """peft's module path -> the base model's weight name (base_model.model.X -> X.weight)."""
    return module.removeprefix("base_model.model.") + ".weight"


def export_merged(base_dir: Path, adapter: LoraAdapter, out_dir: Path, *,
                  progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Write the merged model into `out_dir` (created); returns the weight files written. `progress(done,
    total)` is called after each tensor written (total: the base model's tensors, counted from the shards'
    headers first)."""
    shards = sorted(base_dir.glob("*.safetensors"))
    if not shards:
        raise InvalidRequest("the base model has no safetensors weights to merge into", param="model")
    config_file = base_dir / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()).get("auto_map"):
        raise InvalidRequest("base models with custom code are not exported", param="model")
    updates = {base_tensor_name(module): factors for module, factors in adapter.modules.items()}
    total, names = 0, set()
    for shard in shards:
        with safe_open(str(shard), framework="pt") as reader:
            total += len(reader.keys())
            names.update(reader.keys())
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    # The output layer's update on a tied output layer: written as its own weight, from the embeddings.
    untie = HEAD in updates and HEAD not in names and bool(config.get("tie_word_embeddings", True))
    embeddings = next((name for name in sorted(names) if name.endswith("embed_tokens.weight")), None) if untie else None
    out_dir.mkdir(parents=True)
    written, applied, done = [], set(), 0
    shard_of_head = ""
    for shard in shards:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(shard), framework="pt") as reader:
            metadata = reader.metadata()
            for name in reader.keys():  # noqa: SIM118 (a safetensors reader, not a dict)
                tensor = reader.get_tensor(name)
                factors = updates.get(name)
                if factors is not None:
                    if tuple(tensor.shape) != (factors.b.shape[0], factors.a.shape[1]):
                        raise InvalidRequest(f"{name}: the adapter's update does not fit the base weight",
                                             code="adapter_base_mismatch", param="model")
                    tensor = (tensor.float() + factors.b.float() @ factors.a.float()).to(tensor.dtype)
                    applied.add(name)
                tensors[name] = tensor.contiguous()
                if name == embeddings:
                    factors = updates[HEAD]
                    tensors[HEAD] = (tensor.float() + factors.b.float() @ factors.a.float()).to(tensor.dtype)
                    applied.add(HEAD)
                    shard_of_head = shard.name
                done += 1
                if progress is not None:
                    progress(done, total)
        target = out_dir / shard.name
        save_file(tensors, str(target), metadata=metadata or {"format": "pt"})
        written.append(target)
        del tensors
    missing = sorted(set(updates) - applied)
    if missing:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise InvalidRequest(f"the adapter updates {missing[0]}, which the base model does not have",
                             code="adapter_base_mismatch", param="model")
    for name in (*COPIED, INDEX):
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, out_dir / name)
    if HEAD in applied and untie:
        (out_dir / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}, indent=2))
        if (out_dir / INDEX).is_file():
            index = json.loads((out_dir / INDEX).read_text())
            index["weight_map"][HEAD] = shard_of_head
            (out_dir / INDEX).write_text(json.dumps(index, indent=2))
    return written
