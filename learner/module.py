"""The policy as RLlib pieces (new API stack): its action distribution, RLModule and GRPO Learner.

Rows of a training batch are whole trajectories (rollout.trajectories.TrajectoryBatch.learner_columns),
padded to T = L steps, under their trajectory-schema names:
    confidences, mask, valid, action   [N, T, L]     the policy's inputs and its decision per step
    t, logp, active                    [N, T]        time input, behaviour log-prob, step taken?
    old_logp                           [N, T]        the proximal policy's log-prob (= logp on-policy)
    alpha                              [N]           the trajectory's trade-off (an alpha-conditioned policy's input)
    policy_share, expert_share         [N]           mixture weights G/(G+E), 1/(G+E) (0: the policy's trajectory)
    advantages                         [N]           from learner.grpo.group_advantages (whole groups)
The learner re-runs only the small policy on the stored inputs, never the dLLM (paper.md §4).
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDistribution
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.rl_module.torch import TorchRLModule

from envs.optim import adamw, warmup_cosine
from learner.config import GRPOConfig, PolicyConfig
from learner.grpo import (
    bernoulli_logp,
    bernoulli_sample,
    grpo_loss,
    steered_logp,
    steered_position_logp,
    truncated_importance_weights,
    unmask_probabilities,
)
from learner.policy import UnmaskingPolicy


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


class UnmaskRLModule(TorchRLModule):
    """Wraps learner.policy.UnmaskingPolicy; `model_config` holds PolicyConfig's fields (UnmaskGRPOConfig
    puts `grpo.policy` there)."""

    def setup(self) -> None:
        fields = PolicyConfig.__dataclass_fields__
        self.policy = UnmaskingPolicy(PolicyConfig(**{k: v for k, v in (self.model_config or {}).items()
                                                      if k in fields}))

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
        """Only the steps a trajectory actually took go through the network (each at its trajectory's alpha)."""
        active = batch["active"].bool()
        logits = torch.zeros(batch["confidences"].shape, device=active.device)
        if active.any():
            alpha = batch["alpha"][:, None].expand(active.shape)[active] if "alpha" in batch else None
            logits[active] = self.policy(batch["confidences"][active], batch["mask"][active], batch["t"][active],
                                         alpha)
        return {Columns.ACTION_DIST_INPUTS: logits}


class GRPOLearner(TorchLearner):
    """GRPO (learner.grpo) as an RLlib TorchLearner, configured by the typed `config.grpo`. AdamW without
    decay on biases and norms; the warm-up + cosine schedule reads the optimizer's own step count, so
    restoring the optimizer state restores the schedule too."""

    @property
    def grpo(self) -> GRPOConfig:
        return self.config.grpo

    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        module = self.module[module_id]
        optimizer = adamw(module.parameters(), self.grpo.lr, self.grpo.weight_decay, self.grpo.adam_betas)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.register_optimizer(module_id=module_id, optimizer=optimizer, params=params)
        self._lr_multiplier = warmup_cosine(self.grpo.warmup_steps, self.grpo.total_steps)

    def optimizer_steps(self) -> int:
        for optimizer in self._named_optimizers.values():
            for state in optimizer.state.values():
                if "step" in state:
                    return int(state["step"])
        return 0

    def apply_gradients(self, gradients_dict) -> None:
        lr = self.grpo.lr * self._lr_multiplier(self.optimizer_steps())
        for optimizer in self._named_optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = lr
        super().apply_gradients(gradients_dict)
        self.metrics.log_value("lr", lr, window=1)

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out) -> torch.Tensor:
        """GRPO's clipped surrogate against the proximal policy's log-probs (`old_logp`: the behaviour ones for
        on-policy steps, the learner's at arrival for stale ones), each step weighted by its truncated importance
        weight (1 on-policy). An expert's steps enter through the group's mixture likelihood, clipped at
        grpo.expert_clip_eps."""
        logits, tau = fwd_out[Columns.ACTION_DIST_INPUTS], self.grpo.policy_temperature
        shares = batch["policy_share"], batch["expert_share"]
        old_logp, behaviour_logp = batch["old_logp"], batch["logp"]
        if "old_logits" in batch:  # grpo.expert_likelihood=position; an expert's old step is the proximal policy's
            expert = shares[1][:, None] > 0
            logp, old = (steered_position_logp(x, batch["action"], batch["valid"], *shares, tau)
                         for x in (logits, batch["old_logits"]))
            old_logp, behaviour_logp = torch.where(expert, old, old_logp), torch.where(expert, old, behaviour_logp)
        else:
            logp = bernoulli_logp(logits, batch["action"], batch["valid"], tau)
            logp, old_logp, behaviour_logp = (steered_logp(x, *shares) for x in (logp, old_logp, behaviour_logp))
        weights = truncated_importance_weights(old_logp, behaviour_logp, self.grpo.tis_cap)
        clip_eps = torch.where(batch["expert_share"] > 0, self.grpo.expert_clip_eps, self.grpo.clip_eps)
        loss, stats = grpo_loss(logp, old_logp, batch["advantages"], batch["active"], clip_eps, weights)
        self.metrics.log_dict(stats, key=module_id, window=1)
        return loss
