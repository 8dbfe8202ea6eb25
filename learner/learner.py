"""The GRPO learner (an RLlib TorchLearner): everything GRPO computes from a batch of whole groups, in one place.

`update(batch)` takes the trajectories as the env runners recorded them (rollout.trajectories.learner_batch) and
1. prepares them once, before the first epoch, with the learner's own module (learner.grpo's equations):
     advantages   A_g = R_g - mean_G(R)       (a batch whose |A_g| are all below grpo.skip_zero_advantage is skipped)
                  or, with grpo.credit=value (after grpo.value_warmup updates), A_gs = R_g - V(x_gs) per step
     mixture      policy_share = G / (G + E), expert_share = 1 / (G + E) on an expert's trajectory
     proximal     log pi_old(u_s): the behaviour log-prob on steps the current weights sampled, recomputed by the
                  learner's module on stale ones (sampled by an older version: asynchronous runners)
     TIS          w_s = min(pi_old(u_s) / pi_behav(u_s), grpo.tis_cap), each on the group's mixture for experts
2. runs grpo.num_updates epochs of the clipped surrogate (compute_loss_for_module) on the whole batch, and with
   per-step credit the state value's regression onto the rewards (its own Adam, grpo.value_lr, unclipped).

The policy version is the learner's weights version (RLlib's WEIGHTS_SEQ_NO): +1 per applied update, none for a
skipped batch. `last_update` says what the last call did and the proximal log-probs it used (the dumps record them).
The learner re-runs only the small policy on the stored inputs, never the dLLM (arXiv 2512.09106 §3.3).

Columns of the batch (one row per trajectory, steps padded to T = L):
    confidences, mask, valid, action   [N, T, L]   the policy's inputs and its decision at each step
    extra_inputs                       [N, T, L, F-1]  its inputs beyond the confidence (PolicyConfig.inputs)
    t, logp, active                    [N, T]      time input, behaviour log-prob, step taken?
    alpha, reward                      [N]         the trajectory's trade-off (a conditioned policy's input), reward
    group, expert, policy_version      [N]         group index, drawn by an expert?, version that sampled it
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import DEFAULT_OPTIMIZER
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.learner.training_data import TrainingData
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

from unmask.envs.optim import adamw, warmup_cosine
from unmask.envs.seeds import seed_globals
from unmask.learner.config import GRPOConfig
from unmask.learner.grpo import (
    bounded,
    group_advantages,
    grpo_loss,
    mixture_shares,
    steered_logp,
    steered_position_logp,
    step_advantages,
    step_logp,
    truncated_importance_weights,
    value_loss,
)
from unmask.learner.module import FactorisedBernoulli, step_logits, step_values

TENSOR_DTYPES = {"group": torch.long, "policy_version": torch.long}


def per_step_mean(values: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """[N, T] -> the mean over each trajectory's active steps, then over trajectories (the surrogate's averaging)."""
    active = active.float()
    return ((values * active).sum(-1) / active.sum(-1).clamp(min=1)).mean()


@dataclass
class LastUpdate:
    """What one `update` did: skipped or applied, the policy version after it, and what each step's ratio was taken
    against ([N, T]: logp on steps the then current weights sampled, the learner's log-prob on stale ones, the
    group's mixture on an expert's)."""

    skipped: bool
    policy_version: int
    old_logp: np.ndarray


class GRPOLearner(TorchLearner):
    """GRPO (learner.grpo) as an RLlib TorchLearner, configured by the typed `config.grpo`. AdamW without decay on
    biases and norms; the warm-up + cosine schedule reads the optimizer's own step count, so restoring the
    optimizer state restores the schedule too."""

    last_update: LastUpdate | None = None

    @property
    def grpo(self) -> GRPOConfig:
        return self.config.grpo

    @property
    def policy_version(self) -> int:
        """Updates applied to these weights (RLlib's weights sequence number, saved and restored with them)."""
        return self._weights_seq_no

    def build(self) -> None:
        """RLlib's build (from .debugging(seed=...)'s seed, if one was given: the policy's initial weights), then
        init_from's weights (a restore sets its own afterwards), and a frozen copy of them when the loss anchors to
        them."""
        if getattr(self.config, "global_seed", None) is not None:
            seed_globals(self.config.global_seed)
        super().build()
        self.anchor = None
        if self.config.init_from:
            from unmask.learner.policy import load_policy

            start = load_policy(self.config.init_from, str(self.device))
            self.module[DEFAULT_MODULE_ID].policy.load_state_dict(start.state_dict())
            if self.grpo.anchor_coef:
                self.anchor = start.eval().requires_grad_(False)

    # ---- 1. prepare the batch, once ---------------------------------------------------------------------
    def update(self, batch: MultiAgentBatch | None = None, *, training_data: TrainingData | None = None, **kwargs):
        """Prepare the batch (advantages, mixture, proximal log-probs, TIS weights), then RLlib's epochs over it;
        a batch with no advantage is skipped (no step, the version stays)."""
        training_data = training_data or TrainingData(batch=batch)
        columns = training_data.batch.policy_batches[DEFAULT_MODULE_ID]
        prepared, old_logp = self.prepare({k: torch.as_tensor(np.asarray(v)).to(self.device)
                                           for k, v in columns.items()})
        if prepared is None:
            self.last_update = LastUpdate(True, self.policy_version, old_logp)
            return {}
        batch = MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(prepared)}, env_steps=len(prepared["reward"]))
        results = super().update(training_data=TrainingData(batch=batch), **kwargs)
        self.last_update = LastUpdate(False, self.policy_version, old_logp)
        return results

    @torch.no_grad()
    def prepare(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor] | None, np.ndarray]:
        """The batch with advantages, mixture shares, proximal log-probs (`old`, on the group's mixture for an
        expert's steps) and TIS weights added; None if every advantage is ~0. Also `old` as numpy [N, T] (the dumps'
        old_logp: what each step's ratio is taken against)."""
        g, tau = self.grpo, self.grpo.policy_temperature
        batch = {k: v.to(TENSOR_DTYPES[k]) if k in TENSOR_DTYPES else v for k, v in batch.items()}
        batch["policy_share"], batch["expert_share"] = mixture_shares(batch["group"], batch["expert"])
        stale = batch["policy_version"] != self.policy_version
        experts_by_position = g.expert_likelihood == "position" and bool(batch["expert"].any())
        logits = self.proximal_logits(batch) if stale.any() or experts_by_position else None
        old_logp = batch["logp"]
        if stale.any():
            recomputed = step_logp(logits, batch["action"], batch["valid"], tau, g.fallback) * batch["active"]
            old_logp = torch.where(stale[:, None], recomputed, old_logp)
        shares = batch["policy_share"], batch["expert_share"]
        if experts_by_position:  # an expert's proximal step is the per-position mixture under the current weights
            expert_old = steered_position_logp(logits, batch["action"], batch["valid"], *shares, tau)
            on_expert = batch["expert_share"][:, None] > 0
            old = torch.where(on_expert, expert_old, old_logp)
            behaviour = torch.where(on_expert, expert_old, batch["logp"])
        else:
            old, behaviour = steered_logp(old_logp, *shares), steered_logp(batch["logp"], *shares)
        recorded = (old * batch["active"]).cpu().numpy()  # what the ratio is taken against, as the dumps show it
        advantages = group_advantages(batch["reward"].float(), batch["group"], g.scale_by_std)
        value = self.module[DEFAULT_MODULE_ID].value
        if value is not None and self.policy_version >= g.value_warmup:  # per-step credit, once V has learned a little
            advantages = step_advantages(batch["reward"], step_values(value, batch), batch["active"])
        if float(advantages.abs().max()) < g.skip_zero_advantage:
            return None, recorded
        batch.update(advantages=advantages, old=old, weights=truncated_importance_weights(old, behaviour, g.tis_cap))
        if self.anchor is not None:  # what the starting policy would do at each step
            batch["anchor_logits"] = bounded(step_logits(self.anchor, batch), self.grpo.logit_bound)
        return batch, recorded

    def proximal_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[N, T, L] the learner's current unmask logits, as training draws from them (grpo.logit_bound), on every
        step a trajectory took (0 elsewhere)."""
        return bounded(step_logits(self.module[DEFAULT_MODULE_ID].policy, batch), self.grpo.logit_bound)

    # ---- 2. the loss, each epoch --------------------------------------------------------------------------
    def decision_logp(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[N, T] log-likelihood of each step's decision under `logits`: the policy's own on its trajectories, the
        group's mixture (per step, or per position with grpo.expert_likelihood=position) on an expert's."""
        g, shares = self.grpo, (batch["policy_share"], batch["expert_share"])
        if g.expert_likelihood == "position":  # per position: factorised, the fallback's term left out
            return steered_position_logp(logits, batch["action"], batch["valid"], *shares, g.policy_temperature)
        return steered_logp(step_logp(logits, batch["action"], batch["valid"], g.policy_temperature, g.fallback),
                            *shares)

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out) -> torch.Tensor:
        """GRPO's clipped surrogate against the proximal log-probs, each step weighted by its TIS weight (1 on
        steps the current weights sampled); an expert's steps clip at grpo.expert_clip_eps."""
        g = self.grpo
        logits = bounded(fwd_out[Columns.ACTION_DIST_INPUTS], g.logit_bound)
        logp = self.decision_logp(logits, batch)
        clip_eps = torch.where(batch["expert_share"] > 0, g.expert_clip_eps, g.clip_eps)
        loss, stats = grpo_loss(logp, batch["old"], batch["advantages"], batch["active"], clip_eps, batch["weights"])
        value = self.module[module_id].value
        if value is not None:  # V's regression; its parameters are disjoint from the policy's, so are the gradients
            fit = value_loss(step_values(value, batch), batch["reward"], batch["active"])
            loss, stats["value_loss"] = loss + fit, float(fit.detach())
        if g.anchor_coef or g.entropy_coef:
            policy = FactorisedBernoulli(logits, batch["valid"], g.policy_temperature)
            if g.anchor_coef:
                anchor = FactorisedBernoulli(batch["anchor_logits"], batch["valid"], g.policy_temperature)
                stats["anchor_kl"] = per_step_mean(policy.kl(anchor), batch["active"])
                loss = loss + g.anchor_coef * stats["anchor_kl"]
            if g.entropy_coef:
                stats["entropy"] = per_step_mean(policy.entropy(), batch["active"])
                loss = loss - g.entropy_coef * stats["entropy"]
            stats = {k: float(v.detach() if torch.is_tensor(v) else v) for k, v in stats.items()}
        self.metrics.log_dict(stats, key=module_id, window=1)
        return loss

    # ---- the optimiser ------------------------------------------------------------------------------------
    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        """The policy's AdamW (grpo.lr, warm-up + cosine) and, with per-step credit, the state value's own Adam."""
        module = self.module[module_id]
        optimizer = adamw(module.policy.parameters(), self.grpo.lr, self.grpo.weight_decay, self.grpo.adam_betas)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.register_optimizer(module_id=module_id, optimizer=optimizer, params=params)
        if module.value is not None:
            params = list(module.value.parameters())
            self.register_optimizer(module_id=module_id, optimizer_name="value", params=params,
                                    optimizer=torch.optim.Adam(params, lr=self.grpo.value_lr))
        self._lr_multiplier = warmup_cosine(self.grpo.warmup_steps, self.grpo.total_steps)

    def policy_optimizer(self, module_id=DEFAULT_MODULE_ID) -> torch.optim.Optimizer:
        return dict(self.get_optimizers_for_module(module_id))[DEFAULT_OPTIMIZER]

    def optimizer_steps(self) -> int:
        for state in self.policy_optimizer().state.values():
            if "step" in state:
                return int(state["step"])
        return 0

    def postprocess_gradients_for_module(self, *, module_id, config=None, module_gradients_dict):
        """grpo.grad_clip bounds the policy's gradient norm alone: the state value's regression (per-step credit) has
        its own scale and would otherwise shrink the policy's steps."""
        policy = self.filter_param_dict_for_optimizer(module_gradients_dict, self.policy_optimizer(module_id))
        rest = {ref: grad for ref, grad in module_gradients_dict.items() if ref not in policy}
        policy = super().postprocess_gradients_for_module(module_id=module_id, config=config,
                                                          module_gradients_dict=policy)
        return {**policy, **rest}

    def apply_gradients(self, gradients_dict) -> None:
        lr = self.grpo.lr * self._lr_multiplier(self.optimizer_steps())
        for group in self.policy_optimizer().param_groups:
            group["lr"] = lr
        super().apply_gradients(gradients_dict)
        self.metrics.log_value("lr", lr, window=1)
