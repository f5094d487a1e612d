"""Peak memory of a training step, estimated before launch from the base model's config and the job's spec.

The estimate is an upper bound for one process of the ftaas trainer (worker.training.trainer) for a step of
T tokens: where the data is known (the worker, before it loads the model), the largest step's, i.e. the
`batch_size / processes` longest examples (capped at `max_seq_len`; packed or padded, a step never holds more);
without it, the worst case of that many examples of `max_seq_len` tokens. It adds, in bytes:

* weights: the frozen base, its Linear weights stored in the compute dtype (bf16 where autocast runs,
  worker.training.trainer `_store_frozen_linears`) or, for QLoRA, in NF4 (~0.52 bytes each), everything
  else (embeddings, norms) in fp32;
* adapter: the trainable parameters in fp32 with their gradients and AdamW's two moments (16 bytes each);
* activations: what autograd keeps for the backward pass, per token and layer. Without gradient
  checkpointing, for a Llama-style layer with LoRA on every Linear: the fp32 residual stream twice
  (4 bytes x 2h) and, in the compute dtype, the normalised inputs, the q/k/v/o projections and their RoPE'd
  copies, attention's output and the MLP's gate, up, activation and product
  (ACTIVATION_HIDDEN_FACTOR x h + 4 x kv_dim + ACTIVATION_MLP_FACTOR x intermediate), plus the LoRA
  intermediate (r per adapted Linear). With checkpointing only each layer's fp32 input is kept, and one
  layer's activations exist at a time while it is recomputed;
* sharded (FSDP, across `processes`): weights, adapter and optimizer state are divided by the number of
  processes, and the layers gathered whole for their forward or backward pass come on top: the one running
  and the next, prefetched (2 x one layer's weights in the compute dtype);
* logits: where the loss is computed from the output layer a chunk of positions at a time
  (worker.training.loss: packed supervised steps, one process or data parallel, a model whose logits are
  its head's product; `chunked_loss`), one chunk's logits (LOSS_CHUNK_POSITIONS x vocabulary x
  CHUNK_BYTES_PER_ENTRY: fp32 logits, the exponentials, the bf16 probabilities) and the hidden states at the
  scored positions with their gradient (T x h x 8). Otherwise the step's logits in the compute dtype,
  their fp32 copy for the loss, log-softmax's saved output and the gradients of the loss's backward
  (LOGIT_BYTES_PER_ENTRY bytes per token and vocabulary entry): on small models with large vocabularies
  that is the largest term.

* heap (CPU training only): what the C library's heap keeps resident of a step's freed per-layer
  temporaries (HEAP_BYTES_PER_TOKEN_LAYER_HIDDEN x T x n x h). glibc raises its mmap threshold to the sizes
  it has seen freed, so a step's tensors of a few MB come from the heap and their freed pages stay in the
  process. Measured: 12-32 bytes per token, layer and unit of hidden size, with or without checkpointing;
  with the threshold fixed (MALLOC_MMAP_THRESHOLD_=1 MiB) the peak fell to the other terms' sum (775 MiB
  against 728 estimated) but the step ran 1.6x slower, so the retention is kept, and counted. A GPU's
  tensors live in the device's caching allocator instead, which this term does not describe.

The constants were fitted to peak memory measured on CPU (tests/worker/test_memory_estimate.py measures it
for several shapes; docs/training.md has the table). The estimate is a planning figure, not a guarantee:
allocator fragmentation and kernel workspaces come on top, hence the headroom `fits` leaves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from contracts.training.spec import TrainingSpec

#: compute-dtype elements kept per token and layer, in units of the hidden size (see the module docstring)
ACTIVATION_HIDDEN_FACTOR = 9
#: compute-dtype elements kept per token and layer, in units of the MLP's intermediate size
ACTIVATION_MLP_FACTOR = 5
#: bytes per token and vocabulary entry for the logits at the loss's backward: the bf16 logits, their fp32
#: copy, log-softmax's saved output and the gradients flowing back (fitted: 11-13 on the shapes
#: bench/train_memory.py measured, once the heap's retention is counted apart)
LOGIT_BYTES_PER_ENTRY = 12
#: CPU training: heap bytes kept resident per token, layer and unit of hidden size. Measured 20-32 at 2-4k
#: tokens a step and 12 at 8k (the retention grows less than linearly); 16 keeps every measured shape's
#: estimate within 0.85-1.16 of its peak (docs/training.md)
HEAP_BYTES_PER_TOKEN_LAYER_HIDDEN = 16
#: positions per chunk of the chunked loss (worker.training.loss.CHUNK_ROWS; a test keeps them equal)
LOSS_CHUNK_POSITIONS = 256
#: bytes per position and vocabulary entry of one chunk: fp32 logits, the fp32 exponentials of logsumexp and
#: the probabilities cast to the compute dtype for the gradient's product
CHUNK_BYTES_PER_ENTRY = 10
#: config keys of models that change their logits after the output layer (softcapping, scaling): their loss
#: takes the full logits (the trainer checks the model itself; these are what a config shows before loading)
LOGIT_POSTPROCESSING_KEYS = ("final_logit_softcapping", "attn_logit_softcapping", "logit_scale", "logits_scaling")
#: share of a device's memory a job may plan to use (fragmentation, workspaces, the runtime itself)
HEADROOM = 0.85
LINEARS_PER_LAYER = 7
#: a 4-bit NF4 weight with its double-quantized block scales (64-weight blocks, 8-bit scales per block)
NF4_BYTES_PER_WEIGHT = 0.52


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    adapter: int
    activations: int
    logits: int
    gradient_checkpointing: bool
    tokens_per_step: int
    #: FSDP: weights, adapter and optimizer state sharded across the processes
    sharded: bool = False
    #: CPU training: freed temporaries the process's heap keeps resident
    heap: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.activations + self.logits + self.heap

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}

    def describe(self) -> str:
        gib = 1024 ** 3
        return (f"{self.total / gib:.2f} GiB (weights {self.weights / gib:.2f}, adapter and optimizer "
                f"{self.adapter / gib:.2f}, activations {self.activations / gib:.2f}, logits {self.logits / gib:.2f}"
                f"{f', heap {self.heap / gib:.2f}' if self.heap else ''}; "
                f"{self.tokens_per_step} tokens per step, gradient checkpointing "
                f"{'on' if self.gradient_checkpointing else 'off'}{', FSDP' if self.sharded else ''})")


@dataclass(frozen=True)
class _Shape:
    hidden: int
    intermediate: int
    layers: int
    kv_dim: int
    vocab: int
    tied: bool

    @classmethod
    def of(cls, config: dict[str, Any]) -> _Shape:
        hidden = int(config["hidden_size"])
        heads = int(config.get("num_attention_heads") or 1)
        head_dim = int(config.get("head_dim") or hidden // heads)
        kv_heads = int(config.get("num_key_value_heads") or heads)
        return cls(hidden=hidden, intermediate=int(config.get("intermediate_size") or 4 * hidden),
                   layers=int(config["num_hidden_layers"]), kv_dim=kv_heads * head_dim,
                   vocab=int(config["vocab_size"]), tied=bool(config.get("tie_word_embeddings", False)))

    @property
    def linear_params_per_layer(self) -> int:
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        return 2 * h * h + 2 * h * kv + 3 * h * i

    @property
    def linear_shapes(self) -> list[tuple[int, int]]:
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        return [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]


def chunked_loss(config: dict[str, Any], spec: TrainingSpec, *, sharded: bool = False) -> bool:
    """Whether the trainer computes this job's loss chunk by chunk from the output layer (see the module
    docstring), as far as the config shows: packed supervised steps of a LoRA-family or other non-prompt
    adapter, not sharded, and no logit softcapping or scaling (softcapped attention also keeps packed rows
    on the model's own attention, whose rows take the full logits)."""
    return (spec.method == "supervised" and spec.packing and not spec.adapter.is_prompt_learning and not sharded
            and all(config.get(key) is None for key in LOGIT_POSTPROCESSING_KEYS))


def estimate_peak_memory(config: dict[str, Any], spec: TrainingSpec, *, processes: int = 1,
                         compute_bytes: int = 2, gradient_checkpointing: bool,
                         tokens_per_step: int | None = None, sharded: bool = False,
                         host_memory: bool = False) -> MemoryEstimate:
    """The per-process peak of the largest training step (see the module docstring). `compute_bytes`: 2 where
    bf16 autocast runs, 4 in fp32. `tokens_per_step`: the largest step's tokens per process where the data is
    known (the longest examples of a batch); default the worst case, `batch_size / processes` examples of
    `max_seq_len` tokens. `sharded`: FSDP across the processes. `host_memory`: the step runs on the CPU (its
    tensors live in the process's heap)."""
    sharded = sharded and processes > 1  # one process holds everything, whatever the mode
    shape = _Shape.of(config)
    h = shape.hidden
    embedding = shape.vocab * h
    head = 0 if shape.tied else shape.vocab * h
    linears = shape.layers * shape.linear_params_per_layer + head
    # NF4 (QLoRA): 4 bits per weight plus double-quantized block scales, ~0.52 bytes; the unquantized head
    # stays in the compute dtype
    if spec.adapter.quantization == "nf4":
        weights = int((linears - head) * NF4_BYTES_PER_WEIGHT) + head * compute_bytes
    else:
        weights = linears * compute_bytes
    weights += (embedding + (2 * shape.layers + 1) * h) * 4
    adapter_params = 0
    rank = spec.adapter.r if spec.adapter.type in ("lora", "dora", "rslora") else 0
    if rank:
        adapter_params = shape.layers * sum(rank * (a + b) for a, b in shape.linear_shapes)
    adapter = adapter_params * 16
    if sharded:
        gathered = 2 * (shape.linear_params_per_layer * compute_bytes + 2 * h * 4 + adapter_params // shape.layers * 4)
        weights = -(-weights // processes) + gathered
        adapter = -(-adapter // processes)
    examples = max(1, -(-spec.batch_size // processes))
    tokens = tokens_per_step if tokens_per_step is not None else examples * spec.max_seq_len
    per_layer = (2 * h * 4 + (ACTIVATION_HIDDEN_FACTOR * h + 4 * shape.kv_dim
                              + ACTIVATION_MLP_FACTOR * shape.intermediate
                              + LINEARS_PER_LAYER * rank) * compute_bytes)
    if gradient_checkpointing:
        activations = tokens * (shape.layers * h * 4 + per_layer)
    else:
        activations = tokens * shape.layers * per_layer
    if chunked_loss(config, spec, sharded=sharded):
        logits = min(tokens, LOSS_CHUNK_POSITIONS) * shape.vocab * CHUNK_BYTES_PER_ENTRY + tokens * h * 8
    else:
        logits = tokens * shape.vocab * LOGIT_BYTES_PER_ENTRY
    heap = tokens * shape.layers * h * HEAP_BYTES_PER_TOKEN_LAYER_HIDDEN if host_memory else 0
    return MemoryEstimate(weights=weights, adapter=adapter, activations=activations, logits=logits,
                          gradient_checkpointing=gradient_checkpointing, tokens_per_step=tokens,
                          sharded=sharded, heap=heap)


def fits(estimate: MemoryEstimate, device_bytes: int) -> bool:
    return estimate.total <= device_bytes * HEADROOM
