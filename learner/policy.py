"""The unmasking policy of arXiv 2512.09106 (paper.md §2): one DiT block over per-position confidences.

    x    = Linear(1 -> d)(c)                                  token stream: the dLLM's top-1 confidence
    cond = Embedding(2, d)[m] + MLP(sinusoid(t))              per-position conditioning: mask flag, time
    x    = DiTBlock(x, cond)                                  adaLN-modulated attention (RoPE) + FFN
    b    = Linear(d -> 1)(LayerNorm(x))                       one unmask logit per position

Mask status and time enter only through adaLN, as in the reference. All modulation weights start at
zero (the block starts as a plain pre-LN block) and the output bias at -2, so every position starts
with unmask probability sigmoid(-2) ~ 0.12: a slow, careful initial sampler. With the defaults the
module has 331,265 parameters, the paper's "~300K".
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from envs.files import replace_dir


@dataclass
class PolicyConfig:
    hidden_size: int = 128
    num_heads: int = 2
    ffn_size: int = 512
    num_blocks: int = 1
    time_embed_size: int = 128
    time_period: float = 1.0  # t lies in [0, 1], so the sinusoid's longest period is 1
    rope_base: float = 10_000.0
    init_bias: float = -2.0


def sinusoid(t: torch.Tensor, dim: int, max_period: float) -> torch.Tensor:
    """[B] -> [B, dim]: DiT's timestep embedding, frequencies max_period^(-i/half). The reference uses
    max_period = 1 for t in [0, 1], which makes every frequency 1; the time MLP does the rest."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def rotate(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary position embedding over the last dim of [B, H, L, Dh]."""
    L, dh = x.shape[-2], x.shape[-1]
    inv = 1.0 / base ** (torch.arange(0, dh, 2, device=x.device, dtype=torch.float32) / dh)
    angles = torch.arange(L, device=x.device, dtype=torch.float32)[:, None] * inv[None, :]
    cos, sin = angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)
    pairs = x.unflatten(-1, (dh // 2, 2))
    swapped = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * cos.to(x.dtype) + swapped * sin.to(x.dtype)


class DiTBlock(nn.Module):
    """Pre-LN transformer block whose LayerNorms are scaled, shifted and gated by the conditioning."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        d = cfg.hidden_size
        self.heads, self.rope_base = cfg.num_heads, cfg.rope_base
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_size), nn.GELU(), nn.Linear(cfg.ffn_size, d))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale1, shift1, gate1, scale2, shift2, gate2 = self.modulation(cond).chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        q, k, v = self.qkv(h).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        q, k = rotate(q, self.rope_base), rotate(k, self.rope_base)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(-2)
        x = x + self.proj(attn) * (1 + gate1)
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + self.ffn(h) * (1 + gate2)


class UnmaskingPolicy(nn.Module):
    """(confidence [B, L], masked [B, L], t [B]) -> unmask logits [B, L]."""

    def __init__(self, cfg: PolicyConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or PolicyConfig()
        d = cfg.hidden_size
        self.confidence_in = nn.Linear(1, d)
        self.mask_embed = nn.Embedding(2, d)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_embed_size, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_blocks))
        self.norm_out = nn.LayerNorm(d)
        self.head = nn.Linear(d, 1)
        nn.init.constant_(self.head.bias, cfg.init_bias)

    def forward(self, confidence: torch.Tensor, masked: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = self.confidence_in(confidence.float()[..., None])
        time = self.time_mlp(sinusoid(t, self.cfg.time_embed_size, self.cfg.time_period))
        cond = self.mask_embed(masked.long()) + time[:, None, :]
        for block in self.blocks:
            x = block(x, cond)
        return self.head(self.norm_out(x))[..., 0]


# ---- weights on disk: safetensors + the config that shapes them --------------------------------------
POLICY_WEIGHTS, POLICY_CONFIG = "policy.safetensors", "policy.json"


def save_policy(state: dict, cfg: PolicyConfig, out: str | Path, info: dict | None = None) -> Path:
    """Write `out/` = policy.safetensors + policy.json atomically."""
    from safetensors.torch import save_file

    def fill(tmp: Path) -> None:
        tensors = {k: torch.as_tensor(v).detach().cpu().contiguous() for k, v in state.items()}
        save_file(tensors, str(tmp / POLICY_WEIGHTS))
        (tmp / POLICY_CONFIG).write_text(json.dumps({"policy": asdict(cfg), **(info or {})}, indent=2) + "\n")

    return replace_dir(Path(out), fill)


def load_policy(path: str | Path, device: str = "cpu") -> UnmaskingPolicy:
    """A saved policy directory (or its policy.safetensors) -> the network in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    folder = path.parent if path.name == POLICY_WEIGHTS else path
    if not (folder / POLICY_WEIGHTS).is_file() or not (folder / POLICY_CONFIG).is_file():
        raise FileNotFoundError(f"no policy checkpoint at {path} (expected {POLICY_WEIGHTS} and {POLICY_CONFIG})")
    try:
        meta = json.loads((folder / POLICY_CONFIG).read_text())
        policy = UnmaskingPolicy(PolicyConfig(**meta["policy"]))
        policy.load_state_dict(load_file(str(folder / POLICY_WEIGHTS), device=device))
    except (SafetensorError, json.JSONDecodeError, KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"policy checkpoint {folder} is corrupted or does not match its config: "
                         f"{str(err).splitlines()[0]}") from None
    return policy.to(device).eval()


def policy_info(path: str | Path) -> dict:
    """What policy.json says about how the policy was trained (reward, alpha, block length, version)."""
    path = Path(path)
    folder = path.parent if path.name == POLICY_WEIGHTS else path
    try:
        meta = json.loads((folder / POLICY_CONFIG).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: v for k, v in meta.items() if k != "policy"}
