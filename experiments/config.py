"""Configs of the experiments (`unmask reproduce`, `python -m unmask.experiments.frontier`, `python -m
unmask.experiments.own_tasks`): plain dataclasses, parsed by the one command-line parser (cli.parse) and checked before
anything heavy is imported."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from unmask.envs.config import EnvConfig, check_env, check_finite
from unmask.envs.files import check_writable

README_MARKERS = ("<!-- findings:start -->", "<!-- findings:end -->")  # `unmask reproduce readme=` writes there


# the env.* keys the experiments read (the canvas): they run the built-in model on the CPU
CANVAS_KEYS = ("gen_length", "block_length")
UNUSED_ENV = {f"env.{f}": "the experiments read env.gen_length and env.block_length only"
              for f in EnvConfig.__dataclass_fields__ if f not in CANVAS_KEYS}


def check_seeds(key: str, seeds: list[int]) -> None:
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"{key} must hold at least one seed, none twice, got {list(seeds)}")


@dataclass
class ReproduceConfig:
    """`unmask reproduce`: the paper's findings in miniature (experiments.reproduce). The default budget: about 90
    minutes on a 2-core CPU (12 trainings of `train_minutes`, 4 clones, the second dLLM, ~150 evaluations);
    `preset=quick` is a smoke run of a few minutes."""

    unused_keys: ClassVar[dict[str, str]] = UNUSED_ENV
    renamed: ClassVar[dict[str, str]] = {"gen_length": "env.gen_length", "block_length": "env.block_length"}

    env: EnvConfig = field(default_factory=EnvConfig)  # env.block_length: the semi-AR block; env.gen_length: L
    out_dir: str = "runs/reproduce"  # findings.md, .json, plots, and the runs behind them (a ledger: resumable)
    preset: str = "default"  # default | quick: a smoke run (a few iterations, a few prompts; what the tests use)
    train_minutes: float = 5.0  # wall budget of each training run
    max_iterations: int = 100_000  # of each training run (quick: 3)
    num_env_runners: int = 1  # of each training run; 0 = sample in the learner's process (quick)
    groups_per_update: int = 8  # of each training run, also its prompts per sample (quick: 2)
    train_pool: int = 20_000  # training prompts each training run draws from (quick: 256)
    pretrain_minutes: float = 5.0  # the second dLLM (cycles + the out-of-domain `map` family)
    pretrain_examples: int = 30_000  # of each family in the second dLLM's data (quick: 2000)
    num_examples: int = 500  # test prompts per evaluation (quick: 12)
    train_seeds: list[int] = field(default_factory=lambda: [0, 1])  # one training run per seed and finding
    test_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # evaluation draws (prompts, noise) per point
    alpha: float = 1.0  # every policy's trade-off (the paper's additive-reward ablation is at 1)
    lr: float = 2e-4  # GRPO's learning rate from the paper's initialisation
    imitate_prompts: int = 1000  # the recipe's clone (finding 2): the teacher's prompts (DAgger: a third of it more)
    imitate_steps: int = 400  # ... and its optimiser steps per round (quick: 10)
    long_gen_length: int = 32  # finding 5: the second dLLM's canvas, longer than the policies were trained at
    readme: str = ""  # a README holding the findings markers: findings.md is written between them
    progress: bool = True  # progress lines on stderr


QUICK_REPRODUCE = {"train_minutes": 1.0, "max_iterations": 3, "num_env_runners": 0, "groups_per_update": 2,
                   "train_pool": 256,
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
    if cfg.num_env_runners < 0 or min(cfg.groups_per_update, cfg.pretrain_examples, cfg.train_pool) < 1:
        raise ValueError("num_env_runners must be >= 0, groups_per_update, pretrain_examples and train_pool >= 1")
    if cfg.alpha < 0 or cfg.lr <= 0:
        raise ValueError(f"alpha must be >= 0 and lr > 0, got alpha={cfg.alpha}, lr={cfg.lr}")
    for key in ("train_seeds", "test_seeds"):
        check_seeds(key, getattr(cfg, key))
    check_env(cfg.env)
    if cfg.long_gen_length <= cfg.env.gen_length:
        raise ValueError(f"long_gen_length ({cfg.long_gen_length}) must exceed env.gen_length ({cfg.env.gen_length})")
    check_writable(cfg.out_dir, "out_dir", directory=True)
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


@dataclass
class FrontierConfig:
    """`python -m unmask.experiments.frontier`: the learned policies' accuracy-vs-NFE frontier on the built-in model per
    mode, beside every heuristic and the oracle (experiments.frontier); resumable through its ledger in out_dir."""

    renamed: ClassVar[dict] = {"seeds": ("train_seeds", lambda v: v if str(v).startswith("[") else f"[{v}]")}

    out_dir: str = "runs/frontier"  # every run, evaluation and the ledger of finished parts
    train_seeds: list[int] = field(default_factory=lambda: [0, 1])  # a training per seed and part; a point: the mean
    grpo_minutes: float = 4.0  # each GRPO run from the first clone
    paper_minutes: float = 4.0  # the paper's GRPO from its initialisation
    past_minutes: float = 7.0  # each GRPO run from the left_run clone (past the heuristics)
    num_examples: int = 500  # test prompts per evaluation
    publish: str = ""  # a directory (docs/results): frontier.{md,json,png} and the front's policies are written there


def check_frontier(cfg: FrontierConfig) -> None:
    check_finite(cfg)
    check_seeds("train_seeds", cfg.train_seeds)
    if min(cfg.grpo_minutes, cfg.paper_minutes, cfg.past_minutes) <= 0 or cfg.num_examples < 1:
        raise ValueError("grpo_minutes, paper_minutes and past_minutes must be > 0 and num_examples >= 1")
    check_writable(cfg.out_dir, "out_dir", directory=True)
    if cfg.publish:
        check_writable(cfg.publish, "publish", directory=True)


OWN_FAMILIES = ("sort", "filter", "psum", "path", "commas")


@dataclass
class OwnTasksConfig:
    """`python -m unmask.experiments.own_tasks`: a task family of our own, written as the JSONL a user brings."""

    family: str = "filter"  # sort | filter | psum | path | commas (experiments.own_tasks)
    out_dir: str = "runs/own"  # <family>-train.jsonl and <family>-test.jsonl
    train_examples: int = 20_000  # distinct training prompts (fewer when the family has fewer)
    test_examples: int = 500  # distinct test prompts, none of them in train
    seed: int = 7  # draws the examples (7: the files the README's results were made from)


def check_own_tasks(cfg: OwnTasksConfig) -> None:
    if cfg.family not in OWN_FAMILIES:
        raise ValueError(f"unknown family {cfg.family!r}: choose one of {', '.join(OWN_FAMILIES)}")
    if cfg.train_examples < 1 or cfg.test_examples < 1:
        raise ValueError("train_examples and test_examples must be >= 1")
    check_writable(cfg.out_dir, "out_dir", directory=True)


LIMIT_ROUTES = ("lr", "lrh", "orh", "auto")


@dataclass
class LimitConfig:
    """`unmask limit`: toward the oracle's limit (experiments.limit): clones that read the dLLM's hidden state, the
    oracle as a teacher, teachers=[auto], GRPO from each; on `cycles` (the built-in model) or `commas` (a task of our
    own with its own dLLM). Resumable through its ledger in out_dir."""

    task: str = "cycles"  # cycles (the built-in model) | commas (its JSONL and dLLM made first, as the guide says)
    out_dir: str = ""  # every run, evaluation and the ledger of finished parts ("" = runs/limit-<task>)
    train_seeds: list[int] = field(default_factory=lambda: [0, 1])  # a clone and its GRPO runs per seed and route
    alphas: list[float] = field(default_factory=lambda: [1.0, 3.0, 10.0])  # GRPO's trade-off, one run per alpha
    iterations: int = 100  # GRPO updates per run (a fixed count: a shared machine slows a run without changing it)
    routes: list[str] = field(default_factory=lambda: ["lrh", "orh", "auto"])  # of lr, lrh, orh, auto (their recipes)
    block_lengths: list[int] = field(default_factory=list)  # the modes ([] = semi-AR 8 and full diffusion L)
    num_examples: int = 500  # test prompts per evaluation
    pretrain_minutes: float = 15.0  # commas: its dLLM's pretraining budget
    publish: str = ""  # cycles: a directory (docs/results) where frontier.{md,json,png} are published with these points

    @property
    def gen_length(self) -> int:
        """The task's canvas L (the built-in model's 24; commas's 32)."""
        return 24 if self.task == "cycles" else 32


def check_limit(cfg: LimitConfig) -> None:
    check_finite(cfg)
    if cfg.task not in ("cycles", "commas"):
        raise ValueError(f"task must be cycles or commas, got {cfg.task!r}")
    check_seeds("train_seeds", cfg.train_seeds)
    unknown = [r for r in cfg.routes if r not in LIMIT_ROUTES]
    if unknown or not cfg.routes:
        raise ValueError(f"routes must name one or more of {', '.join(LIMIT_ROUTES)}, got {list(cfg.routes)}")
    if any(b < 1 or cfg.gen_length % b for b in cfg.block_lengths):
        raise ValueError(f"every block length must divide the task's L = {cfg.gen_length}, got "
                         f"{list(cfg.block_lengths)}")
    if not cfg.alphas or min(cfg.alphas) < 0 or cfg.iterations < 1 or cfg.num_examples < 1 or cfg.pretrain_minutes <= 0:
        raise ValueError("alphas must be >= 0 (one at least), iterations and num_examples >= 1, pretrain_minutes > 0")
    if cfg.publish and cfg.task != "cycles":
        raise ValueError("publish= is for task=cycles (docs/results/frontier.* is the built-in model's frontier)")
    check_writable(cfg.out_dir or f"runs/limit-{cfg.task}", "out_dir", directory=True)
    if cfg.publish:
        check_writable(cfg.publish, "publish", directory=True)


@dataclass
class ProbeConfig:
    """`unmask finality-probe`: how well one forward's view of a position tells that its prediction is already final
    (the oracle's rule), per input set: a per-position classifier fitted on the oracle's states (experiments.
    finality_probe). The built-in model and task, L = 24."""

    unused_keys: ClassVar[dict[str, str]] = {f"env.{f}": "the probe reads env.block_length only (L = 24)"
                                             for f in EnvConfig.__dataclass_fields__ if f != "block_length"}

    env: EnvConfig = field(default_factory=EnvConfig)  # env.block_length: the semi-AR block of the oracle's decodes
    prompts: int = 1000  # training prompts the oracle decodes (a fifth of them held out for the scores)
    out_dir: str = "runs/probe"  # probe.json: the scores per input set


def check_probe(cfg: ProbeConfig) -> None:
    if cfg.prompts < 5:
        raise ValueError(f"prompts must be >= 5 (a fifth is held out), got {cfg.prompts}")
    if cfg.env.block_length < 1 or 24 % cfg.env.block_length:
        raise ValueError(f"env.block_length must divide the built-in canvas L = 24, got {cfg.env.block_length}")
    check_writable(cfg.out_dir, "out_dir", directory=True)
