"""Structured configs of the learning side: the policy network and GRPO (arXiv 2512.09106 §3.2-§3.3, App. H defaults).

No heavy imports: commands parse and check these before torch is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path


@dataclass
class PolicyConfig:
    """Shape of the unmasking policy (learner.policy.UnmaskingPolicy)."""

    hidden_size: int = 128  # d: the width of the policy's one transformer block (the paper's ~300K parameters)
    num_heads: int = 2  # attention heads of that block
    ffn_size: int = 512  # its feed-forward width
    num_blocks: int = 1  # DiT blocks (the paper: 1)
    time_embed_size: int = 128  # width of the sinusoidal embedding of t
    time_period: float = 1.0  # t lies in [0, 1], so the sinusoid's longest period is 1
    rope_base: float = 10_000.0  # rotary position embedding over the canvas positions
    init_bias: float = -2.0  # the output bias at the start: every position unmasks w.p. sigmoid(-2) ~ 0.12
    alpha_conditioned: bool = False  # alpha is an input (beside t and the mask flag): one policy for every trade-off
    # per-position inputs: the paper's top-1 confidence first, then any of margin, entropy, stable_steps,
    # confidence_ema, confidence_delta, repeat, hidden (learner.sampler.POLICY_INPUTS; the env computes only what is
    # asked); [] = the confidence and what the start needs: a teacher's inputs (imitate), init_from's (train)
    inputs: list[str] = field(default_factory=list)
    # the `hidden` input's width: the dLLM's last hidden state, standardised, through a fixed random projection to this
    # many numbers per position (envs.confidence.HiddenView); the dLLM's own width (built-in: 256) = the whole state
    hidden_dims: int = 32


@dataclass
class GRPOConfig:
    """GRPO's hyper-parameters (arXiv 2512.09106 §3.3, App. H), the `grpo.*` keys of train and sweep."""

    alpha: float = 1.0  # reward trade-off: larger = faster, fewer NFE
    alpha_range: list[float] = field(default_factory=list)  # [lo, hi]: alpha drawn per group, log-uniform; the
    #                                                      policy is then alpha-conditioned. [] = the fixed alpha
    reward: str = "multiplicative"  # multiplicative: correct*((L-NFE+1)/L)^alpha | additive: correct-alpha*NFE/L
    scale_by_std: bool = False  # divide advantages by the group std (the paper does not)
    policy_temperature: float = 1.0  # tau_pi during training (the paper trains at 1)
    clip_eps: float = 0.5  # PPO-style ratio clip of GRPO's surrogate loss
    num_updates: int = 2  # mu: optimiser steps per batch of rollouts
    lr: float = 3e-5  # AdamW learning rate (the paper's; from a saved policy FROM_POLICY's 1e-4 unless given)
    warmup_steps: int = 100  # linear warm-up, then cosine decay to 0 over total_steps
    total_steps: int = 1000  # optimiser steps of the cosine schedule
    weight_decay: float = 0.1  # AdamW's decoupled weight decay
    adam_betas: tuple[float, float] = (0.9, 0.99)  # AdamW's (beta1, beta2)
    grad_clip: float = 0.2  # max global grad norm
    skip_zero_advantage: float = 1e-6  # a batch whose |advantages| are all below this is skipped
    tis_cap: float = 2.0  # C of the truncated importance weight on steps sampled by an older policy
    expert_clip_eps: float = 0.5  # clip epsilon of expert-steered steps (the paper's clip exception; value unknown)
    expert_likelihood: str = "step"  # step: the paper's mixture of step likelihoods | position: mixed per position
    fallback: bool = True  # rollouts decode by evaluation's rule (an empty draw commits the argmax), its exact
    #                        likelihood in the loss; false: the paper's plain Bernoulli training draws
    anchor_coef: float = 0.0  # the loss adds this x KL(pi || pi_init) per step: keeps what init_from knew
    entropy_coef: float = 0.0  # the loss subtracts this x the decisions' entropy per step: exploration
    logit_bound: float = 0.0  # training draws from bound * tanh(b / bound): every decision keeps a chance (0 = off)
    credit: str = "trajectory"  # trajectory: one advantage R - mean_G(R) for all of a trajectory's steps (the paper)
    #                             value: per step, R - V(state) with a learned state value (learner.grpo)
    value_lr: float = 1e-3  # Adam learning rate of the state value (credit=value)
    value_warmup: int = 10  # credit=value: the first updates use the trajectory's advantage while V first learns


@dataclass
class PolicySettings:
    """The policy a run trains: a new one of shape `policy.*`, or a saved one to start from (`init_from`)."""

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    init_from: str = ""  # start from a saved policy (a directory or hub id, e.g. `unmask imitate`'s): its shape,
    #                      inputs and alpha-conditioning are the run's; "" = a new policy (the paper's initialisation)


def trained_network(policy: PolicyConfig, init_from: str, alpha_range: list[float]) -> PolicyConfig:
    """The policy's shape as trained: init_from's when given, else `policy` with its inputs resolved ([]: the
    confidence alone), alpha-conditioned whenever alpha is drawn from a range."""
    shape = policy
    if init_from:
        saved = saved_policy(init_from)
        if saved is None:  # a hub id: its config comes with it
            from unmask.learner.policy import load_policy

            shape = load_policy(init_from).config
        else:
            shape = saved[0]
    inputs = list(shape.inputs) or ["confidence"]
    return replace(shape, inputs=inputs, alpha_conditioned=shape.alpha_conditioned or bool(alpha_range))


def saved_policy(path: str) -> tuple[PolicyConfig, dict] | None:
    """A saved policy's shape and how it was trained, read from its config.json (or a legacy policy.json) without
    loading it; None for a hub id. A local path without a readable config is a one-line error."""
    folder = Path(path).expanduser()
    folder = folder.parent if folder.suffix in (".safetensors", ".json") else folder
    local = folder.exists() or str(path).startswith(("/", ".", "~"))
    if not local:
        return None
    for name, shape_of, info_of in (("config.json", lambda d: d, lambda d: d.get("training", {})),
                                    ("policy.json", lambda d: d.get("policy", {}),
                                     lambda d: {k: v for k, v in d.items() if k != "policy"})):
        try:
            data = json.loads((folder / name).read_text())
        except OSError:
            continue
        except ValueError:
            raise ValueError(f"policy checkpoint {path}: {name} is not valid JSON") from None
        if not isinstance(data, dict):
            raise ValueError(f"policy checkpoint {path}: {name} is not a JSON object")
        shape = shape_of(data)
        defaults = PolicyConfig()
        for f in fields(PolicyConfig):
            value, default = shape.get(f.name, getattr(defaults, f.name)), getattr(defaults, f.name)
            fits = isinstance(value, float | int) if isinstance(default, float) else type(value) is type(default)
            if not fits:
                raise ValueError(f"policy checkpoint {path}: {name} has {f.name}={value!r}, not a "
                                 f"{type(default).__name__}")
        saved = PolicyConfig(**{f.name: shape[f.name] for f in fields(PolicyConfig) if f.name in shape})
        saved = replace(saved, inputs=list(saved.inputs) or ["confidence"])  # saved before inputs: the paper's
        try:
            check_policy(saved, "policy")
        except ValueError as err:
            raise ValueError(f"policy checkpoint {path}: {name} is not a policy this version can run: {err}") from None
        return saved, info_of(data)
    raise ValueError(f"no policy checkpoint at {path} (expected model.safetensors and config.json)")


def check_init_from(init_from: str, policy: PolicyConfig, alpha_range: list[float], gen_length: int, kv_cache: str,
                    given: set[str] | None = None) -> None:
    """init_from must fit the run: its canvas and cache, and the shape, inputs and conditioning asked for. `given`:
    the keys set by hand (the command line's); a `policy.*` key given that differs from the saved policy is refused,
    never silently dropped (without `given`, any policy.* key off its default counts as given)."""
    saved = saved_policy(init_from) if init_from else None
    if saved is None:
        return
    shape, info = saved
    from unmask.learner.policy import load_policy  # its weights too: a corrupted file is found here, before Ray starts

    load_policy(init_from)
    defaults = PolicyConfig()
    for f in fields(PolicyConfig):
        if f.name == "alpha_conditioned":
            continue
        asked, own = getattr(policy, f.name), getattr(shape, f.name)
        named = f"policy.{f.name}" in given if given is not None else asked != getattr(defaults, f.name)
        if named and asked != own and not (f.name == "inputs" and not asked):
            raise ValueError(f"init_from={init_from} has policy.{f.name}={own!r}, not {asked!r}: a policy started "
                             f"from a saved one keeps its shape and inputs (leave policy.* out)")
    for key, value in (("gen_length", gen_length), ("kv_cache", kv_cache)):
        if key in info and info[key] != value:
            raise ValueError(f"init_from={init_from} was made with env.{key}={info[key]!r}, not {value!r}")
    if alpha_range and not shape.alpha_conditioned:
        raise ValueError(f"init_from={init_from} is not alpha-conditioned: it cannot be trained over "
                         "grpo.alpha_range (clone several teachers with teacher_alphas, or give a fixed grpo.alpha)")


POLICY_INPUTS = ("confidence", "margin", "entropy", "stable_steps", "confidence_ema", "confidence_delta", "repeat",
                 "hidden")


def input_width(cfg: PolicyConfig) -> int:
    """F, the numbers the policy reads per position: one per input, hidden_dims for `hidden`."""
    inputs = list(cfg.inputs) or ["confidence"]
    return len(inputs) + (cfg.hidden_dims - 1 if "hidden" in inputs else 0)


def check_policy(cfg: PolicyConfig, key: str = "policy") -> None:
    """policy.inputs: [] (resolved by the command), or the confidence first and distinct known inputs."""
    if cfg.hidden_dims < 1:
        raise ValueError(f"{key}.hidden_dims must be >= 1 (the hidden input's width), got {cfg.hidden_dims}")
    inputs = list(cfg.inputs)
    if not inputs:
        return
    if inputs[0] != "confidence" or len(set(inputs)) != len(inputs) or not set(inputs) <= set(
            POLICY_INPUTS):
        raise ValueError(f"{key}.inputs must start with confidence and name distinct inputs of "
                         f"{', '.join(POLICY_INPUTS)}, got {inputs}")


def check_grpo(cfg: GRPOConfig) -> None:
    if cfg.reward not in ("multiplicative", "additive"):
        raise ValueError(f"grpo.reward must be multiplicative or additive, got {cfg.reward!r}")
    if cfg.policy_temperature <= 0 or cfg.clip_eps <= 0 or cfg.lr <= 0:
        raise ValueError("grpo.policy_temperature, grpo.clip_eps and grpo.lr must be > 0")
    if cfg.num_updates < 1 or cfg.total_steps < 1 or cfg.warmup_steps < 0:
        raise ValueError("grpo.num_updates and grpo.total_steps must be >= 1, grpo.warmup_steps >= 0")
    if cfg.alpha < 0:
        raise ValueError(f"grpo.alpha must be >= 0, got {cfg.alpha}")
    if cfg.alpha_range and (len(cfg.alpha_range) != 2 or not 0 < cfg.alpha_range[0] <= cfg.alpha_range[1]):
        raise ValueError(f"grpo.alpha_range must be [lo, hi] with 0 < lo <= hi (alpha is drawn log-uniformly), "
                         f"got {list(cfg.alpha_range)}")
    if cfg.expert_likelihood not in ("step", "position"):
        raise ValueError(f"grpo.expert_likelihood must be step or position, got {cfg.expert_likelihood!r}")
    if cfg.expert_clip_eps <= 0:
        raise ValueError(f"grpo.expert_clip_eps must be > 0, got {cfg.expert_clip_eps}")
    if cfg.tis_cap < 1:
        raise ValueError(f"grpo.tis_cap must be >= 1, got {cfg.tis_cap}")
    if cfg.anchor_coef < 0 or cfg.entropy_coef < 0 or cfg.logit_bound < 0:
        raise ValueError("grpo.anchor_coef, grpo.entropy_coef and grpo.logit_bound must be >= 0")
    if cfg.credit not in ("trajectory", "value"):
        raise ValueError(f"grpo.credit must be trajectory or value, got {cfg.credit!r}")
    if cfg.value_lr <= 0 or cfg.value_warmup < 0:
        raise ValueError("grpo.value_lr must be > 0 and grpo.value_warmup >= 0")
