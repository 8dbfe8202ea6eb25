"""The policy as RLlib pieces (new API stack): its action distribution, RLModule and GRPO Learner.

Rows of a training batch are whole trajectories, padded to T = L steps:
    confidence, masked, valid, action  [N, T, L]     the policy's inputs and its decision per step
    t, old_logp, active                [N, T]        time input, behaviour log-prob, step taken?
    advantages                         [N]           from learner.grpo.group_advantages (whole groups)
The learner re-runs only the small policy on the stored inputs, never the dLLM (paper.md §4).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from omegaconf import OmegaConf
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDistribution
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.rl_module.torch import TorchRLModule

from learner.config import GRPOConfig
from learner.grpo import bernoulli_logp, grpo_loss
from learner.policy import PolicyConfig, UnmaskingPolicy


def grpo_config(data: dict | GRPOConfig) -> GRPOConfig:
    """The typed config from the plain dict RLlib carries (learner_config_dict)."""
    if isinstance(data, GRPOConfig):
        return data
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(GRPOConfig), data))


class FactorisedBernoulli(TorchDistribution):
    """Independent Bernoulli(sigmoid(b / tau)) per position; positions outside `valid` (unmasked, or
    outside the current block) are never chosen and add nothing to log-probs or entropies."""

    def __init__(self, logits: torch.Tensor, valid: torch.Tensor | None = None, temperature: float = 1.0):
        self.logits, self.temperature = logits.float(), temperature
        self.valid = torch.ones_like(self.logits, dtype=torch.bool) if valid is None else valid.bool()
        self.probs = torch.sigmoid(self.logits / temperature)

    def _get_torch_distribution(self, *args, **kwargs):
        return torch.distributions.Bernoulli(probs=self.probs)

    def sample(self, *, sample_shape=(), generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.rand(self.probs.shape, generator=generator, device=self.probs.device)
        return (noise < self.probs) & self.valid

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
    """Wraps learner.policy.UnmaskingPolicy; `model_config` holds PolicyConfig's fields."""

    def setup(self) -> None:
        self.policy = UnmaskingPolicy(PolicyConfig(**dict(self.model_config or {})))

    def get_inference_action_dist_cls(self):
        return FactorisedBernoulli

    def get_exploration_action_dist_cls(self):
        return FactorisedBernoulli

    def get_train_action_dist_cls(self):
        return FactorisedBernoulli

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        confidence, masked, t = batch["confidence"], batch["masked"], batch["t"]
        L = confidence.shape[-1]
        logits = self.policy(confidence.reshape(-1, L), masked.reshape(-1, L), t.reshape(-1))
        return {Columns.ACTION_DIST_INPUTS: logits.reshape(confidence.shape)}

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        """Only the steps a trajectory actually took go through the network."""
        active = batch["active"].bool()
        logits = torch.zeros(batch["confidence"].shape, device=active.device)
        if active.any():
            logits[active] = self.policy(batch["confidence"][active], batch["masked"][active], batch["t"][active])
        return {Columns.ACTION_DIST_INPUTS: logits}


def cosine_lr(step: int, cfg: GRPOConfig) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.total_steps - cfg.warmup_steps))
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


class GRPOLearner(TorchLearner):
    """GRPO (learner.grpo) as an RLlib TorchLearner. AdamW without decay on biases and norms (as HF's
    Trainer, which the paper's TRL code uses); the cosine schedule reads the optimizer's own step count,
    so restoring the optimizer state restores the schedule too."""

    @property
    def grpo(self) -> GRPOConfig:
        if not hasattr(self, "_grpo"):
            self._grpo = grpo_config(self.config.learner_config_dict)
        return self._grpo

    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        module = self.module[module_id]
        decay = [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": self.grpo.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=self.grpo.lr, betas=tuple(self.grpo.adam_betas))
        self.register_optimizer(module_id=module_id, optimizer=optimizer, params=decay + no_decay)

    def optimizer_steps(self) -> int:
        for optimizer in self._named_optimizers.values():
            for state in optimizer.state.values():
                if "step" in state:
                    return int(state["step"])
        return 0

    def apply_gradients(self, gradients_dict) -> None:
        lr = cosine_lr(self.optimizer_steps(), self.grpo)
        for optimizer in self._named_optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = lr
        super().apply_gradients(gradients_dict)
        self.metrics.log_value("lr", lr, window=1)

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out) -> torch.Tensor:
        logits = fwd_out[Columns.ACTION_DIST_INPUTS]
        logp = bernoulli_logp(logits, batch["action"], batch["valid"], self.grpo.policy_temperature)
        loss, stats = grpo_loss(logp, batch["old_logp"], batch["advantages"], batch["active"], self.grpo.clip_eps)
        self.metrics.log_dict(stats, key=module_id, window=1)
        return loss
