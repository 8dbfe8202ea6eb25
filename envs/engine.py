"""The execution side of the MDP: which rows go through the dLLM together, and the Fast-dLLM KV caches.

The MDP (envs.mdp) owns the rules: state, legal decisions, NFE, the block budget. It asks this engine for the
logits of its active rows; the engine decides how to compute them:
- Rows that hold the same sequence (the G members of a group on their fully masked canvas, or any members
  still identical later) go through one forward; the MDP still counts an NFE for each of them, the engine
  counts the forwards it really ran (`stats`).
- Fast-dLLM's caches (`kv_cache=prefix|dual`, native models): the first forward of a block is a full one that
  stores every layer's keys and values; the block's later forwards attend to them instead of recomputing them.
  `prefix` feeds the current block and everything after it (the prompt and finished blocks come from the cache);
  `dual` feeds only the current block (the later, still masked blocks come from the cache too). Rows in
  different blocks are forwarded in groups, each row exactly as it would be alone.
The MDP passes its attention mask only when some row of its batch is padded (it knows from its layout, without
reading the device); otherwise None, and the dLLM gets no mask: no host sync, and SDPA may use its flash kernel.
Device placement is the adapter's (`DLLM`: one device, or `device_map` over an actor's GPUs); cache rows are
moved to each layer's device.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from unmask.envs.dllm import DLLM


@dataclass
class EngineStats:
    """What the engine really ran (the MDP's NFE counts one forward per active row per step)."""

    forwards: int = 0  # dLLM calls
    rows: int = 0  # rows they computed (shared rows once)
    tokens: int = 0  # tokens they fed

    @property
    def rows_per_forward(self) -> float:
        return self.rows / max(1, self.forwards)


class ForwardEngine:
    def __init__(self, dllm: DLLM, gen_length: int, block_length: int, kv_cache: str = "none"):
        if kv_cache != "none" and not dllm.supports_kv_cache:
            raise ValueError(f"env.kv_cache={kv_cache} needs a native LLaDA or Dream model; {dllm.name!r} is not one")
        self.dllm, self.L, self.BL, self.kv_cache = dllm, gen_length, block_length, kv_cache
        self.stats = EngineStats()
        self.reset(0)

    def reset(self, n_rows: int) -> None:
        self.kv = None  # per layer (keys, values) [rows, kv_heads, prompt + L, head_dim]
        self.cached_block = torch.full((n_rows,), -1, dtype=torch.long, device=self.dllm.device)

    def forget(self, rows: torch.Tensor) -> None:
        """New trajectories in these rows: their next forward is a full one (a cache refresh)."""
        self.cached_block[rows] = -1

    def logits(self, ids: torch.Tensor, attn: torch.Tensor | None, active: torch.Tensor, block_index: torch.Tensor,
               hidden: bool = False) -> Iterator[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor | None]]:
        """(rows, first canvas column, logits of the columns it covers [len(rows), cols, V], and with `hidden` the
        last hidden state of those columns [len(rows), cols, d] from the same forward, else None) for every group of
        active rows forwarded together; rows that share a sequence share one forward. `attn` None: no row is
        padded (the model then gets no mask)."""
        if not active.any():
            return
        if self.kv_cache == "none":
            rows = active.nonzero(as_tuple=True)[0]
            out = self._shared(ids, attn, rows, lambda r: self.dllm.logits(ids[r], pick(attn, r), last=self.L,
                                                                          hidden=hidden))
            yield rows, 0, *(out if hidden else (out, None))
            return
        prompt_width = ids.shape[1] - self.L
        refresh = active & (self.cached_block != block_index)
        for cached in (False, True):
            group = active & (~refresh if cached else refresh)
            for block in block_index[group].unique().tolist():
                rows = (group & (block_index == block)).nonzero(as_tuple=True)[0]
                start = prompt_width + block * self.BL
                out = self._cached(ids, attn, rows, start, hidden) if cached else self._refresh(ids, attn, rows, block,
                                                                                                 hidden)
                yield rows, block * self.BL if cached else 0, *(out if hidden else (out, None))

    # ---- forwards -------------------------------------------------------------------------------------
    def _unique(self, ids, attn, rows) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(rows holding distinct sequences, for each of `rows` the index of its own among them); None when
        every row is distinct."""
        if len(rows) == 1:
            return rows, None
        seqs = ids[rows] if attn is None else torch.cat([ids[rows], attn[rows]], dim=1)
        distinct, inverse = torch.unique(seqs, dim=0, return_inverse=True)
        count = len(distinct)  # known to the host once unique returns: no second read of the device
        if count == len(rows):
            return rows, None
        order = torch.arange(len(rows), device=rows.device)
        first = torch.full((count,), len(rows), dtype=torch.long, device=rows.device)
        return rows[first.scatter_reduce(0, inverse, order, reduce="amin")], inverse

    def _shared(self, ids, attn, rows, forward):
        """forward(unique rows) -> logits or (logits, hidden), spread back over `rows`."""
        unique, inverse = self._unique(ids, attn, rows)
        self._count(len(unique), ids.shape[1])
        out = forward(unique)
        if inverse is None:
            return out
        return tuple(x[inverse] for x in out) if isinstance(out, tuple) else out[inverse]

    def _refresh(self, ids, attn, rows, block: int, hidden: bool = False):
        """A full forward that also stores every position's keys and values for the block's later steps."""
        n = len(self.cached_block)
        if len(rows) == n:
            self.kv = None  # free the old cache before the new one is built
        unique, inverse = self._unique(ids, attn, rows)
        self._count(len(unique), ids.shape[1])
        *outputs, cache = self.dllm.logits_and_cache(ids[unique], pick(attn, unique), last=self.L, hidden=hidden)
        if inverse is not None:  # a shared forward: each row takes its sequence's logits and cache
            outputs = [x[inverse] for x in outputs]
            cache = [(k[inverse.to(k.device)], v[inverse.to(v.device)]) for k, v in cache]
        if len(rows) == n:
            self.kv = cache
        else:
            if self.kv is None:
                self.kv = [(k.new_zeros(n, *k.shape[1:]), v.new_zeros(n, *v.shape[1:])) for k, v in cache]
            for (k_all, v_all), (k, v) in zip(self.kv, cache):
                layer_rows = rows.to(k_all.device)  # device_map: layers may live on other GPUs
                k_all[layer_rows], v_all[layer_rows] = k, v
        self.cached_block[rows] = block
        return tuple(outputs) if hidden else outputs[0]

    def _cached(self, ids, attn, rows, start: int, hidden: bool = False):
        keep = slice(None) if self.kv_cache == "dual" else slice(0, start)  # prefix: copy no more than is used
        cache = [(take(k[:, :, keep], rows), take(v[:, :, keep], rows)) for k, v in self.kv]
        end = start + self.BL if self.kv_cache == "dual" else None
        self._count(len(rows), (end or ids.shape[1]) - start)
        return self.dllm.logits_with_cache(ids[rows], pick(attn, rows), cache, start, end, hidden=hidden)

    def _count(self, rows: int, tokens: int) -> None:
        self.stats.forwards += 1
        self.stats.rows += rows
        self.stats.tokens += rows * tokens


def pick(attn: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    """The mask's rows; None (no padding anywhere) stays None."""
    return None if attn is None else attn[rows]


def take(tensor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows of a cache tensor; the tensor itself (no copy) when every row is wanted."""
    return tensor if len(rows) == tensor.shape[0] else tensor[rows.to(tensor.device)]
