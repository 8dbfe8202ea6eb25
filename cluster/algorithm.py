"""UnmaskGRPO: the RLlib Algorithm that wires dLLM env runners (rollout/) to the GRPO learner (learner/).

One training iteration = one GRPO update:
  1. gather complete groups from the env runners until `groups_per_update` fresh ones are buffered.
     With `max_policy_lag` > 0 runners sample asynchronously (they never stop for the learner); groups
     whose policy version lags the learner by more than `max_policy_lag` are dropped. With 0 the loop
     is on-policy: runners sample after each update, with its weights.
  2. advantages over whole groups (R - group mean), then `grpo.num_updates` optimiser steps on the batch
     (a batch whose advantages are all ~0 is skipped, as in the paper's code);
  3. push the new weights (version + 1) to the state server, where runners pull them;
  4. write this iteration's trajectories, one Parquet file per env runner, and the policy checkpoint.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import gymnasium as gym
import numpy as np
import ray
import torch
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.core import COMPONENT_RL_MODULE, DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.env_runner_state_server import EnvRunnerStateServer
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

from learner.grpo import group_advantages
from learner.module import GRPOLearner, UnmaskRLModule, grpo_config
from learner.policy import save_policy
from rollout.env_runner import DLLMEnvRunner
from rollout.trajectories import to_table, write_parquet_atomic

TRAIN_COLUMNS = ("confidence", "masked", "valid", "action", "t", "active")


def policy_spaces(gen_length: int) -> tuple[gym.Space, gym.Space]:
    """Placeholder spaces RLlib requires; nothing reads them (the runner builds its own observations)."""
    obs = gym.spaces.Dict({"confidence": gym.spaces.Box(0, 1, (gen_length,)),
                           "masked": gym.spaces.MultiBinary(gen_length), "t": gym.spaces.Box(0, 1, ())})
    return obs, gym.spaces.MultiBinary(gen_length)


class UnmaskGRPOConfig(AlgorithmConfig):
    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or UnmaskGRPO)
        self.env_runner_cls = DLLMEnvRunner
        self._dont_auto_sync_env_runner_states = True  # runners pull weights themselves
        self.add_default_connectors_to_learner_pipeline = False
        self.max_policy_lag = 1
        self.groups_per_update = 8
        self.sample_wait_s = 1.0
        self.run_dir = ""  # trajectory dumps and policy checkpoints go here ("" = nowhere)
        self.run_id = ""
        self.dump_trajectories = True
        self.checkpoint_every = 10

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=UnmaskRLModule)

    def get_default_learner_class(self):
        return GRPOLearner


class UnmaskGRPO(Algorithm):
    @classmethod
    def get_default_config(cls) -> UnmaskGRPOConfig:
        return UnmaskGRPOConfig()

    def setup(self, config) -> None:
        super().setup(config)
        self.grpo = grpo_config(self.config.learner_config_dict)
        self.policy_version = 0
        self.buffer: list[dict] = []
        self.server = None
        if self.env_runner_group.num_remote_env_runners() > 0:
            self.server = ray.remote(num_cpus=0)(EnvRunnerStateServer).options(max_concurrency=16).remote()
            self._hand_server_to_runners()
        self.totals = defaultdict(float)
        self.runner_states: dict[int, dict] = {}  # runner index -> its state after its last delivered batch
        self._broadcast_weights()

    @property
    def run_dir(self) -> Path | None:
        """The configured run directory, else the Tune trial directory (one per trial in a sweep)."""
        if self.config.run_dir:
            return Path(self.config.run_dir)
        storage = getattr(self, "_storage", None)  # Tune's StorageContext: the trial's directory in storage_path
        if storage is not None and storage.storage_filesystem.type_name == "local":
            return Path(storage.trial_fs_path)
        return Path(self.logdir) if getattr(self, "logdir", None) else None

    @property
    def run_id(self) -> str:
        """The configured run id, else the run directory's name (the trial's directory in a sweep)."""
        run_dir = self.run_dir
        return self.config.run_id or (run_dir.name if run_dir is not None else "")

    def cleanup(self) -> None:
        """The final policy, whatever stopped the run."""
        if self.run_dir is not None and hasattr(self, "learner_group"):
            self.save_policy(self.run_dir / "checkpoints" / "final")
        super().cleanup()

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

    # ---- weights ----------------------------------------------------------------------------------
    def policy_state(self) -> dict:
        state = self.learner_group.get_state(components=f"learner/{COMPONENT_RL_MODULE}/{DEFAULT_MODULE_ID}")
        return state["learner"][COMPONENT_RL_MODULE][DEFAULT_MODULE_ID]

    def _broadcast_weights(self) -> float:
        start = time.perf_counter()
        state = {COMPONENT_RL_MODULE: ray.put(self.policy_state()), WEIGHTS_SEQ_NO: self.policy_version}
        if self.server is not None:
            ray.get(self.server.push.remote(state))
        else:
            self.env_runner.set_state(state)
        return time.perf_counter() - start

    # ---- sampling -----------------------------------------------------------------------------------
    def _gather(self) -> list[dict]:
        group = self.env_runner_group
        if group.num_remote_env_runners() == 0:
            return [self.env_runner.sample()]
        if self.config.max_policy_lag == 0:  # on-policy: every runner samples with the newest weights
            return group.foreach_env_runner(lambda r: r.sample(), local_env_runner=False)
        return group.foreach_env_runner_async_fetch_ready(lambda r: r.sample(), tag="sample",
                                                          timeout_seconds=self.config.sample_wait_s)

    def training_step(self) -> None:
        start = time.perf_counter()
        stats = defaultdict(list)
        dumps: dict[int, list] = defaultdict(list)
        fresh: list[dict] = []
        while sum(len(b["reward"]) for b in fresh) < self.config.groups_per_update * self._group_size():
            batches = self._gather()
            if not batches and self.env_runner_group.num_healthy_remote_workers() == 0:
                self.restore_env_runners(self.env_runner_group)  # every runner is down: wait for restarts
            for batch in batches:
                self.runner_states[batch["env_runner"]] = batch.pop("runner_state")
                lag = self.policy_version - batch["policy_version"]
                used = lag <= self.config.max_policy_lag
                stats["staleness"].append(lag)
                stats["dropped_groups"].append(0 if used else len(set(batch["group"].tolist())))
                for key in ("busy_s", "idle_s", "weight_sync_s"):
                    stats[key].append(batch["timing"][key])
                for key in ("reward", "correct", "nfe"):
                    stats[key].extend(batch[key].tolist())
                dumps[batch["env_runner"]].append((batch, used))
                if used:
                    fresh.append(batch)

        batch = self._learner_batch(fresh)
        advantages = batch["advantages"]
        skipped = bool(np.abs(advantages).max() < self.grpo.skip_zero_advantage)
        learn_s = sync_s = 0.0
        if not skipped:
            learn_start = time.perf_counter()
            results = self.learner_group.update(
                batch=MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(batch)}, env_steps=len(advantages)),
                num_epochs=self.grpo.num_updates, minibatch_size=len(advantages), shuffle_batch_per_epoch=False)
            learn_s = time.perf_counter() - learn_start
            self.metrics.aggregate(results, key="learners")
            self.policy_version += 1
            sync_s = self._broadcast_weights()

        self._write_outputs(dumps)
        elapsed = time.perf_counter() - start
        n = len(stats["reward"])
        self.totals["trajectories"] += n
        self.totals["skipped_batches"] += int(skipped)
        busy, idle = sum(stats["busy_s"]), sum(stats["idle_s"])
        report = {
            "reward_mean": float(np.mean(stats["reward"])), "accuracy": float(np.mean(stats["correct"])),
            "nfe_mean": float(np.mean(stats["nfe"])), "trajectories_per_s": n / elapsed,
            "env_runner_busy_fraction": busy / max(busy + idle, 1e-9),
            "weight_push_s": sync_s, "weight_pull_s": float(np.mean(stats["weight_sync_s"])),
            "staleness_mean": float(np.mean(stats["staleness"])), "staleness_max": int(max(stats["staleness"])),
            "dropped_groups": int(sum(stats["dropped_groups"])), "skipped_batch": int(skipped),
            "learner_s": learn_s, "policy_version": self.policy_version,
            "trajectories_total": int(self.totals["trajectories"]),
            "env_runner_restarts": int(self.totals["env_runner_restarts"]),
            "healthy_env_runners": self.env_runner_group.num_healthy_remote_workers(),
        }
        for key, value in report.items():
            self.metrics.log_value(("unmask", key), value, window=1)

    def _group_size(self) -> int:
        return int(self.config.env_config["rollout"]["group_size"])

    def _learner_batch(self, batches: list[dict]) -> dict:
        """Concatenate runner batches; group ids become unique across them before the advantages."""
        out = {key: np.concatenate([b[key] for b in batches]) for key in TRAIN_COLUMNS}
        out["old_logp"] = np.concatenate([b["logp"] for b in batches])
        rewards = torch.from_numpy(np.concatenate([b["reward"] for b in batches]))
        group_ids = torch.from_numpy(np.concatenate([b["group"] + 1_000_000 * i for i, b in enumerate(batches)]))
        out["advantages"] = group_advantages(rewards, group_ids, self.grpo.scale_by_std).numpy()
        return out

    # ---- files ---------------------------------------------------------------------------------------
    def _write_outputs(self, dumps: dict[int, list]) -> None:
        run_dir = self.run_dir
        if run_dir is None:
            return
        if self.config.dump_trajectories:
            import pyarrow as pa

            for runner, parts in dumps.items():
                table = pa.concat_tables([to_table(b, self.run_id, self.iteration, used) for b, used in parts])
                write_parquet_atomic(table, run_dir / "trajectories" / f"iter_{self.iteration:06d}"
                                     / f"runner_{runner:03d}.parquet")
        if self.config.checkpoint_every and (self.iteration + 1) % self.config.checkpoint_every == 0:
            self.save_policy(run_dir / "checkpoints" / f"policy_{self.policy_version:06d}")

    # ---- checkpoints: Tune saves every `checkpoint_every` iterations and at the end ----------------
    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict:
        state = super().get_state(components, not_components=not_components, **kwargs)
        state["unmask"] = {"policy_version": self.policy_version, "totals": dict(self.totals),
                           "runner_states": self.runner_states}
        return state

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        if "unmask" in state:
            self.policy_version = state["unmask"]["policy_version"]
            self.totals = defaultdict(float, state["unmask"]["totals"])
            self.runner_states = dict(state["unmask"]["runner_states"])

    def load_checkpoint(self, checkpoint_dir) -> None:
        """After RLlib's restore (which copies the driver's idle runner state to every runner), put each
        runner back where it stood at the checkpoint and hand out the restored weights and version."""
        super().load_checkpoint(checkpoint_dir)
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

    def save_policy(self, out: Path) -> Path:
        state = {k.removeprefix("policy."): v for k, v in self.policy_state().items()}
        env = self.config.env_config["rollout"]["env"]
        return save_policy(state, self.grpo.policy, out, {
            "policy_version": self.policy_version, "iteration": self.iteration, "run_id": self.run_id,
            "reward": self.grpo.reward, "alpha": self.grpo.alpha,
            "gen_length": env["gen_length"], "block_length": env["block_length"]})


def _register() -> None:
    from ray.tune.registry import register_trainable

    register_trainable("UnmaskGRPO", UnmaskGRPO)


_register()
