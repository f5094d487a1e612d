"""The forward pass for Llama-family decoders with a per-row adapter, over per-sequence KV caches.

The weights are the Hugging Face model's own tensors (q/k/v and gate/up fused by concatenation; on a CPU in
bfloat16, pre-packed once into oneDNN's blocked layout, which measured 1.5x faster for the few-row products of
decoding and gives bitwise the same results); the computation is ours, so that it can meet a bar the stock
forward does not, when serving is configured batch-invariant (`tile_rows` > 1):

    A row's result depends only on that row: its token, its position, its sequence's KV cache and its
    adapter. Never on which other rows share the batch, how many there are, or where the row sits.

That is what makes a greedy completion token-identical alone or in any mixed batch. On CPU (and on GPU) a
matrix product picks its kernel, and with it the order of its floating-point sums, from the shape of the
operands: a 1-row product (gemv) and a 7-row product round differently (measured: up to 2e-5 apart; the
measurements behind this module's comments: docs/benchmarks.md, "Measurements behind code comments"). So:

* every product over rows runs on a row count padded to a multiple of `tile_rows` (fixed-shape tiles give
  per-row results independent of the batch; measured bitwise-equal across 64..512 rows);
* LoRA runs as a batched product with one matrix pair per row (`bmm`: each row is its own problem), on a
  fixed padded rank, because a product's result also depends on its inner and outer sizes; IA3 scales are
  elementwise per row (serving.slots); a virtual prefix is the start of its sequence's cache;
* attention runs per sequence on that sequence's own keys and values (serving.kvcache), so its shapes
  depend only on that sequence: decode rows one by one, prompts one by one.

With `tile_rows` 1 (serving's default) products run on the rows there are: faster for few streams, and a
row's numbers may then differ in the last bits with its company (docs/serving.md).

Rows are ordered: decode rows (one per running sequence), then the prompt tokens of joining sequences,
then padding (whose keys and values are never stored).

One file on purpose: the forward pass of every served family, whose per-family differences (norms, scales,
RoPE tables, activations) are small switches on one code path that must stay side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from contracts.errors import InvalidRequest
from serving.kernels import MAX_ROWS as KERNEL_ROWS
from serving.kernels import Products
from serving.kvcache import KVCache
from serving.placement import native_bfloat16

#: Architectures whose decoder layers this forward reproduces (pre-norm, RoPE, GQA, gated MLP; per-head q/k
#: RMSNorm for qwen3 and gemma3; phi3's fused projections and partial rotary embeddings; gemma3's scaled
#: embeddings, (1 + w) norms around both sublayers, GeLU gate, query_pre_attn_scalar and separate RoPE tables
#: for local and global layers; sliding-window layers where the config has them).
#: tests/serving/test_architectures.py proves each against transformers, with and without an adapter.
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3_text"})
#: Families whose RMSNorm multiplies by (1 + weight) in float32 before casting back (Gemma's convention).
_GEMMA_NORM_TYPES = frozenset({"gemma3_text"})
#: The gate activations the MLP may use (transformers' names).
_ACTIVATIONS = {"silu": F.silu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}
#: RoPE variants whose angles depend on the sequence length (recomputed per forward by transformers).
_DYNAMIC_ROPE_TYPES = frozenset({"dynamic", "longrope"})
#: Module groups that share an input and are computed as one product.
GROUPS: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
#: phi3 stores each group as one fused module (same output order: q, k, v; gate, up).
FUSED_GROUPS: dict[str, tuple[str, ...]] = {
    "qkv": ("qkv_proj",), "o": ("o_proj",), "gate_up": ("gate_up_proj",), "down": ("down_proj",)}
#: Families whose `sliding_window` applies to every layer (others name each layer's kind in `layer_types`).
_ALL_LAYERS_WINDOWED = frozenset({"mistral", "phi3"})


#: Grouped decode attention rounds each row's KV length up to a multiple of this (its bucket): the positions
#: copied per row and layer, against the number of groups.
DECODE_BUCKET = 64
#: A group's keys and values of every layer are copied once per step up to this size, else layer by layer.
GROUP_COPY_BYTES = 256 * 1024 ** 2


#: How the base model's linear weights are held: as the model has them ("model": its dtype, pre-packed where
#: that measured faster), or "int8" (`Int8Weight`).
WeightFormat = Literal["model", "int8"]


@dataclass(frozen=True)
class Int8Weight:
    """A linear weight as int8 with one scale per output row (symmetric, rounded to nearest): half of
    bfloat16's bytes, a quarter of float32's. A decode step reads every weight once and waits on memory, so
    it reads that much less. Multiplied by `torch.ops.aten._weight_int8pack_mm`, which dequantizes inside the
    kernel: weight-only, the activations stay in the serving dtype (bfloat16 or float16; the kernel's float32
    path measured 6x slower than its bfloat16 one, docs/benchmarks.md)."""

    values: torch.Tensor  # int8 [out, in], contiguous
    scales: torch.Tensor  # [out], the activations' dtype
    #: the scales as float32, as the decode kernels take them (serving.kernels): the same numbers
    scales_float: torch.Tensor

    @classmethod
    def of(cls, weight: torch.Tensor) -> Int8Weight:
        full = weight.detach().float()
        scales = full.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127
        values = torch.round(full / scales[:, None]).clamp_(-127, 127).to(torch.int8).contiguous()
        rounded = scales.to(weight.dtype)
        return cls(values, rounded, rounded.float())

    def multiply(self, x: torch.Tensor) -> torch.Tensor:
        """x [rows, in] @ weight.T, in x's dtype."""
        return torch.ops.aten._weight_int8pack_mm(x.contiguous(), self.values, self.scales)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight the products compute with, [out, in] in `dtype`."""
        return (self.values.float() * self.scales.float()[:, None]).to(dtype)


@dataclass(frozen=True)
class PackedWeight:
    """A bfloat16 weight twice: as the model stores it, for the decode kernels' few-row products (which stream
    it row by row), and pre-packed for oneDNN, which multiplies more rows faster (serving.kernels)."""

    plain: torch.Tensor  # [out, in], contiguous
    packed: torch.Tensor  # oneDNN's blocked layout


def refuse_int8(dtype: torch.dtype, batch_invariant: bool, device: torch.device | str = "cpu") -> None:
    """ValueError where int8 weights cannot be served as asked: with float32 activations (slower than plain
    float32 weights, measured), batch-invariant (its tiles were measured with dense kernels), or on a device
    whose torch has no int8 weight-only kernel."""
    if batch_invariant:
        raise ValueError("int8 weights are not served batch-invariant (FTAAS_SERVING_BATCH_INVARIANT)")
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"int8 weights compute with bfloat16 or float16 activations, not {dtype}")
    try:
        Int8Weight.of(torch.ones(8, 32, dtype=dtype, device=device)).multiply(
            torch.ones(1, 32, dtype=dtype, device=device))
    except (RuntimeError, NotImplementedError) as exc:
        raise ValueError(f"int8 weights: this torch has no int8 weight-only product on {device} ({exc})") from exc


def module_groups(model_type: str | None) -> dict[str, tuple[str, ...]]:
    """group -> the model's module names computed in it (the names adapters target)."""
    return FUSED_GROUPS if model_type == "phi3" else GROUPS


@dataclass
class LayerWeights:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    #: group -> (weight [out, in], bias [out] or None)
    linear: dict[str, tuple[torch.Tensor, torch.Tensor | None]]
    #: qwen3: RMSNorm weights applied per head to queries and keys before RoPE.
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None
    #: Sliding-window layers: a query at position i sees keys at positions j with i - window < j <= i.
    window: int | None = None
    #: gemma3: norms applied to each sublayer's output before the residual add.
    attention_out_norm: torch.Tensor | None = None
    mlp_out_norm: torch.Tensor | None = None
    #: Index of the layer's RoPE table in `LlamaForward.rope` (gemma3: local and global layers differ).
    rope: int = 0


@dataclass
class Geometry:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    vocab: int
    eps: float
    #: group -> (input features, output features of each member module)
    groups: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)


class LlamaForward:
    """Owns the base weights of one model, the KV caches of its slots and a stack of resident adapters.

    `kv_budget_bytes` bounds the keys and values all slots may hold together (None: every slot may reach
    `max_context`, the most they could ever need); the context a sequence can reach is capped at what the
    budget holds for one sequence alone."""
    # Long on purpose: the forward pass and its attention paths share the weights and geometry.

    def __init__(self, model: Any, *, max_slots: int, max_context: int, tile_rows: int,
                 kv_budget_bytes: int | None = None, weights: WeightFormat = "model",
                 kernels: Products | None = None) -> None:
        # Long on purpose: every served family's weights, norms and RoPE tables, in one walk.
        config = model.config
        model_type = getattr(config, "model_type", None)
        refuse_unservable(config)
        inner = model.model
        self.dtype = inner.embed_tokens.weight.dtype
        self.device = inner.embed_tokens.weight.device
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.geometry = Geometry(
            hidden=config.hidden_size, heads=config.num_attention_heads, kv_heads=config.num_key_value_heads,
            head_dim=head_dim, layers=config.num_hidden_layers, vocab=config.vocab_size, eps=config.rms_norm_eps,
        )
        #: Softmax scale of attention scores (gemma3: query_pre_attn_scalar ** -0.5, not head_dim's).
        self.attention_scale = float(getattr(config, "query_pre_attn_scalar", None) or head_dim) ** -0.5
        self.activation = _ACTIVATIONS[_activation_name(config)]
        self.silu = _activation_name(config) == "silu"
        self.gemma_norm = model_type in _GEMMA_NORM_TYPES
        self.embed = inner.embed_tokens.weight.detach()
        scale = getattr(inner.embed_tokens, "embed_scale", None)
        #: gemma3 multiplies embeddings by sqrt(hidden), rounded to the weights' dtype as transformers does.
        self.embed_scale = scale.detach().to(self.dtype) if isinstance(scale, torch.Tensor) else None
        self.final_norm = self._norm_weight(inner.norm.weight)
        #: tile_rows 1: products on the rows there are (serving's default); batch invariance needs tiles
        self.batch_invariant = tile_rows > 1
        #: bfloat16 on a CPU: weights pre-packed for oneDNN (bitwise the F.linear result, 1.5x faster for the
        #: few-row products of decoding, measured). Not under batch invariance, whose tiles were measured
        #: with F.linear's kernels.
        self.prepacked = (weights == "model" and self.device.type == "cpu" and self.dtype == torch.bfloat16
                          and not self.batch_invariant and native_bfloat16("cpu")
                          and torch.backends.mkldnn.is_available()
                          and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))
        #: int8: every linear weight (the output layer's too) as int8 with one scale per output (`Int8Weight`)
        self.weight_format: WeightFormat = weights
        #: The decode kernels (serving.kernels) for products of at most KERNEL_ROWS rows, where the caller's
        #: measurement chose them: bf16 or int8 weights on a CPU, not batch-invariant (whose tiles were measured
        #: with the library's kernels). Pre-packed bf16 weights are then kept plain too (`PackedWeight`).
        self.kernels = kernels if (self.device.type == "cpu" and not self.batch_invariant and (
            weights == "int8" or self.dtype == torch.bfloat16)) else None
        if weights == "int8":
            refuse_int8(self.dtype, self.batch_invariant, self.device)
        self.lm_head = self._pack(model.get_output_embeddings().weight.detach())
        #: group -> module names, and module name -> group, for this model family.
        self.members = module_groups(model_type)
        self.module_group = {module: group for group, modules in self.members.items() for module in modules}
        self.layers: list[LayerWeights] = []
        windows = layer_windows(config, max_context)
        #: The distinct sliding windows of the layers (build_step makes one decode mask per window).
        self.windows = sorted({w for w in windows if w is not None})
        rotary = inner.rotary_emb
        layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
        #: RoPE (inverse frequencies, attention scaling) per table; gemma3 keeps one per layer type.
        tables: list[tuple[torch.Tensor, float]] = []
        table_of: dict[str, int] = {}
        for kind in layer_types:
            if kind not in table_of:
                inv_freq = getattr(rotary, f"{kind}_inv_freq", None)
                if inv_freq is None:
                    inv_freq, scaling = rotary.inv_freq, getattr(rotary, "attention_scaling", 1.0)
                else:
                    scaling = getattr(rotary, f"{kind}_attention_scaling", 1.0)
                table_of[kind] = len(tables)
                tables.append((inv_freq, float(scaling)))
        for index, layer in enumerate(inner.layers):
            attention, mlp = layer.self_attn, layer.mlp
            modules = {name: getattr(attention if group in ("qkv", "o") else mlp, name)
                       for group, names in self.members.items() for name in names}
            linear: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
            for group, members in self.members.items():
                weights = [modules[m].weight.detach() for m in members]
                biases = [modules[m].bias for m in members]
                weight = self._pack(weights[0] if len(weights) == 1 else torch.cat(weights, 0))
                bias = None
                if any(b is not None for b in biases):
                    bias = torch.cat([b.detach() if b is not None else torch.zeros(w.shape[0], dtype=w.dtype,
                                                                                 device=w.device)
                                      for b, w in zip(biases, weights, strict=True)])
                linear[group] = (weight, bias)
                self.geometry.groups.setdefault(group, (weights[0].shape[1], tuple(w.shape[0] for w in weights)))
            q_norm, k_norm = getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)
            pre_mlp = getattr(layer, "pre_feedforward_layernorm", None)
            if pre_mlp is not None:  # gemma3: post_attention_layernorm normalises the attention output
                norms = (layer.input_layernorm, pre_mlp, layer.post_attention_layernorm,
                         layer.post_feedforward_layernorm)
            else:
                norms = (layer.input_layernorm, layer.post_attention_layernorm, None, None)
            self.layers.append(LayerWeights(
                self._norm_weight(norms[0].weight), self._norm_weight(norms[1].weight), linear,
                q_norm=self._norm_weight(q_norm.weight) if q_norm is not None else None,
                k_norm=self._norm_weight(k_norm.weight) if k_norm is not None else None,
                window=windows[index],
                attention_out_norm=self._norm_weight(norms[2].weight) if norms[2] is not None else None,
                mlp_out_norm=self._norm_weight(norms[3].weight) if norms[3] is not None else None,
                rope=table_of[layer_types[index]]))
        # RoPE tables for every position, computed the way the model's own rotary module does.
        positions = torch.arange(max_context, dtype=torch.float32, device=self.device)
        #: (cos, signed sin) [max_context, rotary_dim] per table: the sine's first half negated, so that RoPE is
        #: x * cos + roll(x) * signed sin (`_rope`), bitwise transformers' x * cos + rotate_half(x) * sin.
        self.rope: list[tuple[torch.Tensor, torch.Tensor]] = []
        for inv_freq, scaling in tables:
            freqs = positions[:, None] * inv_freq.float().to(self.device)[None, :]
            angles = torch.cat((freqs, freqs), dim=-1)
            sin = (angles.sin() * scaling).to(self.dtype)
            half = sin.shape[-1] // 2
            self.rope.append(((angles.cos() * scaling).to(self.dtype), torch.cat((-sin[:, :half], sin[:, half:]), -1)))
        #: Leading dimensions of each head that RoPE rotates (partial rotary embeddings rotate fewer).
        self.rotary_dim = 2 * tables[0][0].shape[0]

        self.max_slots = max_slots
        self.tile_rows = tile_rows
        g = self.geometry
        self.kv = KVCache(layers=g.layers, kv_heads=g.kv_heads, head_dim=g.head_dim, dtype=self.dtype,
                          device=self.device, slots=max_slots, max_context=max_context, budget_bytes=kv_budget_bytes)
        #: the longest prompt + completion a sequence may reach: the configured context, or less when the
        #: KV budget cannot hold that much for one sequence
        self.max_context = self.kv.max_context
        if self.max_context < 16:
            raise ValueError(f"a KV budget of {self.kv.budget_bytes} bytes holds {self.max_context} positions; "
                             f"one position of this model takes {self.kv.position_bytes} bytes")

    def _pack(self, weight: torch.Tensor) -> Any:
        """A weight as `_dense` multiplies by it (pre-packed where `prepacked`; int8 where `weight_format` says)."""
        if self.weight_format == "int8":
            return Int8Weight.of(weight)
        if not self.prepacked:
            return weight.contiguous() if self.kernels is not None else weight
        # The batch-size hint picks the blocking; 16 measured best for 1-16 rows and within 2 % up to 200
        # (docs/benchmarks.md, "Measurements behind code comments").
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 16)
        return PackedWeight(weight.contiguous(), packed) if self.kernels is not None else packed

    def _dense(self, x: torch.Tensor, weight: Any) -> torch.Tensor:
        if self.kernels is not None and x.shape[0] <= KERNEL_ROWS:
            if isinstance(weight, Int8Weight):
                out = self.kernels.int8(x, weight.values, weight.scales_float)
            else:
                out = self.kernels.bf16(x, weight.plain if isinstance(weight, PackedWeight) else weight)
            if out is not None:
                return out
        if isinstance(weight, PackedWeight):
            weight = weight.packed
        if self.prepacked:
            return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
        if isinstance(weight, Int8Weight):
            return weight.multiply(x)
        return F.linear(x, weight)

    def weight(self, layer: int, group: str) -> torch.Tensor:
        """A group's weight [out, in] as the model computes with it (pre-packed weights are unpacked:
        multiplying the identity is exact, each output one product with 1.0; int8 weights dequantized)."""
        weight = self.layers[layer].linear[group][0]
        if isinstance(weight, Int8Weight):
            return weight.dequantized(self.dtype)
        if isinstance(weight, PackedWeight):
            return weight.plain
        if not self.prepacked:
            return weight
        fan_in = self.geometry.groups[group][0]
        return self._dense(torch.eye(fan_in, dtype=self.dtype, device=self.device), weight).T

    def _norm_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """A norm's multiplier as `_norm` uses it: the weight, or Gemma's float32 (1 + weight)."""
        return 1.0 + weight.detach().float() if self.gemma_norm else weight.detach()

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm as the family computes it: Llama casts to the input dtype then multiplies; Gemma
        multiplies in float32, then casts."""
        eps = self.geometry.eps
        if not self.gemma_norm:
            if self.kernels is not None and x.shape[0] <= KERNEL_ROWS:
                out = self.kernels.rms_norm(x, weight, eps)
                if out is not None:
                    return out
            return _rms_norm(x, weight, eps)
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight).to(x.dtype)

    def move_slot(self, source: int, target: int) -> None:
        """Give a sequence's cached keys and values to another slot (no copy)."""
        self.kv.move(source, target)

    # ------------------------------------------------------------------------------------ sizes
    def group_dims(self) -> dict[str, tuple[int, int]]:
        """group -> (input features, total output features)."""
        return {group: (fan_in, sum(outs)) for group, (fan_in, outs) in self.geometry.groups.items()}

    # ---------------------------------------------------------------------------------- forward
    def forward(self, batch: StepBatch, kv: KVCache | None = None) -> torch.Tensor:
        """Run one engine step; returns float32 logits, one row per sequence in `batch.logit_rows`. `kv`: the
        caches the step's prompts are written to (default the engine's own; the one `build_step` reserved in)."""
        # Long on purpose: one decoder step of every layer, checked against transformers line by line.
        g = self.geometry
        kv = self.kv if kv is None else kv
        rows = batch.padded_rows
        x = self.embed[batch.tokens]
        if self.embed_scale is not None:
            x = x * self.embed_scale
        for start, embeddings in batch.embeddings:  # rows given as embeddings (prompt tuning's virtual tokens)
            x[start:start + embeddings.shape[0]] = embeddings
        rope = [(cos[batch.positions].unsqueeze(1), sin[batch.positions].unsqueeze(1)) for cos, sin in self.rope]
        #: grouped decode: each layer's keys and values of the decode rows, stored once after the last layer
        staged: list[torch.Tensor] = []
        #: decode rows only, few: RoPE, the cache write and attention in one kernel call per row and layer
        fused_decode = (self.kernels is not None and not batch.decode_groups and not batch.prefills
                        and rows == batch.real_rows <= KERNEL_ROWS and self.rotary_dim == g.head_dim)
        for index, layer in enumerate(self.layers):
            h = self._norm(x, layer.input_norm)
            qkv = self._linear(h, layer, "qkv", index, batch)
            attended = self._fused_decode_attention(qkv, index, layer, batch) if fused_decode else None
            if attended is None:
                attended = self._attention(qkv, index, layer, batch, kv, rope, staged)
            out = self._linear(attended.reshape(rows, -1), layer, "o", index, batch)
            if layer.attention_out_norm is not None:
                out = self._norm(out, layer.attention_out_norm)
            x = x + out
            h = self._norm(x, layer.post_norm)
            gate_up = self._linear(h, layer, "gate_up", index, batch)
            activated = self.kernels.silu_mul(gate_up) if self.kernels is not None and self.silu else None
            if activated is None:
                gate, up = gate_up.chunk(2, dim=-1)
                activated = self.activation(gate) * up
            out = self._linear(activated, layer, "down", index, batch)
            if layer.mlp_out_norm is not None:
                out = self._norm(out, layer.mlp_out_norm)
            x = x + out
        if staged:
            every_layer = torch.stack(staged)  # [layers, decode rows, 2, kv_heads, head_dim]
            for row, (cache, position) in enumerate(batch.decode_caches):
                cache.select(3, position).copy_(every_layer[:, row])
        last = x[batch.logit_rows]
        last = self._norm(_pad_rows(last, self.tile_rows), self.final_norm)
        logits = self._dense(last, self.lm_head)[:len(batch.logit_rows)].float()
        for rows, factors in batch.unembed_rows:  # output-layer LoRA, per adapter, on its rows' logits
            logits[rows] += (last[rows].float() @ factors.a) @ factors.b
        return logits

    def _attention(self, qkv: torch.Tensor, index: int, layer: LayerWeights, batch: StepBatch, kv: KVCache,
                   rope: list[tuple[torch.Tensor, torch.Tensor]], staged: list[torch.Tensor]) -> torch.Tensor:
        """Every row's attention for one layer from its fused q/k/v product ([rows, heads, head_dim]): RoPE (per-head
        q/k norms first where the family has them), the keys and values stored in their caches (a grouped decode's
        appended to `staged`, stored after the last layer), decode rows against their caches, prompts against
        themselves and their cached prefix, padding rows zero."""
        g, rows = self.geometry, qkv.shape[0]
        q_size, kv_size = g.heads * g.head_dim, g.kv_heads * g.head_dim
        cos, sin = rope[layer.rope]
        if layer.q_norm is not None and layer.k_norm is not None:
            q = self._norm(qkv[:, :q_size].view(rows, g.heads, g.head_dim), layer.q_norm)
            k = self._norm(qkv[:, q_size:q_size + kv_size].view(rows, g.kv_heads, g.head_dim), layer.k_norm)
            q, k = _rope(q, cos, sin, self.rotary_dim), _rope(k, cos, sin, self.rotary_dim)
        else:  # queries and keys rotated in one pass (elementwise: the same numbers as one by one)
            qk = _rope(qkv[:, :q_size + kv_size].view(rows, g.heads + g.kv_heads, g.head_dim), cos, sin,
                       self.rotary_dim)
            q, k = qk[:, :g.heads], qk[:, g.heads:]
        v = qkv[:, q_size + kv_size:].view(rows, g.kv_heads, g.head_dim)
        keys_values = torch.stack((k, v), dim=1)  # [rows, 2, kv_heads, head_dim], as a cache stores them
        pieces = []
        if batch.decode_groups:
            staged.append(keys_values[:batch.decode_count])
            pieces.append(self._grouped_decode_attention(index, q[:batch.decode_count], keys_values, batch,
                                                         layer.window))
        else:
            for row, (cache, position) in enumerate(batch.decode_caches):
                layer_cache = cache[index]
                layer_cache[:, :, position] = keys_values[row]
                pieces.append(self._decode_attention(q[row], layer_cache, position + 1, layer.window))
        for start, length, slot, past in batch.prefills:
            layer_cache = kv[slot][index]
            layer_cache[:, :, past:past + length] = keys_values[start:start + length].permute(1, 2, 0, 3)
            if past:  # the prompt's first `past` positions came from the prefix cache
                keys, values = layer_cache[0, :, :past + length], layer_cache[1, :, :past + length]
            else:
                keys, values = k[start:start + length].transpose(0, 1), v[start:start + length].transpose(0, 1)
            pieces.append(self._prefill_attention(q[start:start + length], keys, values, past, layer.window))
        if rows > batch.real_rows:
            pieces.append(q.new_zeros(rows - batch.real_rows, g.heads, g.head_dim))
        return torch.cat(pieces) if len(pieces) > 1 else pieces[0]

    def _fused_decode_attention(self, qkv: torch.Tensor, index: int, layer: LayerWeights,
                                batch: StepBatch) -> torch.Tensor | None:
        """The decode rows' attention by the kernels (serving.kernels.Products.decode_rope_attention): RoPE,
        the cache write and attention, one call per row; None where they do not compute this layer (per-head
        q/k norms, or operands they refuse), which the caller then computes itself (rewriting any cache
        position written here with the same values)."""
        assert self.kernels is not None
        if layer.q_norm is not None:
            return None
        cos, sin = self.rope[layer.rope]
        pieces = []
        for row, (cache, position) in enumerate(batch.decode_caches):
            first = 0 if layer.window is None else max(0, position + 1 - layer.window)
            out = self.kernels.decode_rope_attention(qkv[row], self.geometry.heads, cos[position], sin[position],
                                                     cache[index], position, first, self.attention_scale)
            if out is None:
                return None
            pieces.append(out)
        return torch.cat(pieces) if len(pieces) > 1 else pieces[0]

    def _linear(self, x: torch.Tensor, layer: LayerWeights, group: str, index: int, batch: StepBatch) -> torch.Tensor:
        """One module group's product for every row, with each row's adapter: IA3 input scales, the base
        product, LoRA (DoRA), the bias, IA3 output scales (which scale the bias too, as peft's do)."""
        weight, bias = layer.linear[group]
        adapters = batch.lora
        if group in batch.scaled_inputs:
            x = adapters.scale_inputs(x, index, group, batch)
        out = self._dense(x, weight)  # x already has a multiple of tile_rows rows
        if adapters is not None and (batch.decode_lora or batch.lora_prefills):
            out = adapters.apply(out, x, index, group, batch)
        if bias is not None:
            out = out + bias
        if group in batch.scaled_outputs:
            out = adapters.scale_outputs(out, index, group, batch)
        return out

    def virtual_prefix(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The keys and values of every layer at positions 0..n-1 for `n` input embeddings (prompt tuning's
        virtual tokens), [layers, 2, kv_heads, n, head_dim]: the prefix a sequence's KV cache starts with.
        Computed on a KV cache of its own, so it may run beside the engine's steps."""
        g, n = self.geometry, embeddings.shape[0]
        scratch = KVCache(layers=g.layers, kv_heads=g.kv_heads, head_dim=g.head_dim, dtype=self.dtype,
                          device=self.device, slots=1, max_context=n, budget_bytes=None, chunk=n)
        batch = build_step(self, [], [(0, [0] * n)], kv=scratch)
        batch.embeddings = [(0, embeddings.to(self.device, self.dtype))]
        with torch.inference_mode():
            self.forward(batch, kv=scratch)
        return scratch[0][:, :, :, :n].clone()

    def _decode_attention(self, q: torch.Tensor, layer_cache: torch.Tensor, length: int,
                          window: int | None) -> torch.Tensor:
        """One decode row's attention over its own sequence's first `length` cached positions (the last
        `window` of them on a sliding-window layer), read in place: q [heads, head_dim], layer_cache
        [2, kv_heads, capacity, head_dim]; returns [1, heads, head_dim]. Shapes depend only on this sequence."""
        first = 0 if window is None else max(0, length - window)
        if self.kernels is not None:
            out = self.kernels.decode_attention(q, layer_cache, first, length, self.attention_scale)
            if out is not None:
                return out
        keys = layer_cache[0, :, first:length].unsqueeze(0)
        values = layer_cache[1, :, first:length].unsqueeze(0)
        out = F.scaled_dot_product_attention(q.unsqueeze(0).unsqueeze(2), keys, values, scale=self.attention_scale,
                                             enable_gqa=True)
        return out.reshape(1, -1, q.shape[-1])

    def _grouped_decode_attention(self, index: int, q: torch.Tensor, keys_values: torch.Tensor, batch: StepBatch,
                                  window: int | None) -> torch.Tensor:
        """The decode rows' attention, rows grouped by KV length rounded up to a multiple of DECODE_BUCKET:
        a group's keys and values are copied out of the rows' caches (the step's own token set from
        `keys_values`, since caches are written after the last layer) and computed as one batched product
        per (row, KV head), whose shape depends only on the bucket, so a row's result does not depend on the
        other rows (measured bitwise-equal alone and in any group). Positions past a row's length (zeros in
        its cache) and outside a sliding window get -inf scores: exact zeros in the sum."""
        g = self.geometry
        group = g.heads // g.kv_heads
        out = torch.empty(q.shape[0], g.heads, g.head_dim, dtype=self.dtype, device=self.device)
        for group_index, (bucket, rows, row_list, mask) in enumerate(batch.decode_groups):
            if window is not None:
                mask = batch.window_masks[window][group_index]
            n = len(row_list)
            stacked = batch.group_copies.get(group_index)
            if stacked is None and n * bucket * self.kv.position_bytes <= GROUP_COPY_BYTES:
                # Every layer's buckets copied at the first layer: one stack per step instead of one per layer
                # (per-layer views of n caches cost more in Python than the copy on a small model: measured).
                stacked = torch.empty(g.layers, 2, n, g.kv_heads, bucket, g.head_dim, dtype=self.dtype,
                                      device=self.device)
                for place, row in enumerate(row_list):  # copy_ per row: torch.stack of these strided views
                    stacked[:, :, place].copy_(batch.decode_caches[row][0].narrow(3, 0, bucket))  # was 3x slower
                batch.group_copies[group_index] = stacked
            if stacked is not None:  # [layers, 2, n, kv_heads, bucket, head_dim]
                keys, values = stacked[index, 0], stacked[index, 1]
            else:
                caches = [batch.decode_caches[row][0][index] for row in row_list]
                keys = torch.stack([cache[0, :, :bucket] for cache in caches])  # [n, kv_heads, bucket, head_dim]
                values = torch.stack([cache[1, :, :bucket] for cache in caches])
            every_row = torch.arange(n, device=self.device)
            positions = batch.positions[rows]
            keys[every_row, :, positions] = keys_values[rows, 0]  # the step's own token
            values[every_row, :, positions] = keys_values[rows, 1]
            # In float32 whatever the serving dtype, as SDPA's kernels accumulate: bfloat16 scores lose the
            # digits that decide near-ties (measured: greedy parted from transformers' bfloat16 run).
            keys = keys.float().view(n * g.kv_heads, bucket, g.head_dim)
            values = values.float().view(n * g.kv_heads, bucket, g.head_dim)
            queries = q.index_select(0, rows).float().reshape(n * g.kv_heads, group, g.head_dim)
            scores = _batched_product(queries, keys.transpose(1, 2)) * self.attention_scale
            scores = scores.view(n, g.heads, bucket) + mask
            probabilities = torch.softmax(scores, dim=-1).view(n * g.kv_heads, group, bucket)
            out[rows] = _batched_product(probabilities, values).view(n, g.heads, g.head_dim).to(self.dtype)
        return out

    def _prefill_attention(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, past: int,
                           window: int | None) -> torch.Tensor:
        """A prompt's attention: q [length, heads, head_dim] for positions past..past+length-1 over keys and
        values [kv_heads, past + length, head_dim], causal (and within the layer's sliding window)."""
        length, total = q.shape[0], keys.shape[1]
        mask = None
        if past or (window is not None and length > window):
            # Key j is visible from the query at position i when j <= i (and i - window < j).
            offsets = (past + torch.arange(length, device=q.device))[:, None] - torch.arange(total, device=q.device)[None, :]
            mask = offsets >= 0
            if window is not None:
                mask &= offsets < window
        out = F.scaled_dot_product_attention(q.transpose(0, 1).unsqueeze(0), keys.unsqueeze(0), values.unsqueeze(0),
                                             attn_mask=mask, is_causal=mask is None, scale=self.attention_scale,
                                             enable_gqa=True)
        return out[0].transpose(0, 1)


@dataclass
class StepBatch:
    """The rows of one engine step (see the module docstring for their order)."""

    tokens: torch.Tensor
    positions: torch.Tensor
    padded_rows: int
    #: rows that are decode or prompt rows (the rest, up to padded_rows, are padding)
    real_rows: int
    decode_count: int
    decode_slots: torch.Tensor
    #: per decode row: its sequence's KV cache [layers, 2, kv_heads, capacity, head_dim] and its position
    decode_caches: list[tuple[torch.Tensor, int]]
    #: (first row, length, slot, positions already cached before the first row) per joining sequence
    prefills: list[tuple[int, int, int, int]]
    logit_rows: torch.Tensor
    #: the slot adapter buffers (serving.slots.SlotAdapters), or None when no adapter is loaded at all
    lora: Any = None
    #: the rank classes of the decode rows' adapters (empty: no decode row has an adapter)
    decode_lora: list[int] = field(default_factory=list)
    decode_dora: bool = False
    #: decode row i uses slot i (the engine keeps slots compact), so per-slot data are views
    decode_contiguous: bool = False
    #: the slot whose LoRA adapter every decode row runs, where the adapters compute shared products (None:
    #: per-slot products)
    decode_shared_slot: int | None = None
    lora_prefills: list[tuple[int, int, int, int]] = field(default_factory=list)
    #: IA3: the groups some row scales the inputs / outputs of, and each row's slot (padding: the spare slot,
    #: whose scales are ones); None when no row has IA3
    scaled_inputs: frozenset[str] = frozenset()
    scaled_outputs: frozenset[str] = frozenset()
    row_slots: torch.Tensor | None = None
    #: (first row, [rows, hidden]) rows whose input is these embeddings instead of their token's
    embeddings: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    #: grouped decode attention (see LlamaForward._grouped_decode_attention): (bucket, rows as a tensor, rows,
    #: additive mask [rows, 1, bucket]) per bucket; empty: each row attends alone over its own cache
    decode_groups: list[tuple[int, torch.Tensor, list[int], torch.Tensor]] = field(default_factory=list)
    #: window -> the groups' masks with positions outside that sliding window also -inf (same order)
    window_masks: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    #: group -> its rows' keys and values of every layer, copied once per step when small enough
    group_copies: dict[int, torch.Tensor] = field(default_factory=dict)
    #: (logits rows, output-layer LoRA factors) per adapter that has them among the step's rows
    unembed_rows: list[tuple[torch.Tensor, Any]] = field(default_factory=list)


def build_step(forward: LlamaForward, decode: list[tuple[int, int, int]],
               prefill: Sequence[tuple[int, list[int]] | tuple[int, list[int], int]], lora: Any = None,
               kv: KVCache | None = None, every_row: Sequence[bool] = ()) -> StepBatch:
    """decode: (slot, last token, its position) per running sequence; prefill: (slot, prompt ids) or (slot,
    the prompt's ids after its first `past` positions, past) where the slot's cache holds those already
    (cached prompt prefixes, an adapter's virtual prefix). Logits rows: one per decode row, and per prefill its
    last row, or every row of it where `every_row` says so (a prompt's own log probabilities).

    Reserves the KV memory the step writes in `kv` (default the engine's own; raises
    serving.kvcache.KVBudgetExceeded, having reserved nothing new for the slot that did not fit, when the
    budget cannot hold it)."""
    kv = forward.kv if kv is None else kv
    tokens: list[int] = []
    positions: list[int] = []
    logit_rows: list[int] = []
    #: the slot of each logits row (output-layer adapters)
    logit_slots: list[int] = []
    for slot, token, position in decode:
        kv.reserve(slot, position + 1)
        logit_slots.append(slot)
        logit_rows.append(len(tokens))
        tokens.append(token)
        positions.append(position)
    prefills = []
    for index, (slot, ids, *cached) in enumerate(prefill):
        past = cached[0] if cached else 0
        kv.reserve(slot, past + len(ids))
        prefills.append((len(tokens), len(ids), slot, past))
        if index < len(every_row) and every_row[index]:
            logit_rows.extend(range(len(tokens), len(tokens) + len(ids) - 1))
        tokens.extend(ids)
        positions.extend(range(past, past + len(ids)))
        logit_rows.append(len(tokens) - 1)
        logit_slots += [slot] * (len(logit_rows) - len(logit_slots))
    real = len(tokens)
    padded = -(-real // forward.tile_rows) * forward.tile_rows
    tokens.extend([0] * (padded - real))
    positions.extend([0] * (padded - real))
    device = forward.device
    batch = StepBatch(
        tokens=torch.tensor(tokens, device=device), positions=torch.tensor(positions, device=device),
        padded_rows=padded, real_rows=real, decode_count=len(decode),
        decode_slots=torch.tensor([slot for slot, _, _ in decode], dtype=torch.long, device=device),
        decode_caches=[(kv[slot], position) for slot, _, position in decode], prefills=prefills,
        logit_rows=torch.tensor(logit_rows, dtype=torch.long, device=device), lora=lora,
    )
    batch.decode_contiguous = all(slot == row for row, (slot, _, _) in enumerate(decode))
    # Batch-invariant serving groups decode rows (one path whatever the company; on the 64-row adapter
    # benchmark's small model, cheaper than 64 calls per layer). Unpadded, each row attends alone over its own
    # cache: on the real model, 16 rows, measured 45-47 ms per step against 51-52 ms grouped, which copies
    # every row's keys and values out of its cache.
    if decode and forward.batch_invariant:
        _group_decode_rows(forward, batch, decode)
    if lora is not None:
        batch.decode_lora = sorted({lora.slot_class[slot] for slot, _, _ in decode} - {None})
        if lora.shared_products and decode and len({lora.slot_key[slot] for slot, _, _ in decode}) == 1 \
                and lora.slot_key[decode[0][0]] is not None:
            batch.decode_shared_slot = decode[0][0]
        batch.decode_dora = any(lora.has_dora[slot] for slot, _, _ in decode)
        heads: dict[int, list[int]] = {}
        for row, slot in enumerate(logit_slots):
            if lora.unembed[slot] is not None:
                heads.setdefault(slot, []).append(row)
        batch.unembed_rows = [(torch.tensor(rows, dtype=torch.long, device=device), lora.unembed[slot])
                              for slot, rows in heads.items()]
        batch.lora_prefills = [p for p in prefills if lora.slot_class[p[2]] is not None]
        slots = [slot for slot, _, _ in decode] + [slot for _, _, slot, _ in prefills]
        batch.scaled_inputs = frozenset().union(*(lora.scaled_inputs[slot] for slot in slots))
        batch.scaled_outputs = frozenset().union(*(lora.scaled_outputs[slot] for slot in slots))
        if batch.scaled_inputs or batch.scaled_outputs:
            row_slots = [slot for slot, _, _ in decode]
            for _, length, slot, _ in prefills:
                row_slots += [slot] * length
            row_slots += [lora.spare] * (padded - real)
            batch.row_slots = torch.tensor(row_slots, dtype=torch.long, device=device)
    return batch


def _group_decode_rows(forward: LlamaForward, batch: StepBatch, decode: list[tuple[int, int, int]]) -> None:
    buckets: dict[int, list[int]] = {}
    for row, (_, _, position) in enumerate(decode):
        bucket = min(-(-(position + 1) // DECODE_BUCKET) * DECODE_BUCKET, forward.max_context)
        buckets.setdefault(bucket, []).append(row)
    device = forward.device
    batch.window_masks = {window: [] for window in forward.windows}
    for bucket, rows in sorted(buckets.items()):
        lengths = torch.tensor([decode[r][2] + 1 for r in rows])
        keys = torch.arange(bucket)[None, None, :]
        mask = torch.zeros(len(rows), 1, bucket, dtype=torch.float32)
        mask.masked_fill_(keys >= lengths[:, None, None], float("-inf"))
        batch.decode_groups.append((bucket, torch.tensor(rows, device=device), rows, mask.to(device)))
        for window, masks in batch.window_masks.items():
            # The query sits at position length - 1; keys at or before length - 1 - window are out of sight.
            masks.append(mask.masked_fill(keys <= (lengths - 1 - window)[:, None, None], float("-inf")).to(device))


def refuse_unservable(config: Any) -> None:
    """Raise InvalidRequest (400, code `unsupported_model`, param `model`) unless this forward computes what a
    model with this transformers config computes. Needs only the config, so a request can be refused before
    any weights are loaded."""
    model_type = getattr(config, "model_type", None)

    def refuse(reason: str) -> None:
        raise InvalidRequest(f"the serving engine cannot run this base model ({model_type!r}): {reason}. Training, "
                             "evals and merged export still work for it.", code="unsupported_model", param="model")

    if model_type not in SUPPORTED_MODEL_TYPES:
        refuse(f"it serves {', '.join(sorted(SUPPORTED_MODEL_TYPES))} models")
    if _activation_name(config) not in _ACTIVATIONS:
        refuse(f"its MLP activation {_activation_name(config)!r} is not one of {sorted(_ACTIVATIONS)}")
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(config, key, None) is not None:
            refuse(f"{key} is not implemented")
    if getattr(config, "use_bidirectional_attention", False):
        refuse("bidirectional attention is not causal decoding")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    # gemma3 keeps one set of RoPE parameters per layer type.
    for parameters in (rope.values() if all(isinstance(v, dict) for v in rope.values()) and rope else [rope]):
        kind = parameters.get("rope_type", parameters.get("type"))
        if kind in _DYNAMIC_ROPE_TYPES:
            refuse(f"{kind!r} RoPE scaling changes its angles with the sequence length")


def _activation_name(config: Any) -> str:
    return getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", "silu")


def layer_windows(config: Any, max_context: int) -> list[int | None]:
    """Each decoder layer's sliding window, or None for full attention (a window that cannot bind within
    `max_context` positions is None too). transformers' convention: `layer_types` names each layer's
    attention where the config has it (qwen2, qwen3); mistral's `sliding_window` applies to every layer."""
    window = getattr(config, "sliding_window", None)
    layers = config.num_hidden_layers
    types = getattr(config, "layer_types", None)
    if types:
        windows = [window if kind == "sliding_attention" else None for kind in types]
    elif getattr(config, "model_type", None) in _ALL_LAYERS_WINDOWED:
        windows = [window] * layers
    else:
        windows = [None] * layers
    return [w if w is not None and w < max_context else None for w in windows]


def _batched_product(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """`torch.bmm`, but never with a batch of one: that case is dispatched to a plain matrix product,
    which rounds differently for some shapes (measured), and a row's result must not depend on how many
    rows share its batch."""
    if left.shape[0] != 1:
        return torch.bmm(left, right)
    return torch.bmm(torch.cat([left, left]), torch.cat([right, right]))[:1]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm: normalised in float32, cast back, then scaled. torch's fused rms_norm for the first
    part: bitwise what the unfused float32 expression gives (tested against transformers), in fewer ops."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """RoPE on the first `rotary_dim` dimensions of each head (all of them but for partial rotary models).
    Rolling by half swaps the halves; the sign of rotate_half lives in `signed_sin` (a product's sign flip is
    exact), so this is transformers' result in 4 operations instead of 7."""
    if rotary_dim == x.shape[-1]:
        return x * cos + x.roll(rotary_dim // 2, dims=-1) * signed_sin
    rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat((rotated * cos + rotated.roll(rotary_dim // 2, dims=-1) * signed_sin, passed), dim=-1)


def _pad_rows(x: torch.Tensor, tile: int) -> torch.Tensor:
    padded = -(-x.shape[0] // tile) * tile
    if padded == x.shape[0]:
        return x
    return torch.cat([x, x.new_zeros(padded - x.shape[0], *x.shape[1:])])
