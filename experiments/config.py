"""Configs of the experiments (`unmask reproduce`): plain dataclasses, checked before anything heavy is imported."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from unmask.envs.config import check_finite

README_MARKERS = ("<!-- findings:start -->", "<!-- findings:end -->")  # `unmask reproduce readme=` writes there


@dataclass
class ReproduceConfig:
    """`unmask reproduce`: the paper's findings in miniature (experiments.reproduce). The default budget: about 90
    minutes on a 2-core CPU (12 trainings of `train_minutes`, 4 clones, the second dLLM, ~150 evaluations);
    `preset=quick` is a smoke run of a few minutes."""

    out_dir: str = "runs/reproduce"
    preset: str = "default"  # default | quick: a smoke run (a few iterations, a few prompts; what the tests use)
    train_minutes: float = 5.0  # wall budget of each training run
    max_iterations: int = 100_000  # of each training run (quick: 3)
    num_env_runners: int = 1  # of each training run; 0 = sample in the learner's process (quick)
    groups_per_update: int = 8  # of each training run, also its prompts per sample (quick: 2)
    pretrain_minutes: float = 5.0  # the second dLLM (cycles + the out-of-domain `map` family)
    pretrain_examples: int = 30_000  # of each family in the second dLLM's data (quick: 2000)
    num_examples: int = 500  # test prompts per evaluation (quick: 12)
    train_seeds: list[int] = field(default_factory=lambda: [0, 1])
    test_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    alpha: float = 1.0  # every policy's trade-off (the paper's additive-reward ablation is at 1)
    lr: float = 2e-4
    imitate_prompts: int = 1000  # the recipe's clone (finding 2): the teacher's prompts (DAgger: a third of it more)
    imitate_steps: int = 400  # ... and its optimiser steps per round (quick: 10)
    block_length: int = 8  # semi-AR
    gen_length: int = 24
    long_gen_length: int = 32  # finding 5: the second dLLM's canvas, longer than the policies were trained at
    readme: str = ""  # a README holding the findings markers: findings.md is written between them
    progress: bool = True


QUICK_REPRODUCE = {"train_minutes": 1.0, "max_iterations": 3, "num_env_runners": 0, "groups_per_update": 2,
                   "pretrain_minutes": 0.05, "pretrain_examples": 2000, "num_examples": 12, "test_seeds": [0, 1],
                   "imitate_prompts": 24, "imitate_steps": 10}

def check_reproduce(cfg: ReproduceConfig) -> None:
    """Every key, before any work (a training or an evaluation would otherwise find a bad one minutes in)."""
    check_finite(cfg)
    if cfg.preset not in ("default", "quick"):
        raise ValueError(f"unknown preset {cfg.preset!r}: use default or quick")
    if min(cfg.train_minutes, cfg.pretrain_minutes) <= 0 or cfg.num_examples < 1 or cfg.max_iterations < 1:
        raise ValueError("train_minutes and pretrain_minutes must be > 0, num_examples and max_iterations >= 1")
    if cfg.imitate_prompts < 3 or cfg.imitate_steps < 1:
        raise ValueError(f"imitate_prompts must be >= 3 and imitate_steps >= 1, got {cfg.imitate_prompts} and "
                         f"{cfg.imitate_steps}")
    if cfg.num_env_runners < 0 or cfg.groups_per_update < 1 or cfg.pretrain_examples < 1:
        raise ValueError("num_env_runners must be >= 0, groups_per_update and pretrain_examples >= 1")
    if cfg.alpha < 0 or cfg.lr <= 0:
        raise ValueError(f"alpha must be >= 0 and lr > 0, got alpha={cfg.alpha}, lr={cfg.lr}")
    for key in ("train_seeds", "test_seeds"):
        seeds = list(getattr(cfg, key))
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"{key} must hold at least one seed, none twice, got {seeds}")
    if min(cfg.gen_length, cfg.block_length) < 1 or cfg.gen_length % cfg.block_length:
        raise ValueError(f"block_length ({cfg.block_length}) must be >= 1 and divide gen_length ({cfg.gen_length})")
    if cfg.long_gen_length <= cfg.gen_length:
        raise ValueError(f"long_gen_length ({cfg.long_gen_length}) must exceed gen_length ({cfg.gen_length})")
    if cfg.readme:
        text = Path(cfg.readme).read_text() if Path(cfg.readme).is_file() else ""
        start, end = (text.find(m) for m in README_MARKERS)
        if start < 0 or end < start:
            raise ValueError(f"readme={cfg.readme} is not a file holding the markers {' then '.join(README_MARKERS)}")


def resolved(cfg: ReproduceConfig) -> ReproduceConfig:
    """The preset's budgets under the keys given (quick changes only what the command line left at its default)."""
    if cfg.preset != "quick":
        return cfg
    defaults = ReproduceConfig()
    return dataclasses.replace(cfg, **{k: v for k, v in QUICK_REPRODUCE.items()
                                       if getattr(cfg, k) == getattr(defaults, k)})
