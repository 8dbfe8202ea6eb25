"""The algorithm's parts without Ray: the trajectory contract's imports, the collector's admission pacing over a
stand-in runner group, the run's totals and collapse rule, and checkpoint-best."""

import subprocess
import sys

import numpy as np
import pytest

from unmask.cluster.collector import Arrival, Collected, Collector
from unmask.cluster.config import OutputSettings, UpdateSettings
from unmask.cluster.metrics import RunTotals, collapse_seen, iteration_report, stuck
from unmask.cluster.outputs import RunOutputs
from unmask.rollout.env_runner import RunnerSample
from unmask.rollout.trajectories import TrajectoryBatch


def test_reading_a_dump_imports_numpy_and_pyarrow_only():
    probe = ("import sys; import unmask.rollout.trajectories as t; t.read_trajectories; "
             "heavy = [m for m in ('torch', 'ray', 'transformers', 'unmask.learner', 'unmask.envs.mdp') "
             "if m in sys.modules]; "
             "print(heavy)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def batch(runner: int, first_group: int, groups: int, version: int, members: int = 2, nfe: int = 2,
          correct: bool = False) -> TrajectoryBatch:
    N, L = groups * members, 2
    steps = {name: np.zeros((N, L, L), bool) for name in ("mask", "abandoned", "valid", "action")}
    return TrajectoryBatch(confidences=np.zeros((N, L, L), np.float32), extra_inputs=np.zeros((N, L, L, 0), np.float32),
                           **steps, t=np.zeros((N, L), np.float32),
                           logp=np.zeros((N, L), np.float32), reward=np.arange(N, dtype=np.float32),
                           final_abandoned=np.zeros((N, L), bool),
                           correct=np.full(N, correct), nfe=np.full(N, nfe, np.int32),
                           sample_id=np.tile(np.arange(members, dtype=np.int32), groups), expert=np.zeros(N, bool),
                           alpha=np.ones(N, np.float32), prompt_id=["p"] * N,
                           group_id=[f"r{runner}-g{first_group + g}" for g in range(groups) for _ in range(members)],
                           completion=[""] * N, env_runner=runner, policy_version=version)


class StandInRunners:
    """What the collector asks of RLlib's EnvRunnerGroup, answered by counting: each `sample` request is answered
    at the next fetch with `per_sample` new groups, stamped with the version the runner holds."""

    def __init__(self, runners: int, per_sample: int):
        self.ids, self.per_sample = list(range(1, runners + 1)), per_sample
        self.pending: list[int] = []
        self.made = dict.fromkeys(self.ids, 0)
        self.version, self.most_in_flight = 0, 0

    def num_remote_env_runners(self) -> int:
        return len(self.ids)

    def healthy_worker_ids(self) -> list[int]:
        return [i for i in self.ids if i not in self.pending]  # an idle runner is the one asked

    def num_healthy_remote_workers(self) -> int:
        return len(self.ids)

    def num_in_flight_async_reqs(self, tag: str) -> int:
        return len(self.pending)

    def foreach_env_runner(self, fn, local_env_runner: bool = False, remote_worker_ids=None) -> list:
        return []

    def foreach_env_runner_async(self, fn, tag: str, remote_worker_ids: list[int]) -> int:
        self.pending += remote_worker_ids
        self.most_in_flight = max(self.most_in_flight, len(self.pending))
        return len(remote_worker_ids)

    def fetch_ready_async_reqs(self, tags: str, timeout_seconds: float) -> list[tuple[int, RunnerSample]]:
        arrived = []
        for runner in self.pending:
            trajectories = batch(runner, self.made[runner], self.per_sample, self.version)
            self.made[runner] += self.per_sample
            arrived.append((runner, RunnerSample(trajectories, 1.0, 0.0, 0.0, {"groups_made": self.made[runner]})))
        self.pending = []
        return arrived


@pytest.mark.parametrize("runners, per_sample, need, pace_ahead", [(1, 3, 2, 1), (3, 1, 4, 0), (2, 2, 2, 2)])
def test_paced_collection_trains_on_every_sample_once_in_order_within_its_budget(runners, per_sample, need,
                                                                                   pace_ahead):
    fleet = StandInRunners(runners, per_sample)
    settings = UpdateSettings(groups_per_update=need, max_policy_lag=1, staleness="pace", pace_ahead=pace_ahead)
    collector = Collector(fleet, settings, per_sample, board="board")
    taken = []
    for version in range(6):
        fleet.version = version
        collected = collector.collect(version)
        groups = [g for a in collected.arrivals for g in dict.fromkeys(a.sample.trajectories.group_id)]
        assert len(groups) >= need and all(a.used for a in collected.arrivals)
        assert all(a.lag == version - a.sample.trajectories.policy_version >= 0 for a in collected.arrivals)
        taken += groups
    buffered = [g for s in collector.buffer for g in dict.fromkeys(s.trajectories.group_id)]
    delivered = sum(fleet.made.values())
    assert len(taken) + len(buffered) == delivered  # every delivered group trained on or waiting, none twice
    assert len(set(taken + buffered)) == len(taken + buffered)
    for runner in fleet.made:  # in the order they arrived
        numbers = [int(g.split("-g")[1]) for g in taken if g.startswith(f"r{runner}-")]
        assert numbers == sorted(numbers)
    assert fleet.most_in_flight * per_sample <= max(need * (1 + pace_ahead), need - 1 + per_sample)
    assert collector.runner_states == {r: {"groups_made": fleet.made[r]} for r in fleet.made if fleet.made[r]}


def test_streaks_say_when_a_run_has_stalled():
    totals = RunTotals()
    for skipped, stalled in ((True, False), (True, False), (False, True), (False, False)):
        totals.count(10, skipped, stalled)
        if skipped or stalled:
            assert totals.collapsed(3) == (totals.stalled_streak >= 3)
    assert (totals.trajectories, totals.skipped_batches, totals.skipped_streak, totals.stalled_streak) == (40, 2, 0, 0)
    totals.count(10, True, False)
    assert totals.skipped_streak == totals.stalled_streak == 1 and not totals.collapsed(0)  # 0: never stop
    spent = Collected([Arrival(RunnerSample(batch(1, 0, 2, 0, nfe=8), 1.0, 0.0, 0.0, {}), 0, True)])
    def stuck_at(collected, gen_length, num_blocks):
        return stuck(collected, collapse_seen(collected, gen_length, num_blocks))

    assert stuck_at(spent, gen_length=8, num_blocks=1) and not stuck_at(spent, gen_length=9, num_blocks=1)
    assert collapse_seen(spent, gen_length=8, num_blocks=1) == "nothing"
    at_once = Collected([Arrival(RunnerSample(batch(1, 0, 2, 0, nfe=3), 1.0, 0.0, 0.0, {}), 0, True)])
    assert stuck_at(at_once, gen_length=24, num_blocks=3) and not stuck_at(at_once, gen_length=24, num_blocks=2)
    assert collapse_seen(at_once, gen_length=24, num_blocks=3) == "all_at_once"
    solved = batch(1, 0, 2, 0, nfe=3)
    solved.correct[0] = True
    assert not stuck_at(Collected([Arrival(RunnerSample(solved, 1.0, 0.0, 0.0, {}), 0, True)]), 24, 3)


def test_the_report_is_the_policy_s_own_and_counts_what_arrived():
    arrivals = Collected([Arrival(RunnerSample(batch(1, 0, 2, 3, correct=True), 2.0, 1.0, 0.1, {}), 1, True)])
    totals = RunTotals()
    totals.count(4, False, False)
    report = iteration_report(arrivals, totals, skipped=False, collapsed=False, elapsed_s=2.0, buffered_groups=0,
                              policy_version=4, restarts=0, healthy_runners=1, experts=False)
    assert report["reward_mean"] == 1.5 and report["accuracy"] == 1.0 and report["nfe_mean"] == 2.0
    assert report["trajectories_per_s"] == 2.0 and report["env_runner_busy_fraction"] == pytest.approx(2 / 3)
    assert report["staleness_max"] == 1 and report["dropped_groups"] == 0 and report["trajectories_total"] == 4


def test_checkpoint_best_is_the_end_of_the_best_moving_average(tmp_path):
    saved = []
    outputs = RunOutputs(tmp_path, "run", OutputSettings(checkpoint_every=2, best_window=2, dump_trajectories=False),
                         lambda out, iteration, **extra: saved.append((out.name, iteration, extra)))
    for iteration, rewards in enumerate(([0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [3.0, 3.0], [0.0, 0.0]), start=1):
        sample = RunnerSample(batch(1, iteration, 1, 0), 1.0, 0.0, 0.0, {})
        sample.trajectories.reward = np.array(rewards, np.float32)
        outputs.write(Collected([Arrival(sample, 0, True)]), [np.zeros((2, 2))], iteration, version=iteration)
    best = [(iteration, extra["best"]["reward_mean"]) for name, iteration, extra in saved if name == "best"]
    assert best == [(2, 0.5), (4, 1.5)]  # averages 0.5, 0.5, 1.5, 1.5: a new best only when it rises
    assert [(name, iteration) for name, iteration, _ in saved if name != "best"] == [
        ("policy_000002_iter_000002", 2), ("policy_000004_iter_000004", 4)]


def test_the_disk_check_reads_the_disk_of_a_run_directory_not_made_yet(tmp_path, monkeypatch):
    """The RLlib API path checks the disk before the run's first write, when its directory may not exist yet."""
    from unmask.cluster import outputs as module
    from unmask.envs.files import DiskFull

    run_dir = tmp_path / "not" / "made" / "yet"
    outputs = RunOutputs(run_dir, "run", OutputSettings(), lambda *a, **k: None)
    outputs.check_disk()  # the disk of tmp_path, the nearest folder that exists
    assert not run_dir.exists()
    monkeypatch.setattr(module, "DISK_HEADROOM", 1 << 62)
    with pytest.raises(DiskFull, match=f"the disk of {run_dir} has"):
        outputs.check_disk()


def test_the_report_counts_groups_without_a_gradient_and_groups_whose_members_decoded_alike():
    from unmask.cluster.metrics import group_spread

    varied = batch(1, 0, 2, 0)  # rewards 0, 1 | 2, 3: every group has a spread
    varied.completion = ["a", "b", "c", "d"]
    alike = batch(1, 2, 2, 0)
    alike.reward[:] = 1.0  # equal rewards and identical answers in both groups
    same_reward = batch(1, 4, 1, 0)
    same_reward.reward[:] = 0.0
    same_reward.completion = ["a", "b"]  # no gradient, but the members still differ
    collected = Collected([Arrival(RunnerSample(b, 1.0, 0.0, 0.0, {}), 0, True) for b in (varied, alike, same_reward)])
    assert group_spread(collected) == {"flat_groups": 3 / 5, "identical_groups": 2 / 5}


def test_every_local_path_a_run_reads_is_made_absolute_before_tune_changes_directory(tmp_path, monkeypatch):
    """Tune runs trials (and Ray its learner) in other working directories: a relative grpo.init_policy was looked up
    as a hub id there."""
    from unmask.cluster.config import TrainConfig
    from unmask.cluster.train import absolute_paths

    monkeypatch.chdir(tmp_path)
    for name in ("clone", "dllm"):
        (tmp_path / name).mkdir()
    cfg = TrainConfig(out_dir="run")
    cfg.model, cfg.init_from = "dllm", "clone"
    cfg.task.name, cfg.task.path, cfg.task.test_path = "jsonl", "a.jsonl", "b.jsonl"
    done = absolute_paths(cfg)
    assert (done.model, done.init_from, done.out_dir) == tuple(str(tmp_path / n) for n in ("dllm", "clone", "run"))
    assert (done.task.path, done.task.test_path) == (str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"))
    cfg.init_from = "someone/policy-on-the-hub"
    assert absolute_paths(cfg).init_from == "someone/policy-on-the-hub"


def test_debugging_seed_seeds_the_learner_without_rllib_s_deterministic_mode():
    """`.debugging(seed=...)` (`unmask train` gives its seed): the same initial policy for the same seed, another for
    another seed, and RLlib's own seed (which would switch a CPU build of torch to deterministic algorithms) unset."""
    import torch

    from unmask.cluster.algorithm_config import UnmaskGRPOConfig
    from unmask.cluster.config import TrainConfig

    def initial_weights(config) -> list:
        config = config.environment(gen_length=4, block_length=4)
        config.validate()  # sets the spaces
        learner = config.build_learner(env=None)
        learner.build()
        return list(learner.module["default_policy"].policy.state_dict().values())

    torch.use_deterministic_algorithms(False)
    seeded = UnmaskGRPOConfig().debugging(seed=3)
    assert seeded.global_seed == 3 and seeded.seed is None
    first, again, other = (initial_weights(UnmaskGRPOConfig().debugging(seed=s)) for s in (3, 3, 4))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert not torch.are_deterministic_algorithms_enabled()
    assert UnmaskGRPOConfig.from_train_config(TrainConfig(seed=7)).global_seed == 7
