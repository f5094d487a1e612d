"""Keys and values of running sequences: memory that grows with what each sequence holds, under a budget.

Each occupied slot owns one tensor `[layers, 2 (keys, values), kv_heads, capacity, head_dim]`. Its capacity
starts at the prompt rounded up to `chunk` positions and doubles when the sequence outgrows it (one copy;
over a sequence's life the copies add up to less than its final size), capped at the context limit. So an
engine configured for 8k-32k contexts allocates nothing up front, a short chat holds a few hundred
positions, and a long one holds what it reached (at most 2x, the price of growing by doubling).

Why one contiguous tensor per sequence rather than fixed-size pages shared through block tables (vLLM's
paged attention): decode attention here is PyTorch's scaled_dot_product_attention on each sequence's own
view of its keys and values, with no paged-attention kernel on the CPU to read scattered pages. Pages
would have to be gathered into a contiguous copy on every layer of every step, which measured 2x the cost
of the attention itself at 8k positions (docs/benchmarks.md, "Measurements behind code comments"); a
contiguous tensor is read in place (docs/serving.md).

Every allocation counts against `budget_bytes`; `reserve` says no rather than exceed it, and the engine
then waits (a joining sequence) or preempts (a running one). Not thread-safe: the engine thread owns it.
"""

from __future__ import annotations

import torch


class KVBudgetExceeded(Exception):
    """A sequence needs more key/value memory than the budget has left."""


class KVCache:
    def __init__(self, *, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                 slots: int, max_context: int, budget_bytes: int | None, chunk: int = 256) -> None:
        """`budget_bytes` None: every slot may reach `max_context`. `max_context` is capped at what the budget
        holds for one sequence alone, so a lone sequence always fits."""
        self.shape = (layers, 2, kv_heads, head_dim)
        self.dtype = dtype
        self.device = device
        self.chunk = chunk
        #: bytes one position of one sequence takes (keys and values of every layer)
        self.position_bytes = layers * 2 * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()
        self.budget_bytes = budget_bytes if budget_bytes is not None else slots * max_context * self.position_bytes
        self.max_context = min(max_context, self.budget_bytes // self.position_bytes)
        self.used_bytes = 0
        #: slot -> its sequence's keys and values, or None for a free slot
        self.slots: list[torch.Tensor | None] = [None] * slots

    # ------------------------------------------------------------------------------ capacity
    def capacity_for(self, positions: int) -> int:
        """The capacity a sequence holding `positions` gets: a chunk, doubled until it fits, capped."""
        capacity = self.chunk
        while capacity < positions:
            capacity *= 2
        return max(min(capacity, self.max_context), positions)

    def capacity(self, slot: int) -> int:
        held = self.slots[slot]
        return 0 if held is None else held.shape[3]

    def reserve(self, slot: int, positions: int) -> None:
        """Make `slot` hold at least `positions` positions, keeping what it holds. Raises KVBudgetExceeded
        (and changes nothing) when the budget cannot cover the growth."""
        held = self.slots[slot]
        if held is not None and held.shape[3] >= positions:
            return
        capacity = self.capacity_for(positions)
        old = 0 if held is None else held.shape[3]
        grow = (capacity - old) * self.position_bytes
        if self.used_bytes + grow > self.budget_bytes:
            raise KVBudgetExceeded(f"slot {slot} needs {positions} positions")
        layers, pair, kv_heads, head_dim = self.shape
        # Zeros, not empty: grouped decode attention reads whole buckets of positions, masking what lies past
        # a sequence's length, and a masked score must be 0 + -inf, never NaN from uninitialised memory.
        tensor = torch.zeros(layers, pair, kv_heads, capacity, head_dim, dtype=self.dtype, device=self.device)
        if held is not None:
            tensor[:, :, :, :old] = held
        self.slots[slot] = tensor
        self.used_bytes += grow

    def release(self, slot: int) -> None:
        held = self.slots[slot]
        if held is not None:
            self.used_bytes -= held.shape[3] * self.position_bytes
            self.slots[slot] = None

    def move(self, source: int, target: int) -> None:
        """Give `target` the keys and values of `source` (no copy: the tensor changes hands)."""
        self.release(target)
        self.slots[target], self.slots[source] = self.slots[source], None

    def __getitem__(self, slot: int) -> torch.Tensor:
        held = self.slots[slot]
        if held is None:
            raise KeyError(f"slot {slot} holds no keys and values")
        return held


class PrefixCache:
    """Keys and values of prompt prefixes already computed, so that a prompt starting the same way (one system
    prompt, an eval suite's instructions) computes only what follows. Measured on the real model: a
    200-token system prompt shared by 64 requests of 32 tokens made prefill 35 % of the run, 28 % of which a
    cache saves; the chat template's own 26 shared tokens, 6 % (docs/serving.md).

    Entries are whole blocks of `block` positions, keyed by the adapter (an adapter changes keys and values)
    and every token before the block's end, compared exactly (a nested tuple key: dict equality, never a
    hash alone). One stored tensor serves every block boundary within it. Least recently used tensors are
    evicted beyond `budget_bytes`. Results with a cached prefix may differ from a full prefill in the last
    bits (other product shapes), so batch-invariant serving never uses it. Engine thread only.
    """

    def __init__(self, *, position_bytes: int, budget_bytes: int, block: int = 64) -> None:
        self.position_bytes = position_bytes
        self.budget_bytes = budget_bytes
        self.block = block
        self.used_bytes = 0
        #: key of a block boundary -> (stored tensor id, positions up to that boundary)
        self._boundaries: dict[tuple[object, ...], tuple[int, int]] = {}
        #: stored tensor id -> (tensor [layers, 2, kv_heads, positions, head_dim], its boundary keys); LRU order
        self._stored: dict[int, tuple[torch.Tensor, list[tuple[object, ...]]]] = {}
        self._next_id = 0
        self.hits = 0
        self.positions_saved = 0

    def _keys(self, adapter: str | None, ids: list[int], blocks: int) -> list[tuple[object, ...]]:
        keys: list[tuple[object, ...]] = []
        key: tuple[object, ...] = (adapter,)
        for index in range(blocks):
            key = (key, tuple(ids[index * self.block:(index + 1) * self.block]))
            keys.append(key)
        return keys

    def lookup(self, adapter: str | None, ids: list[int]) -> tuple[int, torch.Tensor | None]:
        """The longest stored prefix of `ids` (leaving at least one position to compute): (positions, a view of
        its keys and values), or (0, None)."""
        if self.budget_bytes <= 0:
            return 0, None
        keys = self._keys(adapter, ids, (len(ids) - 1) // self.block)
        for key in reversed(keys):
            found = self._boundaries.get(key)
            if found is not None:
                stored_id, positions = found
                tensor, boundary_keys = self._stored.pop(stored_id)
                self._stored[stored_id] = (tensor, boundary_keys)  # most recently used
                self.hits += 1
                self.positions_saved += positions
                return positions, tensor[:, :, :, :positions]
        return 0, None

    def store(self, adapter: str | None, ids: list[int], cache: torch.Tensor) -> None:
        """Keep the whole blocks of a prompt whose keys and values `cache` holds, unless stored already."""
        blocks = (len(ids) - 1) // self.block
        positions = blocks * self.block
        if blocks == 0 or self.budget_bytes < positions * self.position_bytes:
            return
        keys = self._keys(adapter, ids, blocks)
        if keys[-1] in self._boundaries:
            return
        tensor = cache[:, :, :, :positions].clone()
        self._next_id += 1
        self._stored[self._next_id] = (tensor, keys)
        for index, key in enumerate(keys):
            self._boundaries.setdefault(key, (self._next_id, (index + 1) * self.block))
        self.used_bytes += positions * self.position_bytes
        while self.used_bytes > self.budget_bytes:
            self._evict(next(iter(self._stored)))

    def _evict(self, stored_id: int) -> None:
        tensor, keys = self._stored.pop(stored_id)
        self.used_bytes -= tensor.shape[3] * self.position_bytes
        for key in keys:
            if self._boundaries.get(key, (None,))[0] == stored_id:
                del self._boundaries[key]

