"""Optimiser pieces shared by dLLM pretraining (envs.pretrain) and the GRPO learner (learner.module)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup


def adamw(parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
          betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: biases, norms and other vectors are not decayed (as Hugging
    Face's Trainer, which the paper's TRL code uses, and nanoGPT)."""
    params = [p for p in parameters if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                             lr=lr, betas=tuple(betas))


def warmup_cosine(warmup_steps: int, total_steps: int, min_lr_rate: float = 0.0) -> Callable[[int], float]:
    """step -> learning-rate multiplier: transformers' linear warm-up then cosine decay to `min_lr_rate` at
    `total_steps`, held there afterwards. A function of the step alone, so a run restored at step s (the
    optimizer's own count) is exactly where the schedule says."""
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    multiplier = get_cosine_with_min_lr_schedule_with_warmup(probe, warmup_steps, total_steps,
                                                             min_lr_rate=min_lr_rate).lr_lambdas[0]
    return lambda step: multiplier(min(step, total_steps))
