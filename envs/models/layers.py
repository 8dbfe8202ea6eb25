"""Building blocks shared by the native LLaDA and Dream implementations: RMSNorm, rotary embeddings,
bidirectional attention with an optional key/value prefix cache, and the SwiGLU feed-forward.

Numerics follow the released modeling code (read, not copied): RMSNorm normalises in float32, casts
back, then multiplies by its weight; RoPE is rotate-half (Llama/NeoX) with float32 frequencies; attention
is scaled dot-product without a causal mask. Padding is handled by masking padded *keys* only: real
positions then see exactly what they would see unpadded, and padded query rows stay finite (every row has
real keys: the canvas is never padding, so no NaN can leak through them).

The mask is built without reading the device: a batch without padding comes with `attention_mask=None`
(the adapter knows, it laid the batch out) and SDPA may use its flash kernel; a 2D padding mask becomes a
boolean key mask (its memory-efficient kernel), not an additive float one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values [B, kv_heads, N, head_dim], keys after RoPE
KVCache = list[KV]  # one per layer


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotary_tables(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, 1, N, head_dim] in float32 for integer positions [B, N]. Computed per call (no buffers:
    nothing to go stale when a checkpoint is loaded on the meta device)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32)
                                / head_dim))
    freqs = position_ids.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, full_precision: bool) -> torch.Tensor:
    """LLaDA rotates in float32 then casts back (`rope_full_precision`); Dream casts cos/sin to the model dtype."""
    if full_precision:
        return (x.float() * cos + rotate_half(x.float()) * sin).to(x.dtype)
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


def key_padding_mask(attention_mask: torch.Tensor | str | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The `attn_mask` SDPA gets. A 2D padding mask [B, N_keys] becomes a boolean [B, 1, 1, N_keys] (True =
    attend): each row's real keys (at least its canvas) stay visible to every query, so no row is fully
    masked. A 4D boolean [B, 1, N_queries, N_keys] mask (Dream's pairwise form) may hide whole (padded) query
    rows, so it stays additive with a finite minimum instead of -inf, which keeps those rows finite.
    None/"full": no mask. Nothing here reads the device (no `.all()`): a caller without padding passes None."""
    if attention_mask is None or isinstance(attention_mask, str):
        return None
    if attention_mask.dim() == 4:
        hide = ~attention_mask.bool()
        return torch.zeros(hide.shape, dtype=dtype, device=hide.device).masked_fill(hide, torch.finfo(dtype).min)
    return attention_mask.bool()[:, None, None, :]


class Attention(nn.Module):
    """Bidirectional multi-head attention (GQA when kv_heads < heads). The projection names are passed in
    so that each architecture keeps its checkpoint's parameter names."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, bias: bool, full_precision_rope: bool):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        self.full_precision_rope = full_precision_rope
        self.q_proj = nn.Linear(hidden, heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=bias)

    def attend(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
               past: KV | None, replace_at: int | None = None) -> tuple[torch.Tensor, KV]:
        """Attention output before the output projection, and this call's full keys/values. With `past` the
        fed positions follow the cached ones (prefix cache), or, with `replace_at`, take the place of the
        cached positions replace_at.. inside a cache of the whole sequence (dual cache)."""
        B, N, _ = x.shape
        q = self.q_proj(x).view(B, N, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, N, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, N, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rope
        q = apply_rotary(q, cos, sin, self.full_precision_rope)
        k = apply_rotary(k, cos, sin, self.full_precision_rope)
        if past is not None and replace_at is not None:  # cached keys are already rotated at their positions
            past[0][:, :, replace_at:replace_at + N] = k  # in place, as Fast-dLLM: no second copy of the cache
            past[1][:, :, replace_at:replace_at + N] = v
            k, v = past
        elif past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        groups = self.heads // self.kv_heads
        k_all = k.repeat_interleave(groups, dim=1) if groups > 1 else k
        v_all = v.repeat_interleave(groups, dim=1) if groups > 1 else v
        out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, is_causal=False)
        return out.transpose(1, 2).reshape(B, N, self.heads * self.head_dim), (k, v)


def swiglu(gate: nn.Linear, up: nn.Linear, down: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return down(F.silu(gate(x)) * up(x))


def run_layers(layers: nn.ModuleList, x: torch.Tensor, *, head_dim: int, theta: float,
               attention_mask: torch.Tensor | str | None, position_ids: torch.Tensor | None,
               past_key_values: KVCache | None, replace_position: int | None, use_cache: bool
               ) -> tuple[torch.Tensor, KVCache | None]:
    """The stack both architectures share, from embeddings to the last layer's output: positions (by
    default right after the cached ones, or at `replace_position` for the dual cache), one rotary table
    and one mask for every layer, each layer with its slice of the cache; the new cache with `use_cache`."""
    if position_ids is None:
        if replace_position is not None:
            first = replace_position
        else:
            first = past_key_values[0][0].shape[2] if past_key_values else 0
        B, N = x.shape[:2]
        position_ids = torch.arange(first, first + N, device=x.device)[None].expand(B, N)
    rope = rotary_tables(position_ids, head_dim, theta)
    mask = key_padding_mask(attention_mask, x.dtype)
    cache = []
    for i, layer in enumerate(layers):
        x, kv = layer(x, rope, mask, past_key_values[i] if past_key_values else None, replace_position)
        if use_cache:
            cache.append(kv)
    return x, cache if use_cache else None


def init_dllm_weights(module: nn.Module, std: float) -> None:
    """Random init for freshly built (test or benchmark) models; loaded checkpoints overwrite it."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
    elif isinstance(module, RMSNorm):
        nn.init.ones_(module.weight)
