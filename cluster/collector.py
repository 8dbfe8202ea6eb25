"""The algorithm's side of the env runners: what it asks of them and what it keeps of them.

- collect: complete groups for one update. On-policy (max_policy_lag 0) every runner samples with the newest
  weights; asynchronous with `staleness=drop`, whatever arrives is used unless its policy version lags the learner
  by more than max_policy_lag; under admission pacing (`staleness=pace`) a runner is asked for its next sample only
  while the groups buffered and in flight are fewer than `1 + pace_ahead` updates' worth, and every sample that
  arrives is trained on, in arrival order (stale steps are importance-weighted by the learner).
- weights: pushed to a WeightBoard actor the runners pull from (they never wait for the learner, nor it for them).
- runner state: each runner's state after its last *delivered* sample (group counter, data cursor, RNGs), so that
  a runner Ray restarted after a crash resumes there: group ids stay unique and gap-free and the prompts of the
  lost sample are rolled out again. The buffer and these states are part of the algorithm's checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import ray
from ray.rllib.core import COMPONENT_RL_MODULE
from ray.rllib.env.env_runner_group import EnvRunnerGroup
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

from unmask.cluster.config import UpdateSettings
from unmask.cluster.weights import WeightBoard
from unmask.rollout.env_runner import RunnerFailure, RunnerSample
from unmask.rollout.trajectories import TrajectoryBatch


@dataclass
class Arrival:
    sample: RunnerSample
    lag: int  # learner updates since the policy version that sampled it
    used: bool  # trained on (else dropped as too stale, and counted)


@dataclass
class Collected:
    """One iteration's collect phase: every sample that arrived, and every runner failure met on the way."""

    arrivals: list[Arrival]
    failures: list[RunnerFailure] = field(default_factory=list)

    @property
    def fresh(self) -> list[TrajectoryBatch]:
        return [a.sample.trajectories for a in self.arrivals if a.used]

    def per_trajectory(self, field: str, experts: bool = False) -> list:
        """The policy's trajectories' values of `field` (experts=True: the experts' instead)."""
        return [v for a in self.arrivals
                for v, e in zip(getattr(a.sample.trajectories, field).tolist(), a.sample.trajectories.expert.tolist())
                if e == experts]


RUNNERS_DOWN_S = 600  # with every runner down this long (an 8B model loads in a few minutes), the run stops


def may_admit(ahead_groups: int, in_flight: int, per_sample: int, need_groups: int, budget_groups: int) -> bool:
    """Pacing's admission rule: one more sample request is sent while what is buffered and in flight cannot yet
    fill the next update (so a run never stalls, whatever the sizes), or while it stays within the budget of
    `groups_per_update x (1 + pace_ahead)` groups."""
    promised = ahead_groups + in_flight * per_sample
    return promised < need_groups or promised + per_sample <= budget_groups


def groups(samples: list[RunnerSample]) -> int:
    return sum(s.trajectories.num_groups for s in samples)


class Collector:
    def __init__(self, runners: EnvRunnerGroup, settings: UpdateSettings, prompts_per_sample: int, board=None,
                 on_failure=lambda failures: None):
        """board: where weights are pushed for the runners to pull (default: a new WeightBoard actor when the
        runners are remote; none when the algorithm's own process samples). on_failure(failures so far this
        collect): told of each runner failure as it arrives; it raises to stop the run."""
        self.runners, self.settings, self.per_sample = runners, settings, prompts_per_sample
        self.on_failure = on_failure
        self.buffer: list[RunnerSample] = []  # paced: samples that arrived and wait for an update
        self.runner_states: dict[int, dict] = {}  # runner index -> its state after its last delivered sample
        self.restarts = 0
        self.down_since = 0.0  # when the last healthy runner was lost (0: some runner is up)
        self.board = board
        if self.board is None and self.remote:
            self.board = ray.remote(num_cpus=0)(WeightBoard).options(max_concurrency=16).remote()
        if self.remote:
            board = self.board
            runners.foreach_env_runner(lambda r: r.set_weight_board(board), local_env_runner=False)

    @property
    def remote(self) -> bool:
        return self.runners.num_remote_env_runners() > 0

    @property
    def paced(self) -> bool:
        """Asynchronous runners under admission pacing (nothing dropped, stale steps importance-weighted)."""
        s = self.settings
        return s.staleness == "pace" and s.max_policy_lag > 0 and self.remote

    # ---- collect ------------------------------------------------------------------------------------------
    def collect(self, version: int) -> Collected:
        """Samples until `groups_per_update` usable groups arrived; `version`: the learner's policy version."""
        if self.paced:
            return self._collect_paced(version)
        collected = Collected([])
        while groups([a.sample for a in collected.arrivals if a.used]) < self.settings.groups_per_update:
            samples = self._gather()
            if not samples and self.runners.num_healthy_remote_workers() == 0:
                self.restore()  # every runner is down: wait for restarts
            for sample in samples:
                if isinstance(sample, RunnerFailure):
                    collected.failures.append(sample)
                    self.on_failure(collected.failures)  # stops the run when the same cause keeps coming back
                    continue
                self.runner_states[sample.trajectories.env_runner] = sample.runner_state
                lag = version - sample.trajectories.policy_version
                collected.arrivals.append(Arrival(sample, lag, lag <= self.settings.max_policy_lag))
        return collected

    def _collect_paced(self, version: int) -> Collected:
        need, failures = self.settings.groups_per_update, []
        while groups(self.buffer) < need:
            self._admit()
            arrived = self.runners.fetch_ready_async_reqs(tags="sample", timeout_seconds=self.settings.sample_wait_s)
            if not arrived and self.runners.num_healthy_remote_workers() == 0:
                self.restore()  # every runner is down: wait for restarts
            for _, sample in arrived:
                if isinstance(sample, RunnerFailure):
                    failures.append(sample)
                    self.on_failure(failures)
                    continue
                self.runner_states[sample.trajectories.env_runner] = sample.runner_state
                self.buffer.append(sample)
        taken: list[RunnerSample] = []
        while groups(taken) < need:
            taken.append(self.buffer.pop(0))
        self._admit()  # the runners go on sampling while the learner updates
        return Collected([Arrival(s, version - s.trajectories.policy_version, True) for s in taken], failures)

    def _admit(self) -> None:
        """Send `sample` requests to idle healthy runners while the pacing budget allows."""
        need = self.settings.groups_per_update
        budget = need * (1 + self.settings.pace_ahead)
        in_flight = self.runners.num_in_flight_async_reqs(tag="sample")
        for runner in self.runners.healthy_worker_ids():
            if not may_admit(groups(self.buffer), in_flight, self.per_sample, need, budget):
                break
            in_flight += self.runners.foreach_env_runner_async(lambda r: r.sample(), tag="sample",
                                                               remote_worker_ids=[runner])

    def _gather(self) -> list[RunnerSample]:
        if not self.remote:
            return [self.runners.local_env_runner.sample()]
        if self.settings.max_policy_lag == 0:  # on-policy: every runner samples with the newest weights
            return self.runners.foreach_env_runner(lambda r: r.sample(), local_env_runner=False)
        return self.runners.foreach_env_runner_async_fetch_ready(lambda r: r.sample(), tag="sample",
                                                                timeout_seconds=self.settings.sample_wait_s)

    def validate(self) -> dict | RunnerFailure:
        """The newest policy on the held-out validation prompts, on one healthy runner (or the local one)."""
        if not self.remote:
            return self.runners.local_env_runner.validate()
        runner = self.runners.healthy_worker_ids()[:1]
        return self.runners.foreach_env_runner(lambda r: r.validate(), local_env_runner=False,
                                               remote_worker_ids=runner)[0]

    # ---- weights --------------------------------------------------------------------------------------------
    def push_weights(self, module_state: dict, version: int) -> None:
        state = {COMPONENT_RL_MODULE: ray.put(module_state), WEIGHTS_SEQ_NO: version}
        if self.board is not None:
            ray.get(self.board.push.remote(state, version))
        else:
            self.runners.local_env_runner.set_state(state)

    # ---- restarts and restores -------------------------------------------------------------------------------
    def restore(self) -> list[int]:
        """Runners Ray restarted after a crash: each resumes where its last delivered sample left it, then pulls
        the newest weights from the board. (RLlib's default would copy the driver's idle local runner state:
        counters back to zero.)"""
        restored = self.runners.probe_unhealthy_env_runners()
        if restored:
            self.restarts += len(restored)
            self._resume(restored, forget_weights=False)
        if self.remote and self.runners.num_healthy_remote_workers() == 0:
            self.down_since = self.down_since or time.monotonic()
            if time.monotonic() - self.down_since > RUNNERS_DOWN_S:
                raise RuntimeError(f"no env runner has been up for {RUNNERS_DOWN_S // 60} minutes: each crashed and "
                                   "its restarts (max_runner_restarts) are used up, or Ray cannot place it (the Ray "
                                   "logs of this session say why)")
        else:
            self.down_since = 0.0
        return restored

    def resume_all(self) -> None:
        """After the algorithm's checkpoint was restored: every runner back where it stood at the checkpoint, ready
        to take whatever weights are pushed next (even an older version than its own)."""
        if self.remote:
            self._resume(None, forget_weights=True)
        else:
            self.runners.local_env_runner.forget_weights()
            if 0 in self.runner_states:
                self.runners.local_env_runner.set_state(self.runner_states[0])

    def _resume(self, runner_ids: list[int] | None, forget_weights: bool) -> None:
        board, states = self.board, dict(self.runner_states)

        def resume(runner) -> None:
            runner.set_weight_board(board)
            if forget_weights:
                runner.forget_weights()
            if runner.worker_index in states:
                runner.set_state(states[runner.worker_index])

        self.runners.foreach_env_runner(resume, local_env_runner=False, remote_worker_ids=runner_ids)

    def get_state(self) -> dict:
        return {"runner_states": self.runner_states, "buffer": self.buffer, "restarts": self.restarts}

    def set_state(self, state: dict) -> None:
        self.runner_states = dict(state["runner_states"])
        self.buffer = list(state["buffer"])
        self.restarts = state["restarts"]
