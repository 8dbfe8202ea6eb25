"""Evaluate a grid of samplers in semi-AR and full-diffusion mode: the accuracy-vs-NFE picture."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from envs.config import EnvConfig, SamplerConfig, TaskConfig
from envs.dllm import load_env_dllm
from envs.samplers import make_sampler
from envs.tasks import make_task
from learner import sampler as _policy_sampler  # noqa: F401  registers sampler=policy for `policies`
from rollout.evaluate import run_episodes, summarize


@dataclass
class ParetoConfig:
    model: str = "builtin"
    task: TaskConfig = field(default_factory=TaskConfig)
    env: EnvConfig = field(default_factory=EnvConfig)  # env.block_length is not used: see block_lengths
    block_lengths: list[int] = field(default_factory=lambda: [4, 8])  # semi-AR; full diffusion (L) is always added
    grid: str = "default"  # default | small
    policies: list[str] = field(default_factory=list)  # saved policy directories, evaluated beside the heuristics
    num_examples: int = 500
    split: str = "test"
    seed: int = 0
    out_dir: str = "runs/pareto"
    progress: bool = True
    trust_remote_code: bool = False


def default_grid(gen_length: int, num_blocks: int, size: str = "default") -> list[SamplerConfig]:
    """The heuristics and their settings, from slow-and-careful to fast."""
    steps = [s for s in (gen_length, gen_length // 2, gen_length // 4, gen_length // 8)
             if s >= num_blocks and s % num_blocks == 0]
    grid = [SamplerConfig(name="top_k", steps=s) for s in steps]
    grid += [SamplerConfig(name="fast_dllm", threshold=x) for x in (0.99, 0.95, 0.9, 0.8, 0.7, 0.5)]
    if size == "small":
        return grid
    grid += [SamplerConfig(name="fast_dllm_factor", factor=f) for f in (0.25, 0.5, 1.0, 2.0)]
    grid += [SamplerConfig(name="margin", steps=s) for s in steps[:3]]
    grid += [SamplerConfig(name="entropy", steps=s) for s in steps[:3]]
    grid += [SamplerConfig(name="eb", gamma=g) for g in (0.01, 0.1, 0.5, 1.0)]
    grid += [SamplerConfig(name="random", k=k) for k in (1, 2, 4)]
    return grid


def run_pareto(cfg: ParetoConfig, dllm=None) -> list[dict]:
    """One row per (block length, sampler setting)."""
    task = make_task(cfg.task)
    dllm = dllm or load_env_dllm(cfg.model, cfg.env, trust_remote_code=cfg.trust_remote_code)
    examples = task.examples(cfg.split, cfg.num_examples, seed=cfg.seed)
    jobs = []
    block_lengths = sorted(set(cfg.block_lengths) | {cfg.env.gen_length})
    for block_length in block_lengths:
        env_cfg = dataclasses.replace(cfg.env, block_length=block_length)
        if block_length <= 0 or env_cfg.gen_length % block_length:
            raise ValueError(f"block_lengths entry {block_length} does not divide env.gen_length={env_cfg.gen_length}")
        for sampler_cfg in default_grid(env_cfg.gen_length, env_cfg.gen_length // block_length, cfg.grid):
            jobs.append((env_cfg, sampler_cfg))
        for checkpoint in cfg.policies:
            jobs.append((env_cfg, SamplerConfig(name="policy", checkpoint=checkpoint)))
    rows = []
    for env_cfg, sampler_cfg in tqdm(jobs, desc="pareto", disable=not cfg.progress):
        sampler = make_sampler(sampler_cfg, torch.Generator(device=dllm.device).manual_seed(cfg.seed))
        episodes = run_episodes(dllm, task, examples, sampler, env_cfg, seed=cfg.seed)
        mode = "full diffusion" if env_cfg.block_length == env_cfg.gen_length else "semi-AR"
        rows.append({"mode": mode, "block_length": env_cfg.block_length, "sampler": sampler_cfg.name,
                     "setting": sampler.describe(), **summarize(episodes, env_cfg.gen_length)})
    return rows
