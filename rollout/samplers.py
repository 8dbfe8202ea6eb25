"""Every sampler in one table: the heuristics (envs.samplers) and the learned policy (learner.sampler)."""

from __future__ import annotations

import torch

from unmask.envs.config import SAMPLER_PARAMS, SamplerConfig, check_sampler, sampler_spec
from unmask.envs.samplers import HEURISTICS, Oracle, Sampler
from unmask.learner.sampler import PolicySampler

SAMPLERS: dict[str, type[Sampler]] = {**HEURISTICS, Oracle.name: Oracle, PolicySampler.name: PolicySampler}


def make_sampler(cfg: SamplerConfig, generator: torch.Generator | None = None, **kwargs) -> Sampler:
    """The sampler `cfg.name` with its settings checked; `kwargs` go to its constructor (e.g. `policy=` an
    in-memory UnmaskingPolicy for sampler=policy)."""
    check_sampler(cfg)
    if cfg.name == "oracle":  # its reference may be any sampler of the table, the policy too
        kwargs = {"reference": make_sampler(sampler_spec(cfg.reference), generator, **kwargs)}
    return SAMPLERS[cfg.name](cfg, generator, **kwargs)


def sampler(name: str, generator: torch.Generator | None = None, **settings) -> Sampler:
    """`sampler("fast_dllm", threshold=0.9)`, `sampler("policy", checkpoint="runs/a1/checkpoints/final")`:
    a sampler from its name and its own parameters (others are an error, as on the command line)."""
    if name not in SAMPLER_PARAMS:
        raise ValueError(f"unknown sampler {name!r}: choose one of {', '.join(sorted(SAMPLER_PARAMS))}")
    config_keys = {k: v for k, v in settings.items() if k in SamplerConfig.__dataclass_fields__}
    misplaced = sorted(set(config_keys) - set(SAMPLER_PARAMS[name]))
    if misplaced:
        raise ValueError(f"{', '.join(misplaced)} does not apply to sampler {name!r} "
                         f"(its parameters: {', '.join(SAMPLER_PARAMS[name]) or 'none'})")
    others = {k: v for k, v in settings.items() if k not in config_keys}
    return make_sampler(SamplerConfig(name=name, **config_keys), generator, **others)
