"""Expert steering (arXiv 2512.09106 §3.3, App. F): E of a group's G + E members decode by experts instead of the
policy, Fast-dLLM thresholding at one lambda each, in semi-AR blocks of their own inside the env's canvas. The
policy scores each expert decision over every masked position (block-agnostic, as the reference), and the learner
takes an expert's steps through the group's mixture likelihood (learner.learner). The policy and its sampler know
nothing of experts: the rollout loop hands the expert rows' decisions over the policy's (rollout.collect)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from unmask.envs.config import SamplerConfig
from unmask.envs.mdp import Observation
from unmask.envs.samplers import FastDLLMThreshold, InBlocks, Sampler


class ExpertSteering:
    """Which rows experts decide, and their decisions. Trajectory n of a rollout is member n % (G + E) of group
    n // (G + E); members G.. G + E - 1 are the experts, in the order of `experts`."""

    def __init__(self, experts: Sequence[Sampler], block_length: int, group_size: int):
        self.experts = [InBlocks(e, block_length) for e in experts]
        self.block_length, self.group_size = block_length, group_size

    @classmethod
    def fast_dllm(cls, thresholds: Sequence[float], block_length: int, group_size: int) -> ExpertSteering | None:
        """One Fast-dLLM expert per lambda (None: no thresholds, no steering)."""
        if not thresholds:
            return None
        return cls([FastDLLMThreshold(SamplerConfig(name="fast_dllm", threshold=x)) for x in thresholds],
                   block_length, group_size)

    @property
    def members(self) -> int:
        return self.group_size + len(self.experts)

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f for e in self.experts for f in e.features))

    def decide(self, obs: Observation, trajectories: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """`action` [B, L] with the rows of expert members (trajectories [B]: the trajectory in each row) replaced by
        their expert's decision, each in its own leftmost block of `block_length`."""
        decisions = torch.stack([e.select(obs) for e in self.experts]).to(action.device)
        which = (trajectories % self.members - self.group_size).to(action.device)
        rows = torch.arange(len(trajectories), device=action.device)
        decision = decisions[which.clamp(min=0), rows] & obs.valid.to(action.device)
        return torch.where((which >= 0)[:, None], decision, action)
