"""unmask: learned unmasking policies for masked diffusion language models, trained with GRPO on Ray.

The public Python API is the names below (docs/reference/api.md); the layers live in `unmask.envs` (the dLLM MDP),
`unmask.learner` (policy, GRPO), `unmask.rollout` (runners, evaluation, dumps), `unmask.cluster` (the RLlib
algorithm, Tune) and `unmask.cli`. Names load on first use, so `import unmask` and reading a config import neither
torch nor Ray.

    import unmask

    dllm = unmask.load_dllm("GSAI-ML/LLaDA-8B-Instruct")           # on the GPU in bfloat16 when there is one
    policy = unmask.sampler("policy", checkpoint="runs/train/checkpoints/final")  # or unmask.sampler("fast_dllm")
    for out in unmask.generate(dllm, ["What is 17 * 23?"], policy, unmask.EnvConfig(gen_length=256, block_length=32)):
        print(out.nfe, out.text)
"""

from __future__ import annotations

import importlib
from pathlib import Path as _Path

__version__ = "0.2.0"

# In a source checkout the layers are the folders beside this one (envs/, learner/, ...): import them from there,
# so that a copy of the checkout (e.g. `ray job submit --working-dir .`) runs its own code. An installed wheel
# holds them inside this package (pyproject.toml's package-dir), and nothing is added.
_checkout = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "envs").is_dir() and (_checkout / "envs" / "mdp.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 - a package's own __path__

# name -> "module:attribute": what `unmask.<name>` is
API = {
    # the dLLM and decoding
    "load_dllm": "unmask.envs.dllm:load_dllm",
    "DLLM": "unmask.envs.dllm:DLLM",
    "sampler": "unmask.rollout.samplers:sampler",
    "generate": "unmask.rollout.generation:generate",
    "Generation": "unmask.rollout.generation:Generation",
    "UnmaskingEnv": "unmask.envs.mdp:UnmaskingEnv",
    "make_task": "unmask.envs.tasks:make_task",
    # evaluation, the heuristics' frontier
    "evaluate": "unmask.rollout.evaluate:evaluate",
    "run_pareto": "unmask.rollout.pareto:run_pareto",
    # the policy
    "UnmaskingPolicy": "unmask.learner.policy:UnmaskingPolicy",
    "load_policy": "unmask.learner.policy:load_policy",
    "imitate": "unmask.rollout.imitation:imitate",
    # training on Ray
    "train": "unmask.cluster.train:train",
    "sweep": "unmask.cluster.sweep:sweep",
    "UnmaskGRPO": "unmask.cluster.algorithm:UnmaskGRPO",
    "UnmaskGRPOConfig": "unmask.cluster.algorithm_config:UnmaskGRPOConfig",
    # trajectories and memory
    "read_trajectories": "unmask.rollout.trajectories:read_trajectories",
    "TrajectoryBatch": "unmask.rollout.trajectories:TrajectoryBatch",
    "plan_memory": "unmask.envs.memory:plan_memory",
    "shape_of": "unmask.envs.memory:shape_of",
    # configs (plain dataclasses, the command line's keys)
    "EnvConfig": "unmask.envs.config:EnvConfig",
    "TaskConfig": "unmask.envs.config:TaskConfig",
    "SamplerConfig": "unmask.envs.config:SamplerConfig",
    "EvalConfig": "unmask.rollout.config:EvalConfig",
    "ParetoConfig": "unmask.rollout.config:ParetoConfig",
    "ImitateConfig": "unmask.rollout.config:ImitateConfig",
    "RolloutConfig": "unmask.rollout.config:RolloutConfig",
    "PolicyConfig": "unmask.learner.config:PolicyConfig",
    "GRPOConfig": "unmask.learner.config:GRPOConfig",
    "TrainConfig": "unmask.cluster.config:TrainConfig",
    "SweepConfig": "unmask.cluster.config:SweepConfig",
}
__all__ = sorted(API)


def __getattr__(name: str):
    if name not in API:
        raise AttributeError(f"module 'unmask' has no attribute {name!r}")
    module, _, attribute = API[name].partition(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # loaded once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(API))
