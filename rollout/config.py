"""Structured configs of the rollout side: what an env runner hosts and samples, and what `unmask eval` and
`unmask pareto` evaluate. No heavy imports: commands check them before loading torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from unmask.envs.config import (
    DLLMSettings,
    SamplerConfig,
    check_dllm_settings,
    check_env,
    check_finite,
    check_sampler,
    check_task,
    sampler_spec,
)
from unmask.envs.files import check_writable
from unmask.learner.config import PolicyConfig, check_policy


@dataclass
class ExpertConfig:
    """Expert steering (arXiv 2512.09106 App. F): each group gets one trajectory per threshold from Fast-dLLM at that
    lambda, decoding semi-AR blocks of `block_length` inside the env's canvas (the paper: lambda 0.9, BL 32 of
    L 256)."""

    thresholds: list[float] = field(default_factory=list)  # [] = off; the paper: [0.9]
    block_length: int = 8  # the expert's semi-AR block (must divide env.gen_length)


@dataclass
class RolloutConfig:
    """How env runners roll the policy out in training (`rollout.*`; the dLLM, task and canvas are the run's
    model, task.* and env.*)."""

    group_size: int = 8  # G: the policy's rollouts per prompt (experts add theirs to the group)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    prompts_per_sample: int = 8  # prompts in one env-runner sample (prompts x G sequences, one batched env)
    fill_at_budget: bool = True  # a block's last allowed forward writes what the policy left (false: abandoned,
    #                              the paper's rule, from which a policy that unmasks nothing never gets out)
    train_pool: int = 20_000  # training prompts an env runner draws from (reshuffled each pass)


def check_rollout(cfg: RolloutConfig, gen_length: int) -> None:
    if cfg.group_size < 2:
        raise ValueError(f"rollout.group_size must be >= 2 (GRPO compares rollouts of one prompt), "
                         f"got {cfg.group_size}")
    if cfg.prompts_per_sample < 1 or cfg.train_pool < 1:
        raise ValueError("rollout.prompts_per_sample and rollout.train_pool must be >= 1")
    thresholds = list(cfg.expert.thresholds)
    if any(not 0.0 <= x <= 1.0 for x in thresholds) or len(set(thresholds)) != len(thresholds):
        raise ValueError(f"rollout.expert.thresholds must be distinct Fast-dLLM lambdas in [0, 1] (identical experts "
                         f"draw identical trajectories), got {thresholds}")
    if thresholds and (cfg.expert.block_length <= 0 or gen_length % cfg.expert.block_length):
        raise ValueError(f"rollout.expert.block_length={cfg.expert.block_length} must divide "
                         f"env.gen_length={gen_length}")


def folder_of_file(value: str) -> str:
    """eval's old `out=<file>.json`: the folder it named (eval now writes out_dir/eval.json and eval.examples.jsonl)."""
    return str(Path(value).parent) if str(value).endswith(".json") else str(value)


@dataclass
class EvalConfig(DLLMSettings):
    """`unmask eval`: one sampler on a task's prompts."""

    # deprecated spellings: old key -> new key, or (new key, the old value's conversion); cli.parse applies them with
    # a one-line notice
    renamed: ClassVar[dict] = {"out": ("out_dir", folder_of_file), "batch_size": "env.batch_size"}

    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    num_examples: int = 500  # prompts of the split; -1 = all of them
    split: str = "test"  # test | train
    out_dir: str = "runs/eval"  # eval.json (the summary and the resolved config), eval.examples.jsonl (every outcome)
    group_by: str = ""  # a field of the examples (a JSONL column; cycles: cycle_length): results per value
    progress: bool = True  # a progress bar on stderr
    num_threads: int = 0  # torch threads; 0 = torch's default (all cores)


def check_eval(cfg: EvalConfig) -> None:
    check_finite(cfg)
    check_dllm_settings(cfg)
    check_sampler(cfg.sampler)
    check_writable(cfg.out_dir, "out_dir", directory=True)
    if cfg.num_threads < 0:
        raise ValueError(f"num_threads must be >= 0, got {cfg.num_threads}")


@dataclass
class ParetoConfig(DLLMSettings):
    """`unmask pareto`: every heuristic over its settings grid, semi-AR and full diffusion, with the oracle's line."""

    # keys the schema has (through EnvConfig) but this command does not read: giving one is an error
    unused_keys: ClassVar[dict[str, str]] = {"env.block_length": "unmask pareto takes block_lengths=[...]"}
    renamed: ClassVar[dict] = {"grid": "heuristic_grid", "batch_size": "env.batch_size"}

    block_lengths: list[int] = field(default_factory=lambda: [4, 8])  # semi-AR; full diffusion (L) is always added
    heuristic_grid: str = "default"  # default | small: the heuristics' settings (rollout.pareto.default_grid)
    policies: list[str] = field(default_factory=list)  # saved policy directories, evaluated beside the heuristics
    policy_alphas: list[float] = field(default_factory=lambda: [0.3, 1.0, 3.0])  # an alpha-conditioned policy's curve
    oracle: bool = True  # draw the oracle's limit line (rollout.pareto.oracle_line)
    oracle_block_length: int = 0  # its references decode blocks of this (at most BL); 0 = the largest semi-AR one
    num_examples: int = 500  # prompts of the split; -1 = all of them
    split: str = "test"  # test | train
    out_dir: str = "runs/pareto"  # pareto.json, .md, .png and the resolved config.yaml
    progress: bool = True  # a progress bar on stderr
    num_threads: int = 0  # torch threads; 0 = torch's default (all cores)


GRIDS = ("default", "small")


def check_heuristic_grid(grid: str) -> None:
    if grid not in GRIDS:
        raise ValueError(f"unknown heuristic_grid {grid!r}: use {' or '.join(GRIDS)}")


def check_pareto(cfg: ParetoConfig) -> None:
    check_finite(cfg)
    check_task(cfg.task)
    check_writable(cfg.out_dir, "out_dir", directory=True)
    if not cfg.policy_alphas or any(not a >= 0 for a in cfg.policy_alphas):
        raise ValueError(f"policy_alphas must be a non-empty list of trade-offs >= 0, got {list(cfg.policy_alphas)}")
    check_heuristic_grid(cfg.heuristic_grid)
    for block_length in pareto_block_lengths(cfg):
        if block_length <= 0 or cfg.env.gen_length % block_length:
            raise ValueError(f"block_lengths entry {block_length} does not divide env.gen_length={cfg.env.gen_length}")
        check_env(dataclasses.replace(cfg.env, block_length=block_length))
    if cfg.oracle_block_length < 0 or cfg.oracle_block_length and cfg.env.gen_length % cfg.oracle_block_length:
        raise ValueError(f"oracle_block_length={cfg.oracle_block_length} must divide env.gen_length="
                         f"{cfg.env.gen_length} (0: the largest semi-AR block length)")


def pareto_block_lengths(cfg: ParetoConfig) -> list[int]:
    """The semi-AR block lengths asked for, and full diffusion (one block of L)."""
    return sorted(set(cfg.block_lengths) | {cfg.env.gen_length})


def oracle_blocks(cfg: ParetoConfig) -> int:
    """The blocks the oracle line's references decode in (at most each panel's BL); 0: no line."""
    semi_ar = [bl for bl in pareto_block_lengths(cfg) if bl < cfg.env.gen_length]
    if not cfg.oracle:
        return 0
    return cfg.oracle_block_length or max(semi_ar, default=cfg.env.gen_length)


@dataclass
class ImitateEval:
    num_examples: int = 500  # the cloned policy on the test split, beside its teachers (eval.json); 0 = skip


@dataclass
class ImitateConfig(DLLMSettings):
    """`unmask imitate`: a policy cloned from a teacher sampler's decisions (rollout.imitation), the start GRPO then
    moves beyond the heuristics' frontier from (`unmask train init_from=`)."""

    renamed: ClassVar[dict] = {"out": "out_dir", "batch_size": "env.batch_size",
                               "eval_examples": "eval.num_examples"}

    # the teacher, a sampler spec `name[:param=value,...]`; several: one alpha-conditioned policy, each episode
    # decoded by one of them, the policy told the trade-off each stands for (teacher_alphas, in the same order)
    # (the default, left_run: the heuristic that makes both modes' frontier on the built-in model, frontier.md)
    teachers: list[str] = field(default_factory=lambda: ["left_run:threshold=0.9;run_threshold=0.4"])
    # teachers=[auto]: the teacher is chosen from the task: every heuristic of the pareto grid decodes `auto_prompts`
    # held-out training prompts and the one with the best mean reward correct*((L-NFE+1)/L)^auto_alpha teaches
    # (rollout.pareto.choose_teacher; the table is in imitate.json)
    auto_alpha: float = 3.0  # teachers=[auto]: the trade-off it is chosen for (the grpo.alpha you will train at)
    auto_prompts: int = 200  # teachers=[auto]: training prompts (none of the clone's) each heuristic decodes
    teacher_alphas: list[float] = field(default_factory=list)  # several teachers: the trade-off each stands for
    teacher_block_length: int = 0  # teachers decide in the leftmost block of this many inside the canvas; 0 = BL
    # policy.inputs = [] (the default): the confidence and every input the teachers read (left_run: repeat), so that
    # the student sees what its teacher decides on; a list given is kept, and refused if it misses one of those
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    prompts: int = 1000  # training prompts the teachers decode (the states of round 0)
    dagger_rounds: int = 1  # then rounds of the student's own rollouts, labelled by the teachers (DAgger)
    dagger_prompts: int = 300  # student rollouts per DAgger round
    steps_per_round: int = 400  # optimiser steps after each round's states are in
    batch_steps: int = 256  # states per optimiser step
    lr: float = 2e-3  # Adam learning rate of the imitation loss
    # > 1: the loss counts each "keep masked" label this many times, so the student commits only where it is surer;
    # for a teacher that sees what the student cannot (the oracle, which knows the answer)
    keep_weight: float = 1.0
    eval: ImitateEval = field(default_factory=ImitateEval)
    out_dir: str = "runs/imitate"  # the policy (model.safetensors, config.json, README.md) and eval.json
    overwrite: bool = False  # out_dir may hold a policy: replace it
    progress: bool = True  # a progress bar on stderr


AUTO = "auto"  # teachers=[auto]: the teacher chosen from the task (rollout.pareto.choose_teacher)


def check_imitate(cfg: ImitateConfig) -> None:
    check_finite(cfg)
    check_dllm_settings(cfg)
    check_policy(cfg.policy)
    if not cfg.teachers:
        raise ValueError("teachers must name at least one sampler")
    if AUTO in cfg.teachers and (len(cfg.teachers) > 1 or cfg.teacher_alphas):
        raise ValueError("teachers=[auto] chooses one teacher: give it alone, without teacher_alphas")
    if not cfg.auto_alpha >= 0 or cfg.auto_prompts < 1:
        raise ValueError(f"auto_alpha must be >= 0 and auto_prompts >= 1, got {cfg.auto_alpha}, {cfg.auto_prompts}")
    for spec in cfg.teachers:
        if spec == AUTO:
            continue
        teacher = sampler_spec(spec)
        if teacher.name == "policy":
            raise ValueError(f"teachers: {spec!r} is a learned policy; a teacher is a heuristic or the oracle")
        check_sampler(teacher)
    if len(cfg.teachers) > 1 and len(cfg.teacher_alphas) != len(cfg.teachers):
        raise ValueError(f"{len(cfg.teachers)} teachers need as many teacher_alphas (the trade-off each stands for), "
                         f"got {list(cfg.teacher_alphas)}")
    if len(cfg.teachers) == 1 and cfg.teacher_alphas:
        raise ValueError("teacher_alphas is for several teachers (one alpha-conditioned policy)")
    if any(not a > 0 for a in cfg.teacher_alphas) or len(set(cfg.teacher_alphas)) != len(cfg.teacher_alphas):
        raise ValueError(f"teacher_alphas must be distinct trade-offs > 0, got {list(cfg.teacher_alphas)}")
    if cfg.teacher_block_length < 0 or cfg.teacher_block_length and cfg.env.gen_length % cfg.teacher_block_length:
        raise ValueError(f"teacher_block_length={cfg.teacher_block_length} must divide env.gen_length="
                         f"{cfg.env.gen_length} (0: the env's blocks)")
    if min(cfg.prompts, cfg.steps_per_round, cfg.batch_steps) < 1 or cfg.lr <= 0:
        raise ValueError("prompts, steps_per_round and batch_steps must be >= 1 and lr > 0")
    if not cfg.keep_weight >= 1:
        raise ValueError(f"keep_weight must be >= 1 (1: the teacher's likelihood as it is), got {cfg.keep_weight}")
    if min(cfg.dagger_rounds, cfg.dagger_prompts, cfg.eval.num_examples) < 0:
        raise ValueError("dagger_rounds, dagger_prompts and eval.num_examples must be >= 0")
    check_writable(cfg.out_dir, "out_dir", directory=True)
    out = Path(cfg.out_dir)
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise ValueError(f"out_dir={cfg.out_dir} is not empty: choose a new out_dir (or overwrite=true to replace it)")
