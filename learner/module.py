"""The policy as RLlib pieces (new API stack): its action distribution and its RLModule (the GRPO Learner is
learner.learner). A training batch's rows are whole trajectories, padded to T = L steps (learner.learner's columns).
With per-step credit (grpo.credit=value) the module also holds a learned state value, the baseline of each step's
advantage; only the learner uses it (the runners receive the policy's weights alone).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDistribution
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

from unmask.learner.config import PolicyConfig
from unmask.learner.grpo import bernoulli_logp, bernoulli_sample, unmask_probabilities
from unmask.learner.policy import UnmaskingPolicy


class FactorisedBernoulli(TorchDistribution):
    """Independent Bernoulli(sigmoid(b / tau)) per position (learner.grpo's sample and log-prob); positions
    outside `valid` (unmasked, or outside the current block) are never chosen and add nothing to log-probs
    or entropies."""

    def __init__(self, logits: torch.Tensor, valid: torch.Tensor | None = None, temperature: float = 1.0):
        self.logits, self.temperature = logits.float(), temperature
        self.valid = torch.ones_like(self.logits, dtype=torch.bool) if valid is None else valid.bool()
        self.probs = unmask_probabilities(self.logits, temperature)

    def _get_torch_distribution(self, *args, **kwargs):
        return torch.distributions.Bernoulli(probs=self.probs)

    def sample(self, *, sample_shape=(), generator: torch.Generator | None = None) -> torch.Tensor:
        return bernoulli_sample(self.logits, self.valid, self.temperature, generator)

    def rsample(self, **kwargs):
        raise NotImplementedError("Bernoulli decisions have no reparameterised sample")

    def logp(self, action: torch.Tensor) -> torch.Tensor:
        return bernoulli_logp(self.logits, action, self.valid, self.temperature)

    def entropy(self) -> torch.Tensor:
        p = self.probs.clamp(1e-7, 1 - 1e-7)
        per_position = -(p * p.log() + (1 - p) * (1 - p).log())
        return (per_position * self.valid).sum(-1)

    def kl(self, other: FactorisedBernoulli) -> torch.Tensor:
        p, q = self.probs.clamp(1e-7, 1 - 1e-7), other.probs.clamp(1e-7, 1 - 1e-7)
        per_position = p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()
        return (per_position * self.valid).sum(-1)

    @staticmethod
    def required_input_dim(space, **kwargs) -> int:
        return int(space.n)

    @classmethod
    def from_logits(cls, logits: torch.Tensor, **kwargs) -> FactorisedBernoulli:
        return cls(logits, **kwargs)


class StateValue(nn.Module):
    """V(s): the expected reward from a decoding state, read from the policy's own inputs by a network of the policy's
    shape whose per-position outputs are averaged (attention lets every position see the whole canvas). The baseline
    of per-step credit (learner.grpo.step_advantages)."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.net = UnmaskingPolicy(replace(config, init_bias=0.0))

    def forward(self, inputs: torch.Tensor, masked: torch.Tensor, t: torch.Tensor,
                alpha: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(inputs, masked, t, alpha).mean(-1)


class UnmaskRLModule(TorchRLModule):
    """Wraps learner.policy.UnmaskingPolicy; `model_config` holds PolicyConfig's fields (UnmaskGRPOConfig
    puts the run's `policy` there) and `value_baseline` (grpo.credit=value: a StateValue beside the policy)."""

    def setup(self) -> None:
        fields = PolicyConfig.__dataclass_fields__
        config = PolicyConfig(**{k: v for k, v in (self.model_config or {}).items() if k in fields})
        self.policy = UnmaskingPolicy(config)
        self.value = StateValue(config) if (self.model_config or {}).get("value_baseline") else None

    def get_inference_action_dist_cls(self):
        return FactorisedBernoulli

    def get_exploration_action_dist_cls(self):
        return FactorisedBernoulli

    def get_train_action_dist_cls(self):
        return FactorisedBernoulli

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        confidences, mask, t = batch["confidences"], batch["mask"], batch["t"]
        L = confidences.shape[-1]
        alpha = batch.get("alpha")
        alpha = None if alpha is None else alpha.reshape(-1, *[1] * (t.dim() - 1)).expand(t.shape).reshape(-1)
        logits = self.policy(confidences.reshape(-1, L), mask.reshape(-1, L), t.reshape(-1), alpha)
        return {Columns.ACTION_DIST_INPUTS: logits.reshape(confidences.shape)}

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: step_logits(self.policy, batch)}


def on_active_steps(network: nn.Module, batch: dict[str, Any], shape: torch.Size) -> torch.Tensor:
    """`network` (the policy, or the state value) on a batch of trajectories: only the steps a trajectory actually took
    go through it, each with its inputs and its trajectory's alpha; `shape` ([N, T, L] or [N, T]) is 0 elsewhere."""
    active = batch["active"].bool()
    out = torch.zeros(shape, device=active.device)
    if active.any():
        inputs = batch["confidences"][active]
        if "extra_inputs" in batch and batch["extra_inputs"].shape[-1]:  # the policy reads more than the confidence
            inputs = torch.cat([inputs[..., None], batch["extra_inputs"][active]], dim=-1)
        alpha = batch["alpha"][:, None].expand(active.shape)[active] if "alpha" in batch else None
        out[active] = network(inputs, batch["mask"][active], batch["t"][active], alpha)
    return out


def step_logits(policy: UnmaskingPolicy, batch: dict[str, Any]) -> torch.Tensor:
    """[N, T, L] `policy`'s unmask logits on every step a trajectory took (0 elsewhere)."""
    return on_active_steps(policy, batch, batch["confidences"].shape)


def step_values(value: StateValue, batch: dict[str, Any]) -> torch.Tensor:
    """[N, T] V(s) of every state a trajectory decided in (0 elsewhere)."""
    return on_active_steps(value, batch, batch["active"].shape)
