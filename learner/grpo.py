"""Reward, group-relative advantage and the clipped GRPO surrogate (arXiv 2512.09106 §3.3, Eq. 3.1), on one screen.

Notation: a group holds G trajectories of the same prompt; trajectory g has steps s = 1..T_g, each with
valid positions V_s (masked, in the current block), a Bernoulli action u_s in {0,1}^V_s, the behaviour
log-probability stored at rollout time and the policy's logits b_s.

    reward       R   = correct * ((L - NFE + 1) / L) ** alpha          (multiplicative, the default)
                 R   = correct - alpha * NFE / L                        (additive, the ablation)
    advantage    A_g = R_g - mean_G(R)               (optionally / std_G(R))
                 A_gs = R_g - V(x_gs)                 per-step credit (grpo.credit=value): V a learned state value,
                                                      so the step that lost what its state promised carries the loss
    decision     u_k ~ Bernoulli(p_k = sigma(b_k / tau)) for k in V_s, else 0   (tau: the policy temperature);
                 with the argmax fallback (grpo.fallback, evaluation's rule): an empty draw commits argmax p instead
    log-prob     log pi(u_s) = sum_{k in V_s} u_k log p_k + (1 - u_k) log(1 - p_k)
                 (fallback: log of that + [u_s = {argmax p}] prod_k (1 - p_k), exact: every decision's sums to 1)
    ratio        rho_s = exp(log pi(u_s) - log pi_old(u_s))
    loss         -(1/N) sum_g (1/|S_g|) sum_{s in S_g} w_s min(rho_s A_g, clip(rho_s, 1 - eps, 1 + eps) A_g)
                 (+ (1/N) sum_g (1/|S_g|) sum_s (V(x_gs) - R_g)^2 with per-step credit: V's own regression)

S_g are the trajectory's active steps (those with a non-empty valid set); w_s = 1 on-policy. For a step sampled
by an older policy pi_behav (asynchronous runners), pi_old is the learner's policy when the batch arrives (the
proximal policy) and the step is importance-weighted by the truncated ratio (TIS)

    weight       w_s = min(pi_old(u_s) / pi_behav(u_s), C)

Expert steering (arXiv 2512.09106 App. F): E of a group's G + E members are experts' trajectories (Fast-dLLM
thresholding, one lambda each, in semi-AR blocks). They join the group for the advantage; their steps' likelihood,
in every ratio and weight above, is the group's mixture, with the policy's likelihood of the expert's decision over
all masked positions:

    mixture      pi_mix(u_s) = G / (G + E) * pi(u_s) + 1 / (G + E) * delta_expert(u_s)   (delta = 1 on its own step)
    clip         eps_expert (grpo.expert_clip_eps) instead of eps

A policy step is taken as pi alone (delta_expert of a policy's decision is ~0). One alpha-conditioned policy
draws alpha per group, log-uniformly from [lo, hi]; each group's reward uses its own alpha.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reward(correct: torch.Tensor, nfe: torch.Tensor, gen_length: int, alpha: float | torch.Tensor,
           kind: str = "multiplicative") -> torch.Tensor:
    """alpha: one trade-off, or one per trajectory ([N]: each group's own)."""
    correct, nfe = correct.float(), nfe.float().clamp(max=gen_length)
    if kind == "multiplicative":
        return correct * ((gen_length - nfe + 1) / gen_length) ** alpha
    if kind == "additive":
        return correct - alpha * nfe / gen_length
    raise ValueError(f"unknown reward kind {kind!r}: use multiplicative or additive")


def draw_alphas(alpha_range: list[float], count: int, generator: torch.Generator) -> torch.Tensor:
    """[count] trade-offs, log-uniform on [lo, hi]: as many groups at alpha in [0.3, 1] as in [1, 3]."""
    lo, hi = (float(a) for a in alpha_range)
    u = torch.rand(count, generator=generator, device=generator.device).cpu().double()
    return torch.exp(torch.log(torch.tensor(lo, dtype=torch.float64)) * (1 - u)
                     + torch.log(torch.tensor(hi, dtype=torch.float64)) * u).float()


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, scale_by_std: bool = False,
                     eps: float = 1e-6) -> torch.Tensor:
    """R - mean of its group (GRPO); the paper does not divide by the std (option)."""
    groups, index = torch.unique(group_ids, return_inverse=True)
    count = torch.zeros(len(groups), device=rewards.device).index_add_(0, index, torch.ones_like(rewards))
    mean = torch.zeros(len(groups), device=rewards.device).index_add_(0, index, rewards) / count
    adv = rewards - mean[index]
    if scale_by_std:
        # unbiased std, as torch.std in TRL's GRPO
        var = torch.zeros(len(groups), device=rewards.device).index_add_(0, index, adv**2) / (count - 1).clamp(min=1)
        adv = adv / (var[index].sqrt() + eps)
    return adv


def step_advantages(rewards: torch.Tensor, values: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """[N, T] A_gs = R_g - V(x_gs): each step's reward over what its state was worth before it decided (the Monte-Carlo
    return of a terminal reward, with a learned baseline). A trajectory-level advantage gives ~11 steps of ~10
    decisions the same credit; here a step whose state was already lost gets ~0 and the step that lost it gets the
    blame. 0 on steps not taken."""
    return (rewards.float()[:, None] - values) * active.float()


def value_loss(values: torch.Tensor, rewards: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """V's regression onto the reward each of its states led to, averaged as the surrogate is (per trajectory, then
    over trajectories)."""
    active = active.float()
    squared = (values - rewards.float()[:, None]) ** 2 * active
    return (squared.sum(-1) / active.sum(-1).clamp(min=1)).mean()


def bounded(logits: torch.Tensor, bound: float) -> torch.Tensor:
    """Training's logits, softly kept within +-bound (bound * tanh(b / bound); 0: unchanged): every valid position
    keeps a chance of at least sigmoid(-bound) to be drawn and of being left, so a policy cloned into near-certain
    decisions still explores (evaluation decodes with the logits themselves)."""
    return bound * torch.tanh(logits / bound) if bound else logits


def unmask_probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """sigma(b / tau): each position's probability of being unmasked."""
    return torch.sigmoid(logits.float() / temperature)


def bernoulli_sample(logits: torch.Tensor, valid: torch.Tensor, temperature: float = 1.0,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """One factorised Bernoulli decision per valid position ([..., L] bool); invalid ones are never chosen."""
    probs = unmask_probabilities(logits, temperature)
    noise = torch.rand(probs.shape, generator=generator, device=probs.device)
    return (noise < probs) & valid.bool()


def bernoulli_position_logp(logits: torch.Tensor, action: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Each position's log-likelihood of its decision, [..., L]: log sigma(b) if unmasked, log(1 - sigma(b)) =
    log sigma(-b) if kept, computed stably in float32."""
    b = logits.float() / temperature
    return torch.where(action.bool(), F.logsigmoid(b), F.logsigmoid(-b))


def bernoulli_logp(logits: torch.Tensor, action: torch.Tensor, valid: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """Joint log-likelihood of the per-position decisions over the valid positions: [..., L] -> [...]."""
    return (bernoulli_position_logp(logits, action, temperature) * valid.float()).sum(-1)


def mixed_logp(logp: torch.Tensor, policy_share: torch.Tensor, expert_share: torch.Tensor) -> torch.Tensor:
    """log(policy_share * exp(logp) + expert_share) where expert_share > 0 (an expert's), logp elsewhere; the
    shares broadcast against logp."""
    mixed = torch.logaddexp(logp + policy_share.float().clamp(min=1e-30).log(),
                            expert_share.float().clamp(min=1e-30).log())
    return torch.where(expert_share > 0, mixed, logp)


def mixture_shares(group: torch.Tensor, expert: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N] G/(G+E) and, on an expert's trajectory, 1/(G+E) (0 on the policy's), from each group's members (group:
    [N] ids, expert: [N] bool): the weights of the group's mixture likelihood."""
    _, index, size = torch.unique(group, return_inverse=True, return_counts=True)
    experts = torch.zeros(len(size), dtype=torch.float64, device=group.device).index_add_(0, index, expert.double())
    members = size[index].double()
    policy_share = (members - experts[index]) / members
    expert_share = torch.where(expert.bool(), 1.0 / members, torch.zeros_like(members))
    return policy_share.float(), expert_share.float()


def fallback_sample(logits: torch.Tensor, valid: torch.Tensor, temperature: float = 1.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Evaluation's rule (the paper's `bernoulli-argmax`) as a training decision: a Bernoulli draw per valid
    position, and where it draws nothing, the most likely valid position."""
    action = bernoulli_sample(logits, valid, temperature, generator)
    empty = valid.any(-1) & ~action.any(-1)
    best = torch.where(valid.bool(), logits.float(), -torch.inf).argmax(-1, keepdim=True)
    return action | (empty[..., None] & (torch.arange(valid.shape[-1], device=valid.device) == best))


def fallback_logp(logits: torch.Tensor, action: torch.Tensor, valid: torch.Tensor,
                  temperature: float = 1.0) -> torch.Tensor:
    """The exact log-likelihood of a decision under `fallback_sample`: the Bernoulli draw's, plus, for the single most
    likely position, the draw of nothing that the fallback turns into it; the likelihoods of the decisions the rule
    makes (never an empty one where a position is valid) sum to 1.

        log pi(u) = log( prod_k p_k^u_k (1 - p_k)^(1 - u_k)  +  [u = {argmax p}] prod_k (1 - p_k) )"""
    b, valid = logits.float() / temperature, valid.bool()
    drawn = bernoulli_logp(logits, action, valid, temperature)
    nothing = (F.logsigmoid(-b) * valid.float()).sum(-1)
    best = torch.where(valid, b, -torch.inf).argmax(-1, keepdim=True)
    only_best = (action.bool() & valid).sum(-1).eq(1) & action.bool().gather(-1, best)[..., 0] & valid.any(-1)
    return torch.where(only_best, torch.logaddexp(drawn, nothing), drawn)


def step_logp(logits: torch.Tensor, action: torch.Tensor, valid: torch.Tensor, temperature: float = 1.0,
              fallback: bool = True) -> torch.Tensor:
    """A decision's log-likelihood under the training rule: with the argmax fallback (evaluation's rule) or, as the
    paper trains, a plain Bernoulli draw that may unmask nothing."""
    return (fallback_logp if fallback else bernoulli_logp)(logits, action, valid, temperature)


def steered_logp(logp: torch.Tensor, policy_share: torch.Tensor, expert_share: torch.Tensor) -> torch.Tensor:
    """log pi_mix of each step, logp [N, T]: log(policy_share * pi + expert_share) on an expert's trajectory
    (policy_share = G/(G+E), expert_share = 1/(G+E): each of the E experts is one deterministic draw), log pi on
    the policy's (expert_share 0). policy_share, expert_share: [N]."""
    return mixed_logp(logp, policy_share[:, None], expert_share[:, None])


def steered_position_logp(logits: torch.Tensor, action: torch.Tensor, valid: torch.Tensor, policy_share: torch.Tensor,
                          expert_share: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """grpo.expert_likelihood=position: the mixture taken per position, sum_k log(G/(G+E) p_k(u_k) + 1/(G+E)) over
    the valid positions of an expert's step (log pi on the policy's). Its gradient on position k is
    G p_k / (G p_k + 1) * grad log p_k: the expert's decision is imitated wherever the policy gives it a fair chance,
    where the step mixture's weight, G pi / (G pi + 1), vanishes with the product pi over every masked position."""
    per_position = mixed_logp(bernoulli_position_logp(logits, action, temperature), policy_share[:, None, None],
                              expert_share[:, None, None])
    return (per_position * valid.float()).sum(-1)


def truncated_importance_weights(old_logp: torch.Tensor, behaviour_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """w_s = min(pi_old(u_s) / pi_behav(u_s), C): a stale step's correction, truncated so that no step dominates."""
    return torch.exp(old_logp - behaviour_logp).clamp(max=cap)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, active: torch.Tensor,
              clip_eps: float | torch.Tensor = 0.5, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate. logp, old_logp, active, weights: [N, T] (trajectory x step); advantages: [N] (one per
    trajectory) or [N, T] (per step); clip_eps one for all or [N] (expert trajectories clip at their own)."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    eps = clip_eps[:, None] if isinstance(clip_eps, torch.Tensor) else torch.as_tensor(clip_eps, device=ratio.device)
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - eps, 1 + eps) * adv)
    if weights is not None:
        surrogate = surrogate * weights
    active = active.float()
    per_trajectory = (surrogate * active).sum(-1) / active.sum(-1).clamp(min=1)
    loss = -per_trajectory.mean()
    with torch.no_grad():
        clipped = ((ratio - 1).abs() > eps).float()
        stats = {"clip_fraction": float((clipped * active).sum() / active.sum().clamp(min=1)),
                 "ratio_mean": float((ratio * active).sum() / active.sum().clamp(min=1))}
        if weights is not None:
            stats["weight_mean"] = float((weights * active).sum() / active.sum().clamp(min=1))
    return loss, stats
