"""UnmaskGRPO: the RLlib Algorithm that wires dLLM env runners (rollout/) to the GRPO learner (learner/).

One training iteration = one GRPO update, in three phases (`training_step`):
  collect  gather complete groups from the env runners until `groups_per_update` usable ones arrived. With
           `max_policy_lag` > 0 runners sample asynchronously (they never stop for the learner); groups whose
           policy version lags the learner by more than `max_policy_lag` are dropped. With 0 the loop is
           on-policy: runners sample after each update, with its weights.
  update   advantages over whole groups (R - group mean), `grpo.num_updates` optimiser steps on the batch (a
           batch whose advantages are all ~0 is skipped, as in the paper's code), then the new weights
           (version + 1) go to the state server, where runners pull them.
  report   this iteration's trajectories (one Parquet file per env runner), the policy checkpoint, metrics.

Iterations count from 1, as Tune's `training_iteration`: the dumps of iteration k are in `iter_{k:06d}`, and
the policy saved after it records `iteration: k`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import pyarrow as pa
import ray
import torch
from omegaconf import OmegaConf
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core import COMPONENT_RL_MODULE, DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.env_runner_state_server import EnvRunnerStateServer
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import LEARNER_RESULTS, TIMERS, WEIGHTS_SEQ_NO

from cluster.configs import AlgorithmSettings, TrainConfig, check_algorithm_settings
from envs.config import EnvConfig, check_finite
from learner.config import GRPOConfig, check_grpo
from learner.grpo import bernoulli_logp, group_advantages
from learner.module import GRPOLearner, UnmaskRLModule
from learner.policy import UnmaskingPolicy, save_policy
from rollout.config import RolloutConfig, check_rollout
from rollout.env_runner import DLLMEnvRunner, RunnerSample
from rollout.trajectories import TrajectoryBatch, write_parquet_atomic

logger = logging.getLogger(__name__)

ROLLOUT_FIELDS = {f.name for f in dataclasses.fields(RolloutConfig)}
ENV_FIELDS = {f.name for f in dataclasses.fields(EnvConfig)}
GRPO_FIELDS = {f.name for f in dataclasses.fields(GRPOConfig)}
SETTINGS = [f.name for f in dataclasses.fields(AlgorithmSettings)]
OUTPUT_SETTINGS = ("checkpoint_every", "best_window", "dump_trajectories")  # set by .outputs(), the rest by .training()
TYPED = {"rollout": RolloutConfig, "grpo": GRPOConfig}  # the config attributes that are dataclasses


def policy_spaces(gen_length: int) -> tuple[gym.Space, gym.Space]:
    """The spaces RLlib requires of a module; nothing reads them (the runner builds its own observations)."""
    obs = gym.spaces.Dict({"confidences": gym.spaces.Box(0, 1, (gen_length,)),
                           "mask": gym.spaces.MultiBinary(gen_length), "t": gym.spaces.Box(0, 1, ())})
    return obs, gym.spaces.MultiBinary(gen_length)


def typed(schema: type, data) -> object:
    """A plain dict (what Tune hands a trial) as its dataclass, every key and type checked."""
    if isinstance(data, schema):
        return data
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data))


class UnmaskGRPOConfig(AlgorithmConfig):
    """UnmaskGRPO's hyper-parameters as typed attributes, set through builder methods and checked in
    `validate()`:
        .environment(model=..., task=TaskConfig(...), gen_length=..., block_length=..., group_size=...)
                     -> `rollout` (RolloutConfig; EnvConfig's fields set `rollout.env`)
        .training(alpha=..., lr=..., groups_per_update=..., max_policy_lag=...)
                     -> `grpo` (GRPOConfig) and the AlgorithmSettings fields
        .outputs(run_dir=..., checkpoint_every=..., dump_trajectories=...)
    plus RLlib's own (`.env_runners(num_env_runners=...)`, `.learners(...)`, ...). Tune sees it as plain data
    (`to_dict`) and a trial turns that back into the typed attributes (`update_from_dict`)."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or UnmaskGRPO)
        self.rollout = RolloutConfig()
        self.grpo = GRPOConfig()
        for name in SETTINGS:
            setattr(self, name, AlgorithmSettings.__dataclass_fields__[name].default)
        self.run_dir = ""  # trajectory dumps and policy checkpoints; "" = the Tune trial directory, else nowhere
        self.run_id = ""  # "" = the run directory's name
        self.env_runner_cls = DLLMEnvRunner
        self._dont_auto_sync_env_runner_states = True  # runners pull weights themselves
        self.add_default_connectors_to_learner_pipeline = False
        self.grad_clip_by = "global_norm"

    @classmethod
    def from_train_config(cls, cfg: TrainConfig, run_id: str = "") -> UnmaskGRPOConfig:
        """The RLlib config of one `unmask train` run."""
        return (
            cls()
            .environment(rollout=cfg.rollout)
            .training(grpo=cfg.grpo, **{name: getattr(cfg, name) for name in SETTINGS if name not in OUTPUT_SETTINGS})
            .outputs(run_dir=cfg.run_dir, run_id=run_id, **{name: getattr(cfg, name) for name in OUTPUT_SETTINGS})
            .env_runners(num_env_runners=cfg.num_env_runners, num_cpus_per_env_runner=cfg.num_cpus_per_env_runner,
                         num_gpus_per_env_runner=cfg.num_gpus_per_env_runner,
                         custom_resources_per_env_runner=dict(cfg.custom_resources_per_env_runner))
            .learners(num_learners=0, num_gpus_per_learner=cfg.num_gpus_per_learner)
            .debugging(seed=cfg.rollout.seed)
            # a crashed env runner is restarted by Ray and resumed by UnmaskGRPO.restore_env_runners
            .fault_tolerance(restart_failed_env_runners=True, delay_between_env_runner_restarts_s=1.0)
        )

    # ---- builder methods ------------------------------------------------------------------------------
    def environment(self, env=NotProvided, *, rollout: RolloutConfig = NotProvided, **settings):
        """The dLLM environment: a whole `rollout=RolloutConfig(...)`, or its fields (model, task, group_size,
        prompts_per_sample, train_pool, seed, trust_remote_code), EnvConfig's fields (gen_length,
        block_length, temperature, kv_cache, device, dtype, ...) or `env=EnvConfig(...)`."""
        if rollout is not NotProvided:
            self.rollout = rollout
        if isinstance(env, EnvConfig):
            self.rollout = dataclasses.replace(self.rollout, env=env)
        elif env is not NotProvided:
            raise ValueError("UnmaskGRPO's environment is the dLLM MDP, not a gym env: configure it with "
                             ".environment(model=..., task=..., gen_length=..., block_length=...)")
        own = {k: settings.pop(k) for k in list(settings) if k in ROLLOUT_FIELDS}
        env_fields = {k: settings.pop(k) for k in list(settings) if k in ENV_FIELDS}
        self.rollout = dataclasses.replace(self.rollout, **own)
        if env_fields:
            self.rollout = dataclasses.replace(self.rollout, env=dataclasses.replace(self.rollout.env, **env_fields))
        return super().environment(**settings)

    def training(self, *, grpo: GRPOConfig = NotProvided, **settings):
        """GRPO: a whole `grpo=GRPOConfig(...)` or its fields (alpha, reward, lr, clip_eps, num_updates,
        policy=PolicyConfig(...), ...; RLlib's `lr` and `grad_clip` are GRPO's), and the AlgorithmSettings fields
        that are not outputs (`groups_per_update`, `max_policy_lag`, `staleness`, `stop_after_skipped`, ...)."""
        if grpo is not NotProvided:
            self.grpo = grpo
        ours = {k: settings.pop(k) for k in list(settings) if k in GRPO_FIELDS}
        self.grpo = dataclasses.replace(self.grpo, **ours)
        for name in SETTINGS:
            if name in settings and name not in OUTPUT_SETTINGS:
                setattr(self, name, settings.pop(name))
        return super().training(**settings)

    def outputs(self, *, run_dir: str = NotProvided, run_id: str = NotProvided,
                checkpoint_every: int = NotProvided, best_window: int = NotProvided,
                dump_trajectories: bool = NotProvided):
        """Where trajectory dumps and policy checkpoints go, and how often."""
        for name, value in (("run_dir", run_dir), ("run_id", run_id), ("checkpoint_every", checkpoint_every),
                            ("best_window", best_window), ("dump_trajectories", dump_trajectories)):
            if value is not NotProvided:
                setattr(self, name, str(value) if name == "run_dir" else value)
        return self

    def validate(self) -> None:
        super().validate()
        check_finite(self.rollout, "rollout.")
        check_finite(self.grpo, "grpo.")
        check_rollout(self.rollout)
        check_grpo(self.grpo)
        check_algorithm_settings(self)
        if self.observation_space is None or self.action_space is None:
            self.observation_space, self.action_space = policy_spaces(self.rollout.env.gen_length)
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
        return dataclasses.asdict(self.grpo.network())

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=UnmaskRLModule)

    def get_default_learner_class(self):
        return GRPOLearner


@dataclass
class Arrival:
    sample: RunnerSample
    lag: int  # learner updates since the policy version that sampled it
    used: bool  # lag <= max_policy_lag: trained on (else dropped, and counted)


@dataclass
class Collected:
    """One iteration's collect phase: every sample that arrived."""

    arrivals: list[Arrival]

    @property
    def fresh(self) -> list[TrajectoryBatch]:
        return [a.sample.trajectories for a in self.arrivals if a.used]

    def per_trajectory(self, field: str, experts: bool = False) -> list:
        """The policy's trajectories' values of `field` (experts=True: the experts' instead)."""
        return [v for a in self.arrivals
                for v, e in zip(getattr(a.sample.trajectories, field).tolist(), a.sample.trajectories.expert.tolist())
                if e == experts]


def may_admit(ahead_groups: int, in_flight: int, per_sample: int, need_groups: int, budget_groups: int) -> bool:
    """Pacing's admission rule: one more sample request is sent while what is buffered and in flight cannot yet
    fill the next update (so a run never stalls, whatever the sizes), or while it stays within the budget of
    `groups_per_update x (1 + pace_ahead)` groups."""
    promised = ahead_groups + in_flight * per_sample
    return promised < need_groups or promised + per_sample <= budget_groups


class UnmaskGRPO(Algorithm):
    @classmethod
    def get_default_config(cls) -> UnmaskGRPOConfig:
        return UnmaskGRPOConfig()

    def setup(self, config) -> None:
        super().setup(config)
        self.policy_version = 0
        self.server = None
        if self.env_runner_group.num_remote_env_runners() > 0:
            self.server = ray.remote(num_cpus=0)(EnvRunnerStateServer).options(max_concurrency=16).remote()
            self._hand_server_to_runners()
        self.totals = {"trajectories": 0, "skipped_batches": 0, "env_runner_restarts": 0, "skipped_streak": 0,
                       "stalled_streak": 0}
        self.recent: list[tuple[float, float, float]] = []  # (reward, accuracy, NFE) of the last best_window iterations
        self.best_reward = -float("inf")  # the best moving average so far (checkpoints/best holds its policy)
        self.buffer: list[RunnerSample] = []  # paced mode: samples that arrived and wait for an update
        self.runner_states: dict[int, dict] = {}  # runner index -> its state after its last delivered batch
        if self.run_dir is None:
            logger.warning("UnmaskGRPO: no run_dir (config.outputs(run_dir=...)) and not a Tune trial: "
                           "no trajectory dumps, policy checkpoints or final policy are written")
        self._broadcast_weights()

    @property
    def run_dir(self) -> Path | None:
        """The configured run directory, else the Tune trial directory (one per trial in a sweep), else None."""
        if self.config.run_dir:
            return Path(self.config.run_dir)
        storage = getattr(self, "_storage", None)  # Tune's StorageContext: the trial's directory in storage_path
        if storage is not None and storage.storage_filesystem.type_name == "local":
            return Path(storage.trial_fs_path)
        return None

    @property
    def run_id(self) -> str:
        """The configured run id, else the run directory's name (the trial's directory in a sweep)."""
        run_dir = self.run_dir
        return self.config.run_id or (run_dir.name if run_dir is not None else "")

    def cleanup(self) -> None:
        """Write the final policy, whatever stopped the run, then free the learner and the env runners."""
        try:
            if self.run_dir is not None and getattr(self, "learner_group", None) is not None:
                self.save_policy(self.run_dir / "checkpoints" / "final")
        finally:
            super().cleanup()

    def step(self) -> dict:
        """RLlib's step; Tune ends the run after `stop_after_skipped` stalled iterations in a row: updates skipped
        because every group's rewards were equal, so the policy no longer changes (a policy that unmasks nothing
        never gets out), or, with experts (whose rewards keep the advantages alive), iterations in which every
        policy rollout spent the whole forward budget and solved nothing."""
        results = super().step()
        if self.collapsed:
            results["done"] = True
        return results

    @property
    def collapsed(self) -> bool:
        patience = self.config.stop_after_skipped
        return bool(patience) and self.totals["stalled_streak"] >= patience

    # ---- the training step --------------------------------------------------------------------------
    def training_step(self) -> None:
        with self.metrics.log_time((TIMERS, "collect_s"), reduce="mean", window=1):
            collected = self._collect()
        with self.metrics.log_time((TIMERS, "update_s"), reduce="mean", window=1):
            skipped = self._update(collected.fresh)
        with self.metrics.log_time((TIMERS, "report_s"), reduce="mean", window=1):
            self._write_outputs(collected, iteration=self.iteration + 1)
            self._report(collected, skipped)

    @property
    def paced(self) -> bool:
        """Asynchronous runners under admission pacing (nothing dropped, stale steps importance-weighted)."""
        return (self.config.staleness == "pace" and self.config.max_policy_lag > 0
                and self.env_runner_group.num_remote_env_runners() > 0)

    def _collect(self) -> Collected:
        if self.paced:
            return self._collect_paced()
        collected = Collected([])
        while sum(batch.num_groups for batch in collected.fresh) < self.config.groups_per_update:
            samples = self._gather()
            if not samples and self.env_runner_group.num_healthy_remote_workers() == 0:
                self.restore_env_runners(self.env_runner_group)  # every runner is down: wait for restarts
            for sample in samples:
                self.runner_states[sample.trajectories.env_runner] = sample.runner_state
                lag = self.policy_version - sample.trajectories.policy_version
                collected.arrivals.append(Arrival(sample, lag, lag <= self.config.max_policy_lag))
        return collected

    def _collect_paced(self) -> Collected:
        """Admission pacing: a runner is asked for its next sample only while the groups buffered and in flight
        are fewer than `1 + pace_ahead` updates' worth, so runners never run further ahead of the learner than
        that; every sample that arrives is trained on, in arrival order (a sample left over waits in the buffer
        for the next update, and is saved with the checkpoint)."""
        need = self.config.groups_per_update
        while sum(s.trajectories.num_groups for s in self.buffer) < need:
            self._admit()
            arrived = self.env_runner_group.fetch_ready_async_reqs(tags="sample",
                                                                   timeout_seconds=self.config.sample_wait_s)
            if not arrived and self.env_runner_group.num_healthy_remote_workers() == 0:
                self.restore_env_runners(self.env_runner_group)  # every runner is down: wait for restarts
            for _, sample in arrived:
                self.runner_states[sample.trajectories.env_runner] = sample.runner_state
                self.buffer.append(sample)
        taken: list[RunnerSample] = []
        while sum(s.trajectories.num_groups for s in taken) < need:
            taken.append(self.buffer.pop(0))
        self._admit()  # the runners go on sampling while the learner updates
        return Collected([Arrival(s, self.policy_version - s.trajectories.policy_version, True) for s in taken])

    def _admit(self) -> None:
        """Send `sample` requests to idle healthy runners while the pacing budget allows."""
        group = self.env_runner_group
        per_sample = self.config.rollout.prompts_per_sample
        budget_groups = self.config.groups_per_update * (1 + self.config.pace_ahead)
        ahead = sum(s.trajectories.num_groups for s in self.buffer)
        in_flight = group._worker_manager.num_outstanding_async_reqs(tag="sample")
        for runner in group.healthy_worker_ids():
            if not may_admit(ahead, in_flight, per_sample, self.config.groups_per_update, budget_groups):
                break
            in_flight += group.foreach_env_runner_async(lambda r: r.sample(), tag="sample", remote_worker_ids=[runner])

    def _gather(self) -> list[RunnerSample]:
        group = self.env_runner_group
        if group.num_remote_env_runners() == 0:
            return [self.env_runner.sample()]
        if self.config.max_policy_lag == 0:  # on-policy: every runner samples with the newest weights
            return group.foreach_env_runner(lambda r: r.sample(), local_env_runner=False)
        return group.foreach_env_runner_async_fetch_ready(lambda r: r.sample(), tag="sample",
                                                          timeout_seconds=self.config.sample_wait_s)

    def _update(self, batches: list[TrajectoryBatch]) -> bool:
        """GRPO on whole groups; returns whether the batch was skipped (every advantage ~0)."""
        columns = {key: np.concatenate([b.learner_columns()[key] for b in batches])
                   for key in batches[0].learner_columns()}
        for b in batches:
            b.old_logp = self.proximal_logp(b)
        columns["old_logp"] = np.concatenate([b.old_logp for b in batches])
        if self.config.rollout.expert.thresholds and self.config.grpo.expert_likelihood == "position":
            columns["old_logits"] = np.concatenate([self.proximal_logits(b) for b in batches])
        rewards = torch.from_numpy(np.concatenate([b.reward for b in batches]))
        _, group_index = np.unique(np.concatenate([b.group_id for b in batches]), return_inverse=True)
        advantages = group_advantages(rewards, torch.from_numpy(group_index), self.config.grpo.scale_by_std)
        if float(advantages.abs().max()) < self.config.grpo.skip_zero_advantage:
            return True
        columns["advantages"] = advantages.numpy()
        with self.metrics.log_time(("unmask", "learner_s"), reduce="mean", window=1):
            results = self.learner_group.update(
                batch=MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(columns)}, env_steps=len(advantages)),
                num_epochs=self.config.grpo.num_updates, minibatch_size=len(advantages),
                shuffle_batch_per_epoch=False)
        self.metrics.aggregate(results, key=LEARNER_RESULTS)
        self.policy_version += 1
        with self.metrics.log_time(("unmask", "weight_push_s"), reduce="mean", window=1):
            self._broadcast_weights()
        return False

    def _report(self, collected: Collected, skipped: bool) -> None:
        rewards, samples = collected.per_trajectory("reward"), [a.sample for a in collected.arrivals]
        nfe, correct = collected.per_trajectory("nfe"), collected.per_trajectory("correct")  # the policy's
        trajectories = sum(len(s.trajectories) for s in samples)  # the experts' too: they cost rollouts as well
        lags = [a.lag for a in collected.arrivals]
        busy, idle = sum(s.busy_s for s in samples), sum(s.idle_s for s in samples)
        forwards = sum(s.forwards for s in samples)
        elapsed = self.metrics.peek((TIMERS, "collect_s")) + self.metrics.peek((TIMERS, "update_s"))
        self.totals["trajectories"] += trajectories
        self.totals["skipped_batches"] += int(skipped)
        self.totals["skipped_streak"] = self.totals["skipped_streak"] + 1 if skipped else 0
        stuck = min(nfe) >= self.config.rollout.env.gen_length and not any(correct)  # whole budget, no answer
        self.totals["stalled_streak"] = self.totals["stalled_streak"] + 1 if skipped or stuck else 0
        if skipped:
            for key in ("learner_s", "weight_push_s"):
                self.metrics.log_value(("unmask", key), 0.0, reduce="mean", window=1)
        report = {
            "reward_mean": float(np.mean(rewards)), "accuracy": float(np.mean(correct)),
            "nfe_mean": float(np.mean(nfe)),
            "trajectories_per_s": trajectories / max(elapsed, 1e-9),
            "env_runner_busy_fraction": busy / max(busy + idle, 1e-9),
            "rows_per_forward": sum(s.forward_rows for s in samples) / max(1, forwards),
            "forwards_per_s": forwards / max(busy, 1e-9),  # per runner-second of rollout work
            "emulation_overrun": sum(s.emulation_overruns for s in samples) / max(1, forwards),
            "buffered_groups": sum(s.trajectories.num_groups for s in self.buffer),
            "weight_pull_s": float(np.mean([s.weight_sync_s for s in samples])),
            "staleness_mean": float(np.mean(lags)), "staleness_max": int(max(lags)),
            "dropped_groups": sum(a.sample.trajectories.num_groups for a in collected.arrivals if not a.used),
            "skipped_batch": int(skipped), "skipped_streak": int(self.totals["skipped_streak"]),
            "stalled_streak": int(self.totals["stalled_streak"]),
            "collapsed": int(self.collapsed),  # the run stops after this iteration (step)
            "policy_version": self.policy_version,
            "trajectories_total": int(self.totals["trajectories"]),
            "env_runner_restarts": int(self.totals["env_runner_restarts"]),
            "healthy_env_runners": self.env_runner_group.num_healthy_remote_workers(),
        }
        if self.config.rollout.expert.thresholds:  # reward_mean, accuracy and nfe_mean above are the policy's
            report.update({f"expert_{key}": float(np.mean(collected.per_trajectory(field, experts=True)))
                           for key, field in (("reward_mean", "reward"), ("accuracy", "correct"), ("nfe_mean", "nfe"))})
        for key, value in report.items():
            self.metrics.log_value(("unmask", key), value, window=1)

    def proximal_logp(self, batch: TrajectoryBatch) -> np.ndarray:
        """[N, T] log-probs of the recorded decisions under the learner's policy now: the behaviour ones for a
        batch sampled by this version, recomputed for a stale one (GRPO's ratio is then taken against them, and
        each step weighted by min(pi_now / pi_behaviour, grpo.tis_cap))."""
        if batch.policy_version == self.policy_version:
            return batch.logp
        logits, active = self.proximal_logits(batch), batch.active
        out = np.zeros_like(batch.logp)
        out[active] = bernoulli_logp(torch.from_numpy(logits[active]), torch.from_numpy(batch.action[active]),
                                     torch.from_numpy(batch.valid[active]), self.config.grpo.policy_temperature).numpy()
        return out

    def proximal_logits(self, batch: TrajectoryBatch) -> np.ndarray:
        """[N, T, L] the learner's policy's unmask logits now, on every step the batch took (0 elsewhere)."""
        if getattr(self, "_proximal", (None, -1))[1] != self.policy_version:
            policy = UnmaskingPolicy(self.config.grpo.network())
            policy.load_state_dict({k.removeprefix("policy."): torch.as_tensor(v)
                                    for k, v in self.policy_state().items()})
            self._proximal = (policy.eval(), self.policy_version)
        policy, active = self._proximal[0], batch.active
        out = np.zeros(batch.confidences.shape, np.float32)
        with torch.no_grad():
            inputs = [torch.from_numpy(getattr(batch, name)[active]) for name in ("confidences", "mask", "t")]
            alpha = torch.from_numpy(np.broadcast_to(batch.alpha[:, None], active.shape)[active].copy())
            out[active] = policy(*inputs, alpha).numpy()
        return out

    # ---- weights ----------------------------------------------------------------------------------
    def policy_state(self) -> dict:
        state = self.learner_group.get_state(components=f"learner/{COMPONENT_RL_MODULE}/{DEFAULT_MODULE_ID}")
        return state["learner"][COMPONENT_RL_MODULE][DEFAULT_MODULE_ID]

    def _broadcast_weights(self) -> None:
        state = {COMPONENT_RL_MODULE: ray.put(self.policy_state()), WEIGHTS_SEQ_NO: self.policy_version}
        if self.server is not None:
            ray.get(self.server.push.remote(state))
        else:
            self.env_runner.set_state(state)

    def _hand_server_to_runners(self) -> None:
        server = self.server
        self.env_runner_group.foreach_env_runner(lambda r: r.set_state_server(server), local_env_runner=False)

    def restore_env_runners(self, env_runner_group):
        """A runner Ray restarted after a crash resumes where its last *delivered* batch left it: group
        counter, data cursor and RNG states (so group ids stay unique and gap-free, and the prompts of the
        batch lost in the crash are rolled out again), then pulls the newest weights from the server.
        (RLlib's default would copy the driver's idle local runner state: counters back to zero.)"""
        restored = env_runner_group.probe_unhealthy_env_runners()
        if not restored:
            return []
        self.totals["env_runner_restarts"] += len(restored)
        server, states = self.server, dict(self.runner_states)

        def resume(runner) -> None:
            runner.set_state_server(server)
            if runner.worker_index in states:
                runner.set_state(states[runner.worker_index])

        env_runner_group.foreach_env_runner(resume, local_env_runner=False, remote_worker_ids=restored)
        return restored

    # ---- files ---------------------------------------------------------------------------------------
    def _write_outputs(self, collected: Collected, iteration: int) -> None:
        run_dir = self.run_dir
        if run_dir is None:
            return
        if self.config.dump_trajectories:
            by_runner: dict[int, list[pa.Table]] = {}
            for arrival in collected.arrivals:
                batch = arrival.sample.trajectories
                by_runner.setdefault(batch.env_runner, []).append(batch.to_arrow(self.run_id, iteration, arrival.used))
            folder = run_dir / "trajectories" / f"iter_{iteration:06d}"
            for runner, tables in by_runner.items():
                write_parquet_atomic(pa.concat_tables(tables), folder / f"runner_{runner:03d}.parquet")
        if self.config.checkpoint_every and iteration % self.config.checkpoint_every == 0:
            self.save_policy(run_dir / "checkpoints" / f"policy_{self.policy_version:06d}", iteration)
        if self.config.best_window:
            self._keep_best(collected, run_dir / "checkpoints" / "best", iteration)

    def _keep_best(self, collected: Collected, out: Path, iteration: int) -> None:
        """The paper's checkpoint-best: once `best_window` iterations are in, the policy after the iteration that
        ends the best moving average of training reward so far, with that average's accuracy and NFE beside it, so
        a run's output is never worse than its best point (e.g. when it later collapses)."""
        window = self.config.best_window
        self.recent = [*self.recent, tuple(float(np.mean(collected.per_trajectory(key)))  # the policy's own
                                           for key in ("reward", "correct", "nfe"))][-window:]
        if len(self.recent) < window:
            return
        reward, accuracy, nfe = (float(np.mean(column)) for column in zip(*self.recent))
        if reward > self.best_reward:
            self.best_reward = reward
            self.save_policy(out, iteration, best={"window": window, "reward_mean": reward,
                                                   "accuracy": accuracy, "nfe_mean": nfe})

    def save_policy(self, out: Path, iteration: int | None = None, **extra) -> Path:
        """The learner's policy as a Hugging Face checkpoint, with how it was trained in its config.json."""
        policy = UnmaskingPolicy(self.config.grpo.network())
        policy.load_state_dict({k.removeprefix("policy."): torch.as_tensor(v) for k, v in self.policy_state().items()})
        env = self.config.rollout.env
        return save_policy(policy, out, {
            "policy_version": self.policy_version, "iteration": self.iteration if iteration is None else iteration,
            "run_id": self.run_id, "reward": self.config.grpo.reward, "alpha": self.config.grpo.alpha,
            "alpha_range": list(self.config.grpo.alpha_range), "experts": list(self.config.rollout.expert.thresholds),
            "gen_length": env.gen_length, "block_length": env.block_length, "kv_cache": env.kv_cache,
            "model": self.config.rollout.model, **extra})

    # ---- checkpoints: Tune saves every `checkpoint_every` iterations and at the end ----------------
    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict:
        state = super().get_state(components, not_components=not_components, **kwargs)
        state["unmask"] = {"policy_version": self.policy_version, "totals": dict(self.totals),
                           "runner_states": self.runner_states, "buffer": self.buffer,
                           "best": {"recent": list(self.recent), "reward": self.best_reward}}
        return state

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        if "unmask" in state:
            self.policy_version = state["unmask"]["policy_version"]
            self.totals = {**self.totals, **state["unmask"]["totals"]}
            self.runner_states = dict(state["unmask"]["runner_states"])
            self.buffer = list(state["unmask"].get("buffer", []))
            best = state["unmask"].get("best", {"recent": [], "reward": -float("inf")})
            self.recent, self.best_reward = list(best["recent"]), best["reward"]

    def restore_from_path(self, path, *args, **kwargs):
        """After RLlib's restore (Tune's and `from_checkpoint`'s; it copies the driver's idle runner state to
        every runner), put each runner back where it stood at the checkpoint and hand out the restored
        weights and version."""
        out = super().restore_from_path(path, *args, **kwargs)
        states = self.runner_states

        def resume(runner) -> None:
            runner.forget_weights()
            if runner.worker_index in states:
                runner.set_state(states[runner.worker_index])

        if self.env_runner_group.num_remote_env_runners() > 0:
            self.env_runner_group.foreach_env_runner(resume, local_env_runner=False)
        else:
            resume(self.env_runner)
        self._broadcast_weights()
        return out


def _register() -> None:
    from ray.tune.registry import register_trainable

    register_trainable("UnmaskGRPO", UnmaskGRPO)


_register()
