"""UnmaskGRPOConfig: the RLlib AlgorithmConfig of UnmaskGRPO. It carries a run's config whole, as typed sub-configs:

    dllm         DLLMSettings     the frozen dLLM, its task, the canvas (its `env` is EnvConfig) and the seed
    rollout      RolloutConfig    how runners roll the policy out: group size, prompts per sample, experts
    grpo         GRPOConfig       the reward and GRPO's hyper-parameters
    policy       PolicyConfig     the policy's shape (`init_from`, a plain attribute, names a saved one to start from)
    updates      UpdateSettings   groups per update, staleness and pacing, when a stalled run stops
    run_outputs  OutputSettings   run directory, checkpoints, checkpoint-best, trajectory dumps

set whole or field by field through the builder methods (`.environment()`, `.training()`, `.outputs()`) and checked
in `validate()`, beside RLlib's own (`.env_runners(num_env_runners=...)`, `.learners(...)`, ...). Tune sees it as
plain data (`to_dict`) and a trial turns that back into the typed sub-configs (`update_from_dict`). A TrainConfig key
(`unmask train`'s) names the same setting here at `algo_path(key)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from unmask.cluster.config import OutputSettings, TrainConfig, UpdateSettings, check_outputs, check_updates
from unmask.envs.config import DLLMSettings, EnvConfig, check_dllm_settings, check_finite
from unmask.envs.structured import narrow, typed
from unmask.learner.config import GRPOConfig, PolicyConfig, check_grpo, check_init_from, check_policy, trained_network
from unmask.learner.learner import GRPOLearner
from unmask.learner.module import UnmaskRLModule
from unmask.rollout.config import RolloutConfig, check_rollout
from unmask.rollout.env_runner import DLLMEnvRunner

TYPED = {"dllm": DLLMSettings, "rollout": RolloutConfig, "grpo": GRPOConfig, "policy": PolicyConfig,
         "updates": UpdateSettings, "run_outputs": OutputSettings}
DLLM_KEYS = tuple(f.name for f in dataclasses.fields(DLLMSettings))  # model, trust_remote_code, task, env, seed


def algo_path(key: str) -> str:
    """Where a TrainConfig key lives in UnmaskGRPOConfig: `env.block_length` -> `dllm.env.block_length`, `grpo.alpha`
    and `rollout.group_size` as they are."""
    return f"dllm.{key}" if key.split(".")[0] in DLLM_KEYS else key


def policy_spaces(gen_length: int) -> tuple[gym.Space, gym.Space]:
    """The spaces RLlib requires of a module; nothing reads them (the runner builds its own observations)."""
    obs = gym.spaces.Dict({"confidences": gym.spaces.Box(0, 1, (gen_length,)),
                           "mask": gym.spaces.MultiBinary(gen_length), "t": gym.spaces.Box(0, 1, ())})
    return obs, gym.spaces.MultiBinary(gen_length)


def assign(config: Any, fields: dict) -> Any:
    """`config` with those of `fields` it has (removed from `fields`) replaced."""
    own = {name: fields.pop(name) for name in list(fields) if name in {f.name for f in dataclasses.fields(config)}}
    return dataclasses.replace(config, **own) if own else config


class UnmaskGRPOConfig(AlgorithmConfig):
    """The RLlib config of UnmaskGRPO: RLlib's own settings (env runners, learners, resources) and the run's typed
    sub-configs (module docstring). `UnmaskGRPOConfig.from_train_config(cfg)` is the config of `unmask train`."""

    def __init__(self, algo_class=None):
        if algo_class is None:
            from unmask.cluster.algorithm import UnmaskGRPO as algo_class
        super().__init__(algo_class=algo_class)
        for name, schema in TYPED.items():
            setattr(self, name, schema())
        self.init_from = ""  # a saved policy the run starts from (its shape, inputs and conditioning are the run's)
        self.global_seed: int | None = None  # .debugging(seed=...): each process's global RNGs (envs.seeds)
        self.env_runner_cls = DLLMEnvRunner
        self._dont_auto_sync_env_runner_states = True  # runners pull weights themselves
        self.add_default_connectors_to_learner_pipeline = False
        self.grad_clip_by = "global_norm"

    @classmethod
    def from_train_config(cls, cfg: TrainConfig) -> UnmaskGRPOConfig:
        """The RLlib config of one `unmask train` run."""
        return (
            cls()
            .environment(dllm=narrow(cfg, DLLMSettings), rollout=cfg.rollout)
            .training(grpo=cfg.grpo, policy=cfg.policy, init_from=cfg.init_from, updates=narrow(cfg, UpdateSettings))
            .outputs(run_outputs=narrow(cfg, OutputSettings))
            .env_runners(num_env_runners=cfg.num_env_runners, num_cpus_per_env_runner=cfg.num_cpus_per_env_runner,
                         num_gpus_per_env_runner=cfg.num_gpus_per_env_runner,
                         custom_resources_per_env_runner=dict(cfg.custom_resources_per_env_runner))
            .learners(num_learners=0, num_gpus_per_learner=cfg.num_gpus_per_learner)
            .debugging(seed=cfg.seed)
            # a crashed env runner is restarted by Ray (at most max_runner_restarts times in all, then the run stops
            # with the runner's error) and resumed by UnmaskGRPO.restore_env_runners
            .fault_tolerance(restart_failed_env_runners=True, max_num_env_runner_restarts=cfg.max_runner_restarts,
                             delay_between_env_runner_restarts_s=1.0)
        )

    # ---- builder methods ------------------------------------------------------------------------------
    def environment(self, env=NotProvided, *, dllm: DLLMSettings = NotProvided, rollout: RolloutConfig = NotProvided,
                    **fields):
        """The dLLM environment: a whole `dllm=DLLMSettings(...)` (model, task, env, seed), `env=EnvConfig(...)` or
        `rollout=RolloutConfig(...)`, or their fields (model, task, seed; gen_length, block_length, kv_cache, device,
        ...; group_size, prompts_per_sample, ...)."""
        if dllm is not NotProvided:
            self.dllm = dllm
        if rollout is not NotProvided:
            self.rollout = rollout
        if isinstance(env, EnvConfig):
            self.dllm = dataclasses.replace(self.dllm, env=env)
        elif env is not NotProvided:
            raise ValueError("UnmaskGRPO's environment is the dLLM MDP, not a gym env: configure it with "
                             ".environment(model=..., task=..., gen_length=..., block_length=...)")
        self.dllm = assign(self.dllm, fields)
        self.dllm = dataclasses.replace(self.dllm, env=assign(self.dllm.env, fields))
        self.rollout = assign(self.rollout, fields)
        return super().environment(**fields)

    def training(self, *, grpo: GRPOConfig = NotProvided, policy: PolicyConfig = NotProvided,
                 init_from: str = NotProvided, updates: UpdateSettings = NotProvided, **fields):
        """GRPO, the policy and the updates: a whole `grpo=GRPOConfig(...)`, `policy=PolicyConfig(...)`,
        `updates=UpdateSettings(...)`, a saved policy to start from (`init_from`), or their fields (alpha, reward, lr,
        clip_eps, num_updates, ...; groups_per_update, max_policy_lag, staleness, pace_ahead, stop_after_skipped,
        ...). RLlib's `lr` and `grad_clip` are GRPO's."""
        self.grpo = assign(self.grpo if grpo is NotProvided else grpo, fields)
        if policy is not NotProvided:
            self.policy = policy
        if init_from is not NotProvided:
            self.init_from = str(init_from)
        self.updates = assign(self.updates if updates is NotProvided else updates, fields)
        return super().training(**fields)

    def debugging(self, *, seed=NotProvided, **fields):
        """RLlib's debugging settings, except `seed`: it seeds the global RNGs of the learner's process and of each env
        runner (seed + its index) as RLlib's would, without RLlib's CPU-wide deterministic mode (envs.seeds)."""
        if seed is not NotProvided:
            self.global_seed = None if seed is None else int(seed)
        return super().debugging(**fields)

    def outputs(self, *, run_outputs: OutputSettings = NotProvided, **fields):
        """Where trajectory dumps and policy checkpoints go, and how often: a whole `run_outputs=OutputSettings(...)`
        or its fields (out_dir, run_id, checkpoint_every, best_window, dump_trajectories)."""
        fields = {k: str(v) if k == "out_dir" else v for k, v in fields.items()}
        self.run_outputs = assign(self.run_outputs if run_outputs is NotProvided else run_outputs, fields)
        if fields:
            raise TypeError(f"outputs() got unexpected keyword arguments {sorted(fields)}")
        return self

    def network(self) -> PolicyConfig:
        """The policy's shape as trained (init_from's, or `policy`'s; alpha-conditioned for an alpha range)."""
        return trained_network(self.policy, self.init_from, self.grpo.alpha_range)

    def validate(self) -> None:
        super().validate()
        for name in TYPED:
            check_finite(getattr(self, name), f"{name}.")
        check_dllm_settings(self.dllm)
        check_rollout(self.rollout, self.dllm.env.gen_length)
        check_policy(self.policy)
        check_grpo(self.grpo)
        if self.grpo.anchor_coef and not self.init_from:
            raise ValueError("grpo.anchor_coef anchors to init_from: give one")
        check_init_from(self.init_from, self.policy, self.grpo.alpha_range, self.dllm.env.gen_length,
                        self.dllm.env.kv_cache)
        check_updates(self.updates)
        check_outputs(self.run_outputs)
        if self.num_learners > 1:
            raise ValueError("UnmaskGRPO's learner takes group advantages over whole groups: num_learners must be "
                             "0 or 1")
        if self.observation_space is None or self.action_space is None:
            self.observation_space, self.action_space = policy_spaces(self.dllm.env.gen_length)
        self.grad_clip = self.grpo.grad_clip  # RLlib's learner clips with its own attribute

    # ---- plain data for Tune, typed for everything else ----------------------------------------------
    def to_dict(self) -> dict:
        data = super().to_dict()
        for name in TYPED:
            data[name] = dataclasses.asdict(getattr(self, name))
        return data

    def update_from_dict(self, config_dict: dict):
        config_dict = dict(config_dict)
        for name, schema in TYPED.items():
            if name in config_dict:
                setattr(self, name, typed(schema, config_dict.pop(name)))
        return super().update_from_dict(config_dict)

    @property
    def _model_config_auto_includes(self) -> dict:
        return {**dataclasses.asdict(self.network()), "value_baseline": self.grpo.credit == "value"}

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=UnmaskRLModule)

    def get_default_learner_class(self):
        return GRPOLearner
