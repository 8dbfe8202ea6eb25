"""Imitation: fit the unmasking policy to a teacher's decisions (behaviour cloning), so that GRPO starts on the
heuristics' frontier instead of from scratch.

A state s holds the policy's inputs and the teacher's decision D (the positions it commits; |D| >= 1). Evaluation
decodes by the Bernoulli draw with the argmax fallback (learner.grpo.fallback_sample), and the loss is that rule's
likelihood of D, with the argmax relaxed to a softmax so that it has a gradient:

    P(D) = prod_{k in V} p_k^{[k in D]} (1 - p_k)^{[k not in D]}  +  [D = {j}] prod_{k in V} (1 - p_k) softmax_V(b)_j

    loss = - mean_s log P(D_s)

The first term teaches which positions to draw, the second the fallback's choice when nothing is drawn: a teacher's
forced commit (Fast-dLLM's "always the block's most confident position", which a per-position Bernoulli cannot
express, since it depends on the whole block) is learnt as a ranking, so that the fallback picks it. Class
balance is the likelihood's own: each step counts once, whatever its number of positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from unmask.envs.optim import adamw, warmup_cosine
from unmask.learner.grpo import bernoulli_position_logp
from unmask.learner.policy import UnmaskingPolicy

STATE_FIELDS = ("inputs", "masked", "valid", "t", "alpha", "target")  # a state dataset's tensors, [S, ...]


def imitation_logp(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                   temperature: float = 1.0, keep_weight: float = 1.0) -> torch.Tensor:
    """[S] log P(target) under evaluation's rule, its argmax relaxed to a softmax over the valid positions.
    keep_weight > 1 counts each "keep masked" decision that many times (a weighted likelihood): the student then
    commits only where it is surer than the teacher, which a student needs when its teacher sees what it cannot."""
    valid, target = valid.bool(), target.bool() & valid.bool()
    b = logits.float() / temperature
    kept = torch.where(target, 1.0, keep_weight) * valid.float()
    drawn = (bernoulli_position_logp(logits, target, temperature) * kept).sum(-1)
    nothing = keep_weight * (F.logsigmoid(-b) * valid.float()).sum(-1)
    ranked = torch.log_softmax(torch.where(valid, b, -torch.inf), dim=-1)
    chosen = ranked.gather(-1, target.float().argmax(-1, keepdim=True))[..., 0]
    return torch.where(target.sum(-1) == 1, torch.logaddexp(drawn, nothing + chosen), drawn)


def fit(policy: UnmaskingPolicy, states: dict[str, torch.Tensor], steps: int, *, lr: float = 1e-3,
        batch_size: int = 256, weight_decay: float = 0.0, keep_weight: float = 1.0,
        generator: torch.Generator | None = None, on_step: Callable[[int, float], None] | None = None) -> float:
    """`steps` AdamW steps (warm-up, then cosine to 0) of the imitation loss on minibatches of states drawn without
    replacement; returns the last 50 steps' mean loss. on_step(step, loss) after each (progress, interrupts)."""
    optimizer = adamw(policy.parameters(), lr, weight_decay, (0.9, 0.99))
    schedule = warmup_cosine(min(100, steps // 10), steps)
    device = next(policy.parameters()).device
    policy.train()
    recent: list[float] = []
    order = torch.randperm(len(states["target"]), generator=generator)
    cursor = 0
    for step in range(steps):
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(order), generator=generator), 0
        rows = order[cursor : cursor + batch_size]
        cursor += batch_size
        batch = {k: v[rows].to(device) for k, v in states.items()}
        alpha = batch["alpha"] if policy.config.alpha_conditioned else None
        logits = policy(batch["inputs"], batch["masked"], batch["t"], alpha)
        loss = -imitation_logp(logits, batch["target"], batch["valid"], keep_weight=keep_weight).mean()
        for group in optimizer.param_groups:
            group["lr"] = lr * schedule(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        recent = [*recent[-49:], float(loss.detach())]
        if on_step is not None:
            on_step(step, recent[-1])
    policy.eval()
    return sum(recent) / max(1, len(recent)) if recent else math.nan
