"""A batch-invariant forward pass for Llama-family decoders with per-row LoRA, over a slot KV cache.

The weights are the Hugging Face model's own tensors (q/k/v and gate/up fused by concatenation, nothing
copied twice); the computation is ours, because it has to meet a bar the stock forward does not:

    A row's result depends only on that row: its token, its position, its sequence's KV cache and its
    adapter. Never on which other rows share the batch, how many there are, or where the row sits.

That is what makes a greedy completion token-identical alone or in any mixed batch. On CPU (and on GPU) a
matrix product picks its kernel, and with it the order of its floating-point sums, from the shape of the
operands: a 1-row product (gemv) and a 7-row product round differently (measured: up to 2e-5 apart). So:

* every product over rows runs on a row count padded to a multiple of `tile_rows` (fixed-shape tiles give
  per-row results independent of the batch; measured bitwise-equal across 64..512 rows);
* LoRA runs as a batched product with one matrix pair per row (`bmm`: each row is its own problem), on a
  fixed padded rank, because a product's result also depends on its inner and outer sizes;
* decode attention is elementwise products and reductions over the KV length padded to a multiple of 64,
  where a padded position contributes an exact zero (the matmul form was measured to round differently);
* prefill attention runs per sequence, so its shape depends only on that sequence.

Rows are ordered: decode rows (one per running sequence), then the prompt tokens of joining sequences,
then padding. The padding rows write their keys and values into a scratch slot that nothing reads.

One file on purpose (~480 lines): the forward pass of every served family, whose per-family differences
(norms, scales, RoPE tables, activations) are small switches on one code path that must stay side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from contracts.errors import InvalidRequest

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


def module_groups(model_type: str | None) -> dict[str, tuple[str, ...]]:
    """group -> the model's module names computed in it (the names adapters target)."""
    return FUSED_GROUPS if model_type == "phi3" else GROUPS
ATTENTION_PAD = 256


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
    """Owns the base weights of one model, a slot KV cache and a stack of resident adapters."""

    def __init__(self, model: Any, *, max_slots: int, max_context: int, tile_rows: int) -> None:
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
        self.gemma_norm = model_type in _GEMMA_NORM_TYPES
        self.embed = inner.embed_tokens.weight.detach()
        scale = getattr(inner.embed_tokens, "embed_scale", None)
        #: gemma3 multiplies embeddings by sqrt(hidden), rounded to the weights' dtype as transformers does.
        self.embed_scale = scale.detach().to(self.dtype) if isinstance(scale, torch.Tensor) else None
        self.final_norm = self._norm_weight(inner.norm.weight)
        self.lm_head = model.get_output_embeddings().weight.detach()
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
                weight = weights[0] if len(weights) == 1 else torch.cat(weights, 0)
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
        #: (cos, sin) [max_context, rotary_dim] per table.
        self.rope: list[tuple[torch.Tensor, torch.Tensor]] = []
        for inv_freq, scaling in tables:
            freqs = positions[:, None] * inv_freq.float().to(self.device)[None, :]
            angles = torch.cat((freqs, freqs), dim=-1)
            self.rope.append(((angles.cos() * scaling).to(self.dtype), (angles.sin() * scaling).to(self.dtype)))
        #: Leading dimensions of each head that RoPE rotates (partial rotary embeddings rotate fewer).
        self.rotary_dim = 2 * tables[0][0].shape[0]

        self.max_slots = max_slots
        self.max_context = max_context
        self.tile_rows = tile_rows
        #: tile_rows 1: products on the rows there are (serving's default); batch invariance needs tiles
        self.batch_invariant = tile_rows > 1
        g = self.geometry
        # One extra slot (index max_slots) is scratch for padding rows.
        shape = (g.layers, max_slots + 1, g.kv_heads, max_context, g.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.scratch_slot = max_slots

    def _norm_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """A norm's multiplier as `_norm` uses it: the weight, or Gemma's float32 (1 + weight)."""
        return 1.0 + weight.detach().float() if self.gemma_norm else weight.detach()

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm as the family computes it: Llama casts to the input dtype then multiplies; Gemma
        multiplies in float32, then casts."""
        eps = self.geometry.eps
        if not self.gemma_norm:
            return _rms_norm(x, weight, eps)
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight).to(x.dtype)

    def move_slot(self, source: int, target: int, *, length: int) -> None:
        """Copy a sequence's cached keys and values (its first `length` positions) to another slot."""
        self.k_cache[:, target, :, :length] = self.k_cache[:, source, :, :length]
        self.v_cache[:, target, :, :length] = self.v_cache[:, source, :, :length]

    # ------------------------------------------------------------------------------------ sizes
    def group_dims(self) -> dict[str, tuple[int, int]]:
        """group -> (input features, total output features)."""
        return {group: (fan_in, sum(outs)) for group, (fan_in, outs) in self.geometry.groups.items()}

    # ---------------------------------------------------------------------------------- forward
    def forward(self, batch: StepBatch) -> torch.Tensor:
        """Run one engine step; returns float32 logits, one row per sequence in `batch.logit_rows`."""
        g = self.geometry
        rows = batch.padded_rows
        x = self.embed[batch.tokens]
        if self.embed_scale is not None:
            x = x * self.embed_scale
        rope = [(cos[batch.positions].unsqueeze(1), sin[batch.positions].unsqueeze(1)) for cos, sin in self.rope]
        for index, layer in enumerate(self.layers):
            h = self._norm(x, layer.input_norm)
            qkv = self._linear(h, layer, "qkv", index, batch)
            q_size, kv_size = g.heads * g.head_dim, g.kv_heads * g.head_dim
            q = qkv[:, :q_size].view(rows, g.heads, g.head_dim)
            k = qkv[:, q_size:q_size + kv_size].view(rows, g.kv_heads, g.head_dim)
            v = qkv[:, q_size + kv_size:].view(rows, g.kv_heads, g.head_dim)
            if layer.q_norm is not None and layer.k_norm is not None:
                q, k = self._norm(q, layer.q_norm), self._norm(k, layer.k_norm)
            cos, sin = rope[layer.rope]
            q, k = _rope(q, cos, sin, self.rotary_dim), _rope(k, cos, sin, self.rotary_dim)
            self.k_cache[index, batch.slots, :, batch.positions] = k
            self.v_cache[index, batch.slots, :, batch.positions] = v
            attended = torch.zeros(rows, g.heads, g.head_dim, dtype=self.dtype, device=self.device)
            if batch.decode_count:
                attended[:batch.decode_count] = self._decode_attention(index, q[:batch.decode_count], batch,
                                                                       layer.window)
            for start, length, slot in batch.prefills:
                attended[start:start + length] = self._prefill_attention(q[start:start + length],
                                                                         k[start:start + length],
                                                                         v[start:start + length], layer.window)
            out = self._linear(attended.view(rows, -1), layer, "o", index, batch)
            if layer.attention_out_norm is not None:
                out = self._norm(out, layer.attention_out_norm)
            x = x + out
            h = self._norm(x, layer.post_norm)
            gate_up = self._linear(h, layer, "gate_up", index, batch)
            gate, up = gate_up.chunk(2, dim=-1)
            out = self._linear(self.activation(gate) * up, layer, "down", index, batch)
            if layer.mlp_out_norm is not None:
                out = self._norm(out, layer.mlp_out_norm)
            x = x + out
        last = x[batch.logit_rows]
        last = self._norm(_pad_rows(last, self.tile_rows), self.final_norm)
        return F.linear(last, self.lm_head)[:len(batch.logit_rows)].float()

    def _linear(self, x: torch.Tensor, layer: LayerWeights, group: str, index: int, batch: StepBatch) -> torch.Tensor:
        weight, bias = layer.linear[group]
        out = F.linear(x, weight)  # x already has a multiple of tile_rows rows
        if batch.lora is not None and (batch.decode_lora or batch.lora_prefills):
            out = batch.lora.apply(out, x, index, group, batch)
        if bias is not None:
            out = out + bias
        return out

    def _decode_attention(self, index: int, q: torch.Tensor, batch: StepBatch, window: int | None) -> torch.Tensor:
        """Each decode row attends over its own KV length rounded up to a multiple of 64 (its bucket).

        Rows are grouped by bucket; a group is one batched product per (row, KV head), whose shape depends
        only on the bucket, so a row's result does not depend on the other rows (measured bitwise-equal alone
        and in any group). Padded positions get -inf scores, so they contribute exact zeros; so do positions
        outside a sliding window (`window`: the layer's, or None).
        """
        g = self.geometry
        group = g.heads // g.kv_heads
        out = torch.empty(q.shape[0], g.heads, g.head_dim, dtype=self.dtype, device=self.device)
        for group_index, (bucket, rows, slots, mask) in enumerate(batch.attention_groups):
            if window is not None:
                mask = batch.window_masks[window][group_index]
            n = slots.shape[0]
            first = batch.contiguous_groups[group_index] if not self.batch_invariant else None
            if first is not None:
                # The group's slots are consecutive: views of the cache, no gather (the gather copied every
                # key and value of the bucket per layer: the largest cost of an unpadded decode step).
                keys = self.k_cache[index, first:first + n, :, :bucket].reshape(n * g.kv_heads, bucket, g.head_dim)
                values = self.v_cache[index, first:first + n, :, :bucket].reshape(n * g.kv_heads, bucket, g.head_dim)
            else:  # a gather gives every row the same memory layout whatever its neighbours (batch invariance)
                keys = self.k_cache[index, :, :, :bucket].index_select(0, slots).reshape(
                    n * g.kv_heads, bucket, g.head_dim)
                values = self.v_cache[index, :, :, :bucket].index_select(0, slots).reshape(
                    n * g.kv_heads, bucket, g.head_dim)
            queries = q.index_select(0, rows).reshape(n * g.kv_heads, group, g.head_dim)
            scores = batched_product(queries, keys.transpose(1, 2)) * self.attention_scale
            scores = scores.view(n, g.heads, bucket).float() + mask
            probabilities = torch.softmax(scores, dim=-1).to(self.dtype).view(n * g.kv_heads, group, bucket)
            out[rows] = batched_product(probabilities, values).view(n, g.heads, g.head_dim)
        return out

    def _prefill_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           window: int | None) -> torch.Tensor:
        length = q.shape[0]
        mask = None
        if window is not None and length > window:
            # Causal and within the window: key j is visible from query i when i - window < j <= i.
            offsets = torch.arange(length, device=q.device)[:, None] - torch.arange(length, device=q.device)[None, :]
            mask = (offsets >= 0) & (offsets < window)
        out = F.scaled_dot_product_attention(q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0),
                                             v.transpose(0, 1).unsqueeze(0), attn_mask=mask,
                                             is_causal=mask is None, scale=self.attention_scale,
                                             enable_gqa=True)
        return out[0].transpose(0, 1)


@dataclass
class StepBatch:
    """The rows of one engine step (see the module docstring for their order)."""

    tokens: torch.Tensor
    positions: torch.Tensor
    slots: torch.Tensor
    padded_rows: int
    decode_count: int
    decode_slots: torch.Tensor
    #: (bucket, decode rows, their slots, additive mask [rows, 1, bucket]) per KV-length bucket
    attention_groups: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]
    #: window -> the groups' masks with positions outside that sliding window also -inf (same order)
    window_masks: dict[int, list[torch.Tensor]]
    #: (first row, length, slot) per joining sequence
    prefills: list[tuple[int, int, int]]
    logit_rows: torch.Tensor
    #: the slot adapter buffers (serving.lora.SlotLora), or None when no adapter is loaded at all
    lora: Any = None
    #: the rank classes of the decode rows' adapters (empty: no decode row has an adapter)
    decode_lora: list[int] = field(default_factory=list)
    decode_dora: bool = False
    #: decode row i uses slot i (the engine keeps slots compact), so per-slot data are views
    decode_contiguous: bool = False
    lora_prefills: list[tuple[int, int, int]] = field(default_factory=list)
    #: per attention group: its first slot when its slots are consecutive (a view of the cache), else None
    contiguous_groups: list[int | None] = field(default_factory=list)


def build_step(forward: LlamaForward, decode: list[tuple[int, int, int]], prefill: list[tuple[int, list[int]]],
               lora: Any = None) -> StepBatch:
    """decode: (slot, last token, its position) per running sequence; prefill: (slot, prompt ids)."""
    tokens: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    logit_rows: list[int] = []
    for slot, token, position in decode:
        logit_rows.append(len(tokens))
        tokens.append(token)
        positions.append(position)
        slots.append(slot)
    prefills = []
    for slot, ids in prefill:
        prefills.append((len(tokens), len(ids), slot))
        tokens.extend(ids)
        positions.extend(range(len(ids)))
        slots.extend([slot] * len(ids))
        logit_rows.append(len(tokens) - 1)
    real = len(tokens)
    padded = -(-real // forward.tile_rows) * forward.tile_rows
    tokens.extend([0] * (padded - real))
    positions.extend([0] * (padded - real))
    slots.extend([forward.scratch_slot] * (padded - real))
    device = forward.device
    buckets: dict[int, list[int]] = {}
    for row, (_, _, position) in enumerate(decode):
        bucket = min(-(-(position + 1) // ATTENTION_PAD) * ATTENTION_PAD, forward.max_context)
        buckets.setdefault(bucket, []).append(row)
    groups = []
    contiguous: list[int | None] = []
    window_masks: dict[int, list[torch.Tensor]] = {window: [] for window in forward.windows}
    for bucket, rows in sorted(buckets.items()):
        group_slots = [decode[r][0] for r in rows]
        contiguous.append(group_slots[0] if group_slots == list(range(group_slots[0], group_slots[0] + len(rows)))
                          else None)
        lengths = torch.tensor([decode[r][2] + 1 for r in rows])
        keys = torch.arange(bucket)[None, None, :]
        mask = torch.zeros(len(rows), 1, bucket, dtype=torch.float32)
        mask.masked_fill_(keys >= lengths[:, None, None], float("-inf"))
        groups.append((bucket, torch.tensor(rows, device=device), torch.tensor([decode[r][0] for r in rows],
                                                                                device=device), mask.to(device)))
        for window, masks in window_masks.items():
            # The query sits at position length - 1; keys at or before length - 1 - window are out of sight.
            masks.append(mask.masked_fill(keys <= (lengths - 1 - window)[:, None, None], float("-inf")).to(device))
    batch = StepBatch(
        tokens=torch.tensor(tokens, device=device), positions=torch.tensor(positions, device=device),
        slots=torch.tensor(slots, device=device), padded_rows=padded, decode_count=len(decode),
        decode_slots=torch.tensor([slot for slot, _, _ in decode], dtype=torch.long, device=device),
        attention_groups=groups, window_masks=window_masks, prefills=prefills,
        logit_rows=torch.tensor(logit_rows, dtype=torch.long, device=device), lora=lora,
    )
    batch.decode_contiguous = all(slot == row for row, (slot, _, _) in enumerate(decode))
    batch.contiguous_groups = contiguous
    if lora is not None:
        batch.decode_lora = sorted({lora.slot_class[slot] for slot, _, _ in decode} - {None})
        batch.decode_dora = any(lora.has_dora[slot] for slot, _, _ in decode)
        batch.lora_prefills = [p for p in prefills if lora.slot_class[p[2]] is not None]
    return batch


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


def batched_product(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """`torch.bmm`, but never with a batch of one: that case is dispatched to a plain matrix product,
    which rounds differently for some shapes (measured), and a row's result must not depend on how many
    rows share its batch."""
    if left.shape[0] != 1:
        return torch.bmm(left, right)
    return torch.bmm(torch.cat([left, left]), torch.cat([right, right]))[:1]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """RoPE on the first `rotary_dim` dimensions of each head (all of them but for partial rotary models)."""
    if rotary_dim == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat((rotated * cos + _rotate_half(rotated) * sin, passed), dim=-1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _pad_rows(x: torch.Tensor, tile: int) -> torch.Tensor:
    padded = -(-x.shape[0] // tile) * tile
    if padded == x.shape[0]:
        return x
    return torch.cat([x, x.new_zeros(padded - x.shape[0], *x.shape[1:])])
