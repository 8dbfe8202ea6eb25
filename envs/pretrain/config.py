"""The configs of `unmask pretrain` (plain dataclasses, no heavy imports: checked before torch is loaded)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from unmask.envs.config import TaskConfig, check_finite, check_task
from unmask.envs.files import check_writable


@dataclass
class ModelSize:
    """Shape of a built-in dLLM (a bidirectional encoder, trained as a masked diffusion LM)."""

    arch: str = "bert"  # bert (post-LN, learned positions) | modernbert (pre-LN, RoPE, GeGLU)
    hidden_size: int = 256  # the defaults are the shipped built-in model's size (1.66 M parameters)
    num_layers: int = 2
    num_heads: int = 4
    ffn_size: int = 1024


@dataclass
class PretrainConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    out: str = "runs/pretrain"
    gen_length: int = 24
    size: ModelSize = field(default_factory=ModelSize)
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    min_mask_ratio: float = 1e-3  # t ~ U(min_mask_ratio, 1)
    max_steps: int = 100_000
    minutes: float = 60.0  # wall-clock budget; training stops at whichever limit comes first
    seed: int = 0
    num_threads: int = 0  # torch threads; 0 = all cores
    max_context: int = 4096  # the largest context (longest prompt + gen_length) a new model may be built with
    log_every: int = 100
    init_from: str = ""  # continue training a saved dLLM (its tokenizer and shape are kept)
    # when init_from's context is too short for the task: where its position table grows. -1 appends the new
    # rows; an index inserts them there (cycles 7 -> 10 letters: 7, so `?`, start letter and canvas keep the
    # positions they were trained at and only the new image slots are new)
    grow_positions_at: int = -1
    save_every_minutes: float = 10.0  # also save partial checkpoints (atomically) this often; 0 = never
    overwrite: bool = False  # out may hold files: the model's own are replaced, every other file is kept
    progress: bool = True  # a progress bar (steps, loss, ETA) on stderr


def check_pretrain(cfg: PretrainConfig) -> None:
    """Settings, and `out`: new or empty; a directory with files in it (another model, the shipped built-in
    one, notes) is refused unless `overwrite=true`, and even then only the files a model save writes are
    replaced."""
    check_finite(cfg)
    check_task(cfg.task)
    if cfg.minutes <= 0 or cfg.max_steps <= 0 or cfg.batch_size <= 0:
        raise ValueError("pretrain needs minutes > 0, max_steps > 0 and batch_size > 0")
    if cfg.gen_length <= 0 or cfg.max_context <= cfg.gen_length:
        raise ValueError(f"gen_length must be > 0 and max_context > gen_length, got {cfg.gen_length}, "
                         f"{cfg.max_context}")
    check_writable(cfg.out, "out", directory=True)
    out = Path(cfg.out)
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise ValueError(f"out={cfg.out} is not empty: choose a new out (or overwrite=true to replace the model "
                         "files in it; other files are kept)")
