"""UnmaskGRPO: the RLlib Algorithm that runs GRPO on dLLM env runners. It orchestrates four parts, each with one job:

    collector   the env runners: sample requests and pacing, weights they pull, their states (cluster.collector)
    learner     GRPO: advantages, proximal log-probs, TIS weights and the clipped loss (learner.learner)
    outputs     what the run writes: dumps, policy checkpoints, checkpoints/best (cluster.outputs)
    metrics     what each iteration reports, and the streaks that stop a stalled run (cluster.metrics)

One training iteration = one GRPO update, in three phases (`training_step`):
    collect   complete groups from the env runners until `groups_per_update` usable ones arrived
    update    the learner's update on them (or none, when every advantage is 0); new weights go to the runners
    report    this iteration's dumps, checkpoints and metrics
Iterations count from 1, as Tune's `training_iteration`: the dumps of iteration k are in `iter_{k:06d}`, and the
policy saved after it records `iteration: k`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.core import COMPONENT_RL_MODULE, DEFAULT_MODULE_ID
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import LEARNER_RESULTS, TIMERS

from unmask.cluster.algorithm_config import UnmaskGRPOConfig
from unmask.cluster.collector import Collected, Collector
from unmask.cluster.metrics import RunTotals, collapse_seen, iteration_report, stuck
from unmask.cluster.outputs import RunOutputs
from unmask.envs.files import write_atomic
from unmask.learner.learner import LastUpdate
from unmask.learner.policy import UnmaskingPolicy, save_policy
from unmask.rollout.config import EvalConfig
from unmask.rollout.env_runner import RunnerFailure
from unmask.rollout.trajectories import learner_batch

logger = logging.getLogger(__name__)


class UnmaskGRPO(Algorithm):
    """GRPO for unmasking policies as an RLlib Algorithm (the new API stack): dLLM env runners, one GRPO learner, one
    update per iteration. Built from an UnmaskGRPOConfig (`config.build_algo()`), or run by Tune (`unmask train`)."""

    def __init__(self, config=None, env=None, **kwargs):
        storage = kwargs.get("storage")  # Tune's storage of this trial (a Trainable's constructor argument)
        local = storage is not None and storage.storage_filesystem.type_name == "local"
        self.trial_dir = Path(storage.trial_fs_path) if local else None
        super().__init__(config, env, **kwargs)

    @classmethod
    def get_default_config(cls) -> UnmaskGRPOConfig:
        return UnmaskGRPOConfig()

    def setup(self, config) -> None:
        super().setup(config)
        self.policy_version = 0  # updates applied: the learner's weights version, as the runners see it
        self.collector = Collector(self.env_runner_group, self.config.updates, self.config.rollout.prompts_per_sample,
                                   on_failure=lambda failures: self.note_failure(failures[-1]))
        self.failures: dict[str, int] = {}  # a runner failure's cause -> times seen
        self.outputs = RunOutputs(self.run_dir, self.run_id, self.config.run_outputs, self.save_policy)
        self.totals = RunTotals()
        if self.run_dir is None:
            logger.warning("UnmaskGRPO: no out_dir (config.outputs(out_dir=...)) and not a Tune trial: "
                           "no trajectory dumps, policy checkpoints or final policy are written")
        self.collector.push_weights(self.policy_state(), self.policy_version)

    @property
    def run_dir(self) -> Path | None:
        """The configured run directory, else the Tune trial directory (one per trial in a sweep), else None."""
        return Path(self.config.run_outputs.out_dir) if self.config.run_outputs.out_dir else self.trial_dir

    @property
    def run_id(self) -> str:
        """The configured run id, else the run directory's name (the trial's directory in a sweep)."""
        return self.config.run_outputs.run_id or (self.run_dir.name if self.run_dir is not None else "")

    @property
    def collapsed(self) -> bool:
        return self.totals.collapsed(self.config.updates.stop_after_skipped)

    def step(self) -> dict:
        """RLlib's step; Tune ends the run after `stop_after_skipped` stalled iterations in a row (cluster.metrics)."""
        results = super().step()
        if self.collapsed:
            results["done"] = True
        return results

    def cleanup(self) -> None:
        """Write the final policy, whatever stopped the run, let the last dumps reach the disk, then free the learner
        and the env runners (setup may have failed before any of them existed)."""
        try:
            if self.run_dir is not None and getattr(self, "learner_group", None) is not None:
                self.save_policy(self.run_dir / "checkpoints" / "final")
        finally:
            try:
                if getattr(self, "outputs", None) is not None:
                    self.outputs.close()
            finally:
                super().cleanup()

    # ---- the training step --------------------------------------------------------------------------
    def training_step(self) -> None:
        self.outputs.check_disk()  # a disk about to fill up stops the run here, everything written whole
        if self.config.run_outputs.validate_every and self.iteration == 0:  # the start is a candidate too
            self.validate(0)
        with self.metrics.log_time((TIMERS, "collect_s"), reduce="mean", window=1):
            collected = self.collector.collect(self.policy_version)
        with self.metrics.log_time((TIMERS, "update_s"), reduce="mean", window=1):
            update = self.update(collected)
        with self.metrics.log_time((TIMERS, "report_s"), reduce="mean", window=1):
            self.outputs.write(collected, trained_logp(collected, update), self.iteration + 1, self.policy_version)
            self.report(collected, update.skipped)
        every = self.config.run_outputs.validate_every
        if every and (self.iteration + 1) % every == 0:
            self.validate(self.iteration + 1)

    def validate(self, iteration: int) -> None:
        """Held-out validation of the policy after `iteration` (0: the start); checkpoints/best follows it."""
        with self.metrics.log_time((TIMERS, "validate_s"), reduce="mean", window=1):
            validation = self.collector.validate()
        if isinstance(validation, RunnerFailure):  # noted (the run stops if it keeps failing); the next one counts
            self.note_failure(validation)
            return
        best = self.outputs.keep_validated(validation, iteration)
        for key, value in {**validation, "iteration": iteration, "best": int(best)}.items():
            self.metrics.log_value(("unmask", f"validation_{key}"), value, window=1)

    def update(self, collected: Collected) -> LastUpdate:
        """The learner's GRPO update on the groups to train on; new weights (version + 1) go to the runners."""
        batches = collected.fresh
        batch = MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(learner_batch(batches))},
                                env_steps=sum(len(b) for b in batches))
        with self.metrics.log_time(("unmask", "learner_s"), reduce="mean", window=1):
            results = self.learner_group.update(batch=batch, num_epochs=self.config.grpo.num_updates,
                                                minibatch_size=batch.env_steps(), shuffle_batch_per_epoch=False)
        [update] = [r.get() for r in self.learner_group.foreach_learner(lambda learner: learner.last_update)]
        if not update.skipped:
            self.metrics.aggregate(results, key=LEARNER_RESULTS)
            self.policy_version = update.policy_version
            with self.metrics.log_time(("unmask", "weight_push_s"), reduce="mean", window=1):
                self.collector.push_weights(self.policy_state(), self.policy_version)
        return update

    def report(self, collected: Collected, skipped: bool) -> None:
        trajectories = sum(len(a.sample.trajectories) for a in collected.arrivals)
        env = self.config.dllm.env
        seen = collapse_seen(collected, env.gen_length, env.gen_length // env.block_length)
        self.totals.count(trajectories, skipped, stuck(collected, seen))
        if skipped:
            for key in ("learner_s", "weight_push_s"):
                self.metrics.log_value(("unmask", key), 0.0, reduce="mean", window=1)
        elapsed = self.metrics.peek((TIMERS, "collect_s")) + self.metrics.peek((TIMERS, "update_s"))
        report = iteration_report(
            collected, self.totals, skipped=skipped, collapsed=self.collapsed, elapsed_s=elapsed,
            buffered_groups=sum(s.trajectories.num_groups for s in self.collector.buffer),
            policy_version=self.policy_version, restarts=self.collector.restarts,
            healthy_runners=self.env_runner_group.num_healthy_remote_workers(),
            experts=bool(self.config.rollout.expert.thresholds), seen=seen)
        for key, value in report.items():
            self.metrics.log_value(("unmask", key), value, window=1)

    def note_failure(self, failure: RunnerFailure) -> None:
        """A runner's sample or validation raised: its traceback is kept in out_dir/errors/, and the same cause seen
        more than max_runner_restarts times stops the run with that cause in one line (a deterministic error, such as
        a CUDA OOM at this batch size, comes back every time: retrying it for ever only looks like a hung run)."""
        kind = failure_kind(failure.cause)
        count = self.failures[kind] = self.failures.get(kind, 0) + 1
        where = "(no out_dir: not kept)"
        if self.run_dir is not None:
            path = self.run_dir / "errors" / f"runner_{failure.env_runner}-{sum(self.failures.values()):03d}.txt"
            write_atomic(path, failure.traceback)
            where = str(path)
        limit = self.config.max_num_env_runner_restarts
        if count > limit:
            raise RuntimeError(f"env runner {failure.env_runner}: {failure.cause} ({count} times, max_runner_restarts="
                               f"{limit}; traceback: {where})")
        logger.warning("env runner %d failed (%d of %d allowed): %s; traceback: %s", failure.env_runner, count, limit,
                       failure.cause, where)

    # ---- the policy -----------------------------------------------------------------------------------
    def policy_state(self) -> dict:
        """The policy's weights (`policy.*`): what runners decode with and checkpoints hold (not the learner's state
        value, per-step credit's baseline)."""
        state = self.learner_group.get_state(components=f"learner/{COMPONENT_RL_MODULE}/{DEFAULT_MODULE_ID}")
        return {k: v for k, v in state["learner"][COMPONENT_RL_MODULE][DEFAULT_MODULE_ID].items()
                if k.startswith("policy.")}

    def save_policy(self, out: Path, iteration: int | None = None, **extra) -> Path:
        """The learner's policy as a Hugging Face checkpoint, with how it was trained in its config.json."""
        policy = UnmaskingPolicy(self.config.network())
        policy.load_state_dict({k.removeprefix("policy."): torch.as_tensor(v) for k, v in self.policy_state().items()})
        dllm, grpo = self.config.dllm, self.config.grpo
        return save_policy(policy, out, {
            "policy_version": self.policy_version, "iteration": self.iteration if iteration is None else iteration,
            "run_id": self.run_id, "reward": grpo.reward, "alpha": grpo.alpha, "alpha_range": list(grpo.alpha_range),
            "experts": list(self.config.rollout.expert.thresholds), "gen_length": dllm.env.gen_length,
            "block_length": dllm.env.block_length, "kv_cache": dllm.env.kv_cache,
            "model": model_name(dllm.model), "model_path": dllm.model, **extra})

    # ---- the end of a run ---------------------------------------------------------------------------------
    def evaluate_final(self, cfg: EvalConfig, alpha: float, alpha_range: list[float]) -> dict:
        """`unmask train`'s final eval, asked for by the driver once Tune has decided that the run ends
        (cluster.remote.FinalEvalOnRunner), while the env runners still hold the dLLM: on the first healthy runner, or
        on this process's own when the learner samples itself. The final policy is written first: it is what `cfg`
        names (unless a stalled run hands over its best)."""
        if self.run_dir is not None:
            self.save_policy(self.run_dir / "checkpoints" / "final")
        if not self.collector.remote:
            return self.env_runner_group.local_env_runner.evaluate_final(cfg, alpha, alpha_range)
        runner = self.env_runner_group.healthy_worker_ids()[:1]
        if not runner:
            raise RuntimeError("no healthy env runner")
        return self.env_runner_group.foreach_env_runner(lambda r: r.evaluate_final(cfg, alpha, alpha_range),
                                                        local_env_runner=False, remote_worker_ids=runner)[0]

    # ---- faults and checkpoints (Tune saves every `checkpoint_every` iterations and at the end) -------------
    def restore_env_runners(self, env_runner_group) -> list[int]:
        """Runners Ray restarted after a crash resume where their last delivered sample left them (Collector)."""
        return self.collector.restore()

    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict:
        state = super().get_state(components, not_components=not_components, **kwargs)
        state["unmask"] = {"policy_version": self.policy_version, "totals": self.totals.get_state(),
                           "collector": self.collector.get_state(), "best": self.outputs.get_state()}
        return state

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        if "unmask" in state:
            self.policy_version = state["unmask"]["policy_version"]
            self.totals = RunTotals(**state["unmask"]["totals"])
            self.collector.set_state(state["unmask"]["collector"])
            self.outputs.set_state(state["unmask"]["best"])

    def restore_from_path(self, path, *args, **kwargs):
        """After RLlib's restore (Tune's and `from_checkpoint`'s; it copies the driver's idle runner state to every
        runner), put each runner back where it stood at the checkpoint and hand out the restored weights."""
        out = super().restore_from_path(path, *args, **kwargs)
        self.collector.resume_all()
        self.collector.push_weights(self.policy_state(), self.policy_version)
        return out


def failure_kind(cause: str) -> str:
    """A failure's cause with what differs between repeats of one error masked (the example, a number, a path), so
    that `ValueError: ... on example '24'` and `... on example '75'` count as the same error."""
    return re.sub(r"'[^']*'|\"[^\"]*\"|\d+(\.\d+)?", "_", cause)


def model_name(model: str) -> str:
    """What names a dLLM wherever a checkpoint goes: a hub id or "builtin" as given, a local one by its folder's name
    (its path on this machine is recorded beside it, as model_path)."""
    return Path(model).name if model != "builtin" and Path(model).exists() else model


def trained_logp(collected: Collected, update: LastUpdate) -> list[np.ndarray | None]:
    """Per arrival, the proximal log-probs the learner computed for it (None for a sample dropped as too stale)."""
    fresh = [a for a in collected.arrivals if a.used]
    parts = iter(np.split(update.old_logp, np.cumsum([len(a.sample.trajectories) for a in fresh])[:-1]))
    return [next(parts) if a.used else None for a in collected.arrivals]


def _register() -> None:
    from ray.tune.registry import register_trainable

    register_trainable("UnmaskGRPO", UnmaskGRPO)


_register()
