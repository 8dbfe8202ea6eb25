"""The unmasking policy of arXiv 2512.09106 (§3.2): one DiT block over per-position confidences.

    x    = Linear(F -> d)(c)                                  token stream: the dLLM's top-1 confidence (F = 1), or
                                                              it and the inputs `inputs` adds (history, margin, ...,
                                                              hidden_dims numbers of the dLLM's hidden state)
    cond = Embedding(2, d)[m] + MLP(sinusoid(t))              per-position conditioning: mask flag, time
         (+ MLP(log(1 + alpha)))                              and, alpha-conditioned, the reward trade-off
    x    = DiTBlock(x, cond)                                  adaLN-modulated attention (RoPE) + FFN
    b    = Linear(d -> 1)(LayerNorm(x))                       one unmask logit per position

Mask status and time enter only through adaLN, as in the reference. All modulation weights start at
zero (the block starts as a plain pre-LN block) and the output bias at -2, so every position starts
with unmask probability sigmoid(-2) ~ 0.12: a slow, careful initial sampler. With the defaults the
module has 331,265 parameters, the paper's "~300K".

An alpha-conditioned policy (`alpha_conditioned`, set by training with `grpo.alpha_range`) reads the reward's
trade-off alpha as a third conditioning beside t and the mask flag, through the same adaLN path, so one
network serves every point of the accuracy-NFE trade-off (`sampler.alpha=` picks it at evaluation).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin, constants, hf_hub_download
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model
from torch import nn

from unmask.envs.files import check_hub, publish_dir, replace_dir
from unmask.learner.config import PolicyConfig, input_width, saved_policy

PAPER_URL = "https://arxiv.org/abs/2512.09106"


def sinusoid(t: torch.Tensor, dim: int, max_period: float) -> torch.Tensor:
    """[B] -> [B, dim]: DiT's timestep embedding, frequencies max_period^(-i/half). The reference uses
    max_period = 1 for t in [0, 1], which makes every frequency 1; the time MLP does the rest."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


@functools.lru_cache(maxsize=16)
def rotary_tables(length: int, head_dim: int, base: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [L, Dh] of the rotary embedding (the same for every forward at one L: computed once)."""
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv[None, :]
    return angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)


def rotate(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary position embedding over the last dim of [B, H, L, Dh]."""
    L, dh = x.shape[-2], x.shape[-1]
    cos, sin = rotary_tables(L, dh, base, x.device)
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

    def forward(self, x: torch.Tensor, cond: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """x [B, L, d]; cond [B, 2, d]: a row's conditioning for an unmasked and a masked position (mask flag
        and time are all it holds, so the modulation is computed twice per row, not once per position)."""
        modulation = self.modulation(cond)
        modulation = torch.where(masked[..., None], modulation[:, 1:], modulation[:, :1])
        scale1, shift1, gate1, scale2, shift2, gate2 = modulation.chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        q, k, v = self.qkv(h).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        q, k = rotate(q, self.rope_base), rotate(k, self.rope_base)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(-2)
        x = x + self.proj(attn) * (1 + gate1)
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + self.ffn(h) * (1 + gate2)


class UnmaskingPolicy(nn.Module, PyTorchModelHubMixin, library_name="unmask", paper_url=PAPER_URL,
                      tags=["dllm", "unmasking-policy", "grpo"]):
    """(inputs [B, L, F] or the confidence [B, L], masked [B, L], t [B]) -> unmask logits [B, L].

    A Hugging Face model: `save_pretrained(dir)` writes model.safetensors + config.json (+ a model card),
    `from_pretrained(dir or hub id)` loads it back (checkpoints of the earlier policy.safetensors +
    policy.json layout too), `push_to_hub(repo_id)` publishes it."""

    def __init__(self, config: PolicyConfig | dict | None = None):
        super().__init__()
        if isinstance(config, dict):  # config.json: the PolicyConfig fields, plus what training recorded
            config = PolicyConfig(**{k: v for k, v in config.items() if k in PolicyConfig.__dataclass_fields__})
        config = config or PolicyConfig()
        self.config = cfg = replace(config, inputs=list(config.inputs) or ["confidence"])  # []: the paper's input
        d = cfg.hidden_size
        self.confidence_in = nn.Linear(input_width(cfg), d)  # the paper's policy: the confidence alone
        self.mask_embed = nn.Embedding(2, d)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_embed_size, d), nn.SiLU(), nn.Linear(d, d))
        self.alpha_mlp = nn.Sequential(nn.Linear(1, d), nn.SiLU(), nn.Linear(d, d)) if cfg.alpha_conditioned else None
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_blocks))
        self.norm_out = nn.LayerNorm(d)
        self.head = nn.Linear(d, 1)
        nn.init.constant_(self.head.bias, cfg.init_bias)

    def forward(self, inputs: torch.Tensor, masked: torch.Tensor, t: torch.Tensor,
                alpha: torch.Tensor | None = None) -> torch.Tensor:
        """inputs [B, L, F] per position (config.inputs; [B, L]: the confidence alone); alpha [B]: the trade-off each
        row decodes for (an alpha-conditioned policy needs it, others ignore it)."""
        x = self.confidence_in(inputs.float()[..., None] if inputs.dim() == masked.dim() else inputs.float())
        time = self.time_mlp(sinusoid(t, self.config.time_embed_size, self.config.time_period))
        if self.alpha_mlp is not None:
            if alpha is None:
                raise ValueError("this policy is alpha-conditioned: give the trade-off (sampler.alpha=...)")
            time = time + self.alpha_mlp(torch.log1p(alpha.float().to(time.device))[:, None])
        cond = self.mask_embed.weight[None] + time[:, None, :]  # [B, 2, d]: mask flag 0 and 1 at time t (and alpha)
        for block in self.blocks:
            x = block(x, cond, masked.bool())
        return self.head(self.norm_out(x))[..., 0]

    # ---- Hugging Face persistence ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> UnmaskingPolicy:
        folder = policy_folder(pretrained_model_name_or_path)
        if (folder / LEGACY_CONFIG).is_file() and not (folder / CONFIG_FILE).is_file():
            return cls._from_legacy(folder, kwargs.get("map_location", "cpu"))
        return super().from_pretrained(str(folder) if folder.is_dir() else pretrained_model_name_or_path, **kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision, cache_dir, force_download, local_files_only, token,
                         map_location: str = "cpu", strict: bool = True, config=None, **kwargs) -> UnmaskingPolicy:
        """The mixin's loader, strict (a checkpoint that does not match its config is an error) and quiet."""
        weights = Path(model_id) / WEIGHTS_FILE
        if not weights.is_file():
            weights = hf_hub_download(model_id, WEIGHTS_FILE, revision=revision, cache_dir=cache_dir,
                                      force_download=force_download, local_files_only=local_files_only, token=token)
        model = cls(config)
        load_model(model, str(weights), strict=strict, device=str(map_location))
        return model.eval()

    @classmethod
    def _from_legacy(cls, folder: Path, device: str) -> UnmaskingPolicy:
        model = cls(json.loads((folder / LEGACY_CONFIG).read_text())["policy"])
        model.load_state_dict(load_file(str(folder / LEGACY_WEIGHTS), device=str(device)))
        return model.eval()


# ---- checkpoints on disk -------------------------------------------------------------------------------
WEIGHTS_FILE, CONFIG_FILE = constants.SAFETENSORS_SINGLE_FILE, constants.CONFIG_NAME  # model.safetensors, config.json
LEGACY_WEIGHTS, LEGACY_CONFIG = "policy.safetensors", "policy.json"  # checkpoints written before the HF layout
TRAINING_KEY = "training"  # config.json: how the policy was trained (reward, alpha, lengths, version)


def policy_folder(path: str | Path) -> Path:
    """A policy directory, given it or one of its files."""
    path = Path(path)
    return path.parent if path.suffix in (".safetensors", ".json") else path


def save_policy(policy: UnmaskingPolicy, out: str | Path, info: dict | None = None, keep_others: bool = False
                ) -> Path:
    """`save_pretrained` into `out/` atomically, with `info` (how it was trained) in config.json. keep_others: `out` may
    hold the user's files (imitate's out_dir): only the policy's own files are replaced, config.json last."""
    config = {**asdict(policy.config), TRAINING_KEY: info or {}}
    write = publish_dir if keep_others else replace_dir
    kwargs = {"last": CONFIG_FILE} if keep_others else {}
    return write(Path(out), lambda tmp: policy.save_pretrained(tmp, config=config), **kwargs)


def load_policy(path: str | Path, device: str = "cpu") -> UnmaskingPolicy:
    """A saved policy (a local directory or one of its files, or a hub id) -> the network in eval mode."""
    folder = policy_folder(path)
    local = folder.is_dir() or str(path).startswith(("/", ".", "~")) or Path(path).exists()
    if local and not any((folder / name).is_file() for name in (WEIGHTS_FILE, LEGACY_WEIGHTS)):
        raise FileNotFoundError(f"no policy checkpoint at {path} (expected {WEIGHTS_FILE} and {CONFIG_FILE})")
    if local:
        saved_policy(str(folder))  # its config is a policy's (an object, each field of its type), or one line
    else:
        check_hub(str(path), "policy")
    try:
        return UnmaskingPolicy.from_pretrained(folder if local else str(path), map_location=device).to(device)
    except (SafetensorError, json.JSONDecodeError, KeyError, TypeError, RuntimeError, OSError) as err:
        raise ValueError(f"policy checkpoint {path} is corrupted or does not match its config: "
                         f"{str(err).strip().splitlines()[0]}") from None


def policy_info(path: str | Path) -> dict:
    """How a saved policy was trained (reward, alpha, block length, version), from its config."""
    folder = policy_folder(path)
    for name, read in ((CONFIG_FILE, lambda meta: meta.get(TRAINING_KEY, {})),
                       (LEGACY_CONFIG, lambda meta: {k: v for k, v in meta.items() if k != "policy"})):
        try:
            return read(json.loads((folder / name).read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return {}
