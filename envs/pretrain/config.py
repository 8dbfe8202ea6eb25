"""The configs of `unmask pretrain` (plain dataclasses, no heavy imports: checked before torch is loaded)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from unmask.envs.config import EnvConfig, TaskConfig, check_finite, check_task
from unmask.envs.files import check_writable


@dataclass
class ModelSize:
    """Shape of a built-in dLLM (a bidirectional encoder, trained as a masked diffusion LM)."""

    arch: str = "bert"  # bert (post-LN, learned positions) | modernbert (pre-LN, RoPE, GeGLU)
    hidden_size: int = 256  # the defaults are the shipped built-in model's size (1.66 M parameters)
    num_layers: int = 2  # encoder layers
    num_heads: int = 4  # attention heads per layer
    ffn_size: int = 1024  # feed-forward width


# the env.* keys pretraining reads: the canvas its answers are written into (the rest are about decoding)
PRETRAIN_ENV_KEYS = ("gen_length",)


@dataclass
class PretrainConfig:
    """`unmask pretrain`: a small dLLM of your own, trained with the masked-diffusion objective on a task's data."""

    unused_keys: ClassVar[dict[str, str]] = {
        f"env.{f}": "unmask pretrain reads env.gen_length only (the canvas its answers fill)"
        for f in EnvConfig.__dataclass_fields__ if f not in PRETRAIN_ENV_KEYS}
    renamed: ClassVar[dict[str, str]] = {"out": "out_dir", "minutes": "max_minutes", "gen_length": "env.gen_length"}

    task: TaskConfig = field(default_factory=TaskConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    out_dir: str = "runs/pretrain"  # the dLLM in Hugging Face format (safetensors, tokenizer, pretrain.json)
    size: ModelSize = field(default_factory=ModelSize)
    batch_size: int = 128  # training sequences per optimiser step
    lr: float = 1e-3  # AdamW peak learning rate (warm-up, then cosine to 10% over the budget that ends the run)
    warmup_steps: int = 200  # linear warm-up steps
    weight_decay: float = 0.01  # AdamW's decoupled weight decay
    min_mask_ratio: float = 1e-3  # t ~ U(min_mask_ratio, 1)
    max_steps: int = 100_000  # optimiser steps; training stops at whichever limit comes first
    max_minutes: float = 60.0  # wall-clock budget; training stops at whichever limit comes first
    seed: int = 0  # draws the data, the masks and the initial weights
    num_threads: int = 0  # torch threads; 0 = all cores
    max_context: int = 4096  # the largest context (longest prompt + gen_length) a new model may be built with
    log_every: int = 100  # steps between loss lines on stdout
    init_from: str = ""  # continue training a saved dLLM (its tokenizer and shape are kept)
    # when init_from's context is too short for the task: where its position table grows. -1 appends the new
    # rows; an index inserts them there (cycles 7 -> 10 letters: 7, so `?`, start letter and canvas keep the
    # positions they were trained at and only the new image slots are new)
    grow_positions_at: int = -1
    save_every_minutes: float = 10.0  # also save partial checkpoints (atomically) this often; 0 = never
    overwrite: bool = False  # out_dir may hold files: the model's own are replaced, every other file is kept
    progress: bool = True  # a progress bar (steps, loss, ETA) on stderr


def check_pretrain(cfg: PretrainConfig) -> None:
    """Settings, and `out_dir`: new or empty; a directory with files in it (another model, the shipped built-in
    one, notes) is refused unless `overwrite=true`, and even then only the files a model save writes are
    replaced."""
    check_finite(cfg)
    check_task(cfg.task)
    if cfg.max_minutes <= 0 or cfg.max_steps <= 0 or cfg.batch_size <= 0:
        raise ValueError("pretrain needs max_minutes > 0, max_steps > 0 and batch_size > 0")
    gen_length = cfg.env.gen_length
    if gen_length <= 0 or cfg.max_context <= gen_length:
        raise ValueError(f"env.gen_length must be > 0 and max_context > env.gen_length, got {gen_length}, "
                         f"{cfg.max_context}")
    check_writable(cfg.out_dir, "out_dir", directory=True)
    out = Path(cfg.out_dir)
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise ValueError(f"out_dir={cfg.out_dir} is not empty: choose a new out_dir (or overwrite=true to replace "
                         "the model files in it; other files are kept)")
