"""The learned policy behind the same Sampler interface as the heuristics (`sampler=policy`).

Evaluation follows the paper's `bernoulli-argmax` mode: u_k ~ Ber(min(1, beta * sigmoid(b_k / tau))) over
the valid positions, and if a row chose nothing, its most likely position is unmasked (Algorithm 1).
Training rollouts use `logits`, `sample` and `log_prob` (or `act`, the three at once): Bernoulli at tau, with the
same argmax fallback (grpo.fallback) or, as the paper trains, without (a step may unmask nothing and still costs an
NFE), and the exact log-prob of the decision for the GRPO ratio.
An alpha-conditioned policy decodes for `sampler.alpha` at evaluation and for each row's own alpha in training.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from unmask.envs.confidence import HiddenView
from unmask.envs.config import EnvConfig, SamplerConfig
from unmask.envs.mdp import Observation
from unmask.envs.samplers import Sampler
from unmask.learner.grpo import bernoulli_sample, bounded, fallback_sample, step_logp, unmask_probabilities
from unmask.learner.policy import UnmaskingPolicy, load_policy, policy_info

INPUTS = {  # each of PolicyConfig.inputs (learner.config.POLICY_INPUTS) per position, in [0, 1] (delta: [-1, 1])
    "confidence": lambda obs: obs.confidence,  # top-1 probability (the paper's only input)
    "margin": lambda obs: obs.margin.float(),  # top-1 minus top-2 probability
    "entropy": lambda obs: torch.exp(-obs.entropy).float(),  # exp(-H): 1 when certain
    "stable_steps": lambda obs: obs.stable_steps / obs.gen_length,  # forwards the prediction has held, / L
    "confidence_ema": lambda obs: obs.confidence_ema,
    "confidence_delta": lambda obs: obs.confidence_delta,
    "repeat": lambda obs: obs.repeat.float(),  # 1 where its token would equal a neighbour's
    "hidden": lambda obs: obs.hidden,  # [B, L, d] the dLLM's last hidden state: the policy reads its HiddenView
}


@functools.lru_cache(maxsize=8)
def hidden_view(width: int, dims: int) -> HiddenView:
    """The one fixed view of a width-d hidden state at k numbers (made once per process and (d, k))."""
    return HiddenView(width, dims)


def policy_inputs(obs: Observation, names: list[str], hidden_dims: int = 0) -> torch.Tensor:
    """[B, L, F] the policy's inputs `names` (PolicyConfig.inputs) from an observation; `hidden` is hidden_dims
    numbers per position (HiddenView of obs.hidden), the others one each."""
    parts = []
    for name in names:
        if name == "hidden":
            if obs.hidden is None:
                raise ValueError("the policy reads the dLLM's hidden state, which the env did not compute "
                                 "(reset it with the policy's features)")
            parts.append(hidden_view(obs.hidden.shape[-1], hidden_dims)(obs.hidden))
        else:
            parts.append(INPUTS[name](obs)[..., None].float())
    return torch.cat(parts, dim=-1)


class PolicySampler(Sampler):
    name = "policy"

    def __init__(self, cfg: SamplerConfig, generator: torch.Generator | None = None,
                 policy: UnmaskingPolicy | None = None, device: str | None = None, fallback: bool = False,
                 logit_bound: float = 0.0):
        """fallback: training decisions (`sample`, `log_prob`, `act`) by evaluation's rule, the argmax when a draw is
        empty (grpo.fallback); evaluation (`select`) always has it. logit_bound: training draws from bounded logits
        (grpo.logit_bound), evaluation from the logits themselves."""
        super().__init__(cfg, generator)
        self.fallback, self.logit_bound = fallback, logit_bound
        if policy is None:
            if not cfg.checkpoint:
                raise ValueError("sampler=policy needs sampler.checkpoint=<a saved policy directory or hub id>")
            policy = load_policy(cfg.checkpoint, device or (str(generator.device) if generator else "cpu"))
        self.policy = policy
        self.steps = self.fallback_steps = 0  # rows decided; rows where the policy chose nothing (select)
        self.info = policy_info(cfg.checkpoint) if cfg.checkpoint else {}
        self.alpha = None  # the trade-off an alpha-conditioned policy decodes for at evaluation
        if policy.config.alpha_conditioned:
            self.alpha = cfg.alpha if cfg.alpha is not None else self.info.get("alpha")
            if self.alpha is None:
                raise ValueError("this policy is alpha-conditioned: pass sampler.alpha=<the trade-off to decode for>")
        elif cfg.alpha is not None:
            trained = f" (it was trained at alpha={self.info['alpha']})" if "alpha" in self.info else ""
            raise ValueError(f"sampler.alpha is for an alpha-conditioned policy; {cfg.checkpoint or 'this policy'} is "
                             f"not one{trained}")

    @property
    def features(self) -> tuple[str, ...]:
        """What the env computes for it: its policy's inputs."""
        return tuple(self.policy.config.inputs)

    @property
    def series(self) -> str:
        """The curve a plot draws it on: per-alpha policies share one; an alpha-conditioned or expert-steered
        policy is its own (one per training block length)."""
        kinds = [kind for kind, on in (("alpha-conditioned", self.alpha is not None),
                                       ("expert-steered", bool(self.info.get("experts")))) if on]
        if kinds and "block_length" in self.info:
            kinds.append(f"trained at BL={self.info['block_length']}")
        return f"policy ({', '.join(kinds)})" if kinds else "policy"

    def describe(self) -> str:
        """`policy alpha=... BL=...` from the checkpoint's config: what the plots and tables label it."""
        info = dict(self.info)
        if self.alpha is not None:  # the trade-off it decodes for, and the range it was trained on
            info["alpha"] = f"{self.alpha:g}" + ("/[{:g},{:g}]".format(*info["alpha_range"]) if info.get("alpha_range")
                                                 else "")
        trained = "".join(f" {key}={info[key]}" for key in ("alpha", "block_length") if key in info)
        if info.get("experts"):
            trained += " experts=" + ",".join(str(x) for x in info["experts"])
        if info.get("reward", "multiplicative") != "multiplicative":
            trained += f" reward={info['reward']}"
        label = f"policy{trained}" if trained else f"policy {Path(self.cfg.checkpoint or 'in-memory').name}"
        return label + (f" beta={self.cfg.beta}" if self.cfg.beta != 1.0 else "")

    def check_env(self, env: EnvConfig) -> None:
        """A policy sees per-position features of a canvas of L positions (stale ones under a KV cache): at
        another L or cache setting than it was trained with it runs, but is not the policy that was trained."""
        info = policy_info(self.cfg.checkpoint) if self.cfg.checkpoint else {}
        for key in ("gen_length", "kv_cache"):
            if key in info and info[key] != getattr(env, key) and not self.cfg.allow_mismatch:
                raise ValueError(f"policy {self.cfg.checkpoint} was trained with env.{key}={info[key]!r}, not "
                                 f"{getattr(env, key)!r}: pass sampler.allow_mismatch=true to run it there anyway")

    @torch.no_grad()
    def logits(self, obs: Observation, alpha: torch.Tensor | None = None) -> torch.Tensor:
        """The policy's unmask logits, computed for the rows still running (finished rows get 0); alpha [B]: each
        row's trade-off (an alpha-conditioned policy; default: sampler.alpha)."""
        device = next(self.policy.parameters()).device
        rows = obs.active.to(device)
        logits = torch.zeros(obs.valid.shape, device=device)
        if alpha is None and self.alpha is not None:
            alpha = torch.full(obs.active.shape, float(self.alpha))
        if rows.any():
            inputs = self.inputs(obs).to(device)
            logits[rows] = self.policy(inputs[rows], obs.masked.to(device)[rows], obs.t.to(device)[rows],
                                       None if alpha is None else alpha.to(device)[rows])
        return logits

    def inputs(self, obs: Observation) -> torch.Tensor:
        """[B, L, F] what its policy reads at each position (PolicyConfig.inputs)."""
        return policy_inputs(obs, self.policy.config.inputs, self.policy.config.hidden_dims)

    def select(self, obs: Observation) -> torch.Tensor:
        logits, valid = self.logits(obs), obs.valid.to(next(self.policy.parameters()).device)
        probs = unmask_probabilities(logits, self.cfg.policy_temperature)
        noise = torch.rand(probs.shape, generator=self.generator, device=probs.device)
        chosen = (noise < (self.cfg.beta * probs).clamp(max=1.0)) & valid
        deciding = valid.any(-1)
        empty = deciding & ~chosen.any(-1)
        self.steps = self.steps + deciding.sum()  # tensors on the policy's device: no host sync per step
        self.fallback_steps = self.fallback_steps + empty.sum()
        if empty.any():  # argmax fallback: at least one unmask per step at evaluation
            best = torch.where(valid, probs, -1.0).argmax(-1)
            chosen[empty, best[empty]] = True
        return chosen.to(obs.valid.device)

    def stats(self) -> dict[str, float]:
        """`fallback_share`: the share of steps whose unmasking the argmax fallback decided (the policy chose no
        position); near 1, the policy has learned to unmask nothing and its accuracy is the fallback's."""
        steps = int(self.steps)
        return {"fallback_share": int(self.fallback_steps) / steps if steps else 0.0}

    def sample(self, logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Training's decision [B, L] on the policy's device: one Bernoulli draw per valid position at tau; with the
        fallback an empty draw commits the most likely position, without it a step may unmask nothing (and still
        costs an NFE)."""
        draw = fallback_sample if self.fallback else bernoulli_sample
        return draw(bounded(logits, self.logit_bound), valid.to(logits.device), self.cfg.policy_temperature,
                    self.generator)

    def log_prob(self, logits: torch.Tensor, action: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """[B] the exact log-likelihood of `action` under training's rule: the behaviour log-prob GRPO's ratio needs."""
        device = logits.device
        return step_logp(bounded(logits, self.logit_bound), action.to(device), valid.to(device),
                         self.cfg.policy_temperature, self.fallback)

    def act(self, obs: Observation, alpha: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: (decision [B, L], behaviour log-prob [B]); alpha [B]: each row's trade-off (alpha-conditioned)."""
        logits = self.logits(obs, alpha)
        action = self.sample(logits, obs.valid)
        return action.to(obs.valid.device), self.log_prob(logits, action, obs.valid)
