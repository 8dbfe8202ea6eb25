"""Structured config of the rollout side: which dLLM environment an env runner hosts and what it samples."""

from __future__ import annotations

from dataclasses import dataclass, field

from envs.config import EnvConfig, TaskConfig


@dataclass
class RolloutConfig:
    model: str = "builtin"  # a local HF directory or hub id; "builtin" = the shipped dLLM
    task: TaskConfig = field(default_factory=TaskConfig)
    env: EnvConfig = field(default_factory=EnvConfig)  # env.batch_size is unused: one sample = one batch
    group_size: int = 8  # G: rollouts per prompt
    prompts_per_sample: int = 8  # prompts in one env-runner sample (prompts x G sequences, one batched env)
    train_pool: int = 20_000  # training prompts an env runner draws from (reshuffled each pass)
    seed: int = 0
    trust_remote_code: bool = False


def check_rollout(cfg: RolloutConfig) -> None:
    if cfg.group_size < 2:
        raise ValueError(f"rollout.group_size must be >= 2 (GRPO compares rollouts of one prompt), "
                         f"got {cfg.group_size}")
    if cfg.prompts_per_sample < 1 or cfg.train_pool < 1:
        raise ValueError("rollout.prompts_per_sample and rollout.train_pool must be >= 1")
