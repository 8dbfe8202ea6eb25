"""`unmask train` end to end on a real local Ray: Tune, the UnmaskGRPO algorithm, dLLM env-runner actors,
asynchronous weight broadcast, Arrow dumps, checkpoints and the final eval."""

import csv
import json
import os
import signal
import threading
import time

import numpy as np
import pyarrow.dataset as ds
import pytest
import ray

from unmask.cli.main import main
from unmask.cluster.config import FinalEvalConfig, TrainConfig
from unmask.cluster.train import train
from unmask.envs.config import EnvConfig, TaskConfig
from unmask.learner.config import GRPOConfig, PolicyConfig
from unmask.learner.policy import load_policy
from unmask.rollout.config import RolloutConfig
from unmask.rollout.trajectories import SCHEMA_VERSION, TRAJECTORY_SCHEMA, read_trajectories


def tiny_run(model_dir, run_dir, eval_examples: int = 10, **overrides) -> TrainConfig:
    """A policy that starts at s = 0.5 and an additive speed reward: on a random tiny dLLM nothing is
    correct, so the reward is -NFE/L and rises exactly when GRPO teaches the policy to unmask more."""
    rollout = RolloutConfig(group_size=4, prompts_per_sample=2, train_pool=64)  # few prompts: few to build
    grpo = GRPOConfig(reward="additive", alpha=1.0, lr=1e-3, warmup_steps=1)
    settings = dict(model=model_dir, task=TaskConfig(num_symbols=7), env=EnvConfig(gen_length=16, block_length=8),
                    rollout=rollout, grpo=grpo, policy=PolicyConfig(init_bias=0.0), out_dir=str(run_dir),
                    max_iterations=8, num_env_runners=1, groups_per_update=2, checkpoint_every=4,
                    eval=FinalEvalConfig(num_examples=eval_examples))
    settings.update(overrides)
    return TrainConfig(**settings)


def progress(run_dir) -> list[dict]:
    [path] = list((run_dir / "tune").glob("*/progress.csv"))
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_paced_training_with_two_runners_end_to_end(local_ray, tiny_model_dir, tmp_path):
    """Two asynchronous env runners under admission pacing, end to end: the run directory, Tune's metrics, the
    paper's checkpoint-best, the Arrow dumps (every trajectory once, nothing dropped), the iteration and version
    conventions, learning; and a step sampled by an older policy was trained against the learner's log-prob at the
    time (recomputed here from the policy saved at that version), i.e. weighted by min(pi_then / pi_behaviour,
    tis_cap)."""
    import torch

    from unmask.learner.grpo import fallback_logp

    run_dir = tmp_path / "run"
    result = train(tiny_run(tiny_model_dir, run_dir, num_env_runners=2, best_window=3, checkpoint_every=1,
                            staleness="pace", max_policy_lag=1, pace_ahead=1))

    # run directory: config, checkpoints in safetensors, Tune metrics, final eval
    assert (run_dir / "config.yaml").read_text().count("group_size: 4") == 1
    assert json.loads((run_dir / "eval.json").read_text())["num_examples"] == 10 == result["num_examples"]
    load_policy(run_dir / "checkpoints" / "final")
    rows = progress(run_dir)
    assert len(rows) == 8
    for key in ("reward_mean", "accuracy", "nfe_mean", "trajectories_per_s", "env_runner_busy_fraction",
                "weight_push_s", "weight_pull_s", "staleness_mean", "dropped_groups"):
        assert f"unmask/{key}" in rows[0], key
    # checkpoint-best: the policy after the iteration ending the best 3-iteration moving average of training reward
    rewards = [float(r["unmask/reward_mean"]) for r in rows]
    averages = [np.mean(rewards[i - 3:i]) for i in range(3, len(rewards) + 1)]
    best = json.loads((run_dir / "checkpoints" / "best" / "config.json").read_text())["training"]
    assert best["iteration"] == 3 + int(np.argmax(averages)) and best["best"]["window"] == 3
    assert best["best"]["reward_mean"] == pytest.approx(max(averages), abs=1e-6)
    assert best["best"]["nfe_mean"] == pytest.approx(
        np.mean([float(r["unmask/nfe_mean"]) for r in rows][best["iteration"] - 3:best["iteration"]]), abs=1e-6)
    load_policy(run_dir / "checkpoints" / "best")

    # Arrow dumps: one file per iteration per runner that delivered in it, one dataset, the documented schema
    files = sorted((run_dir / "trajectories").glob("iter_*/runner_*.parquet"))
    assert len({f.parent.name for f in files}) == 8 and {f.name for f in files} <= {"runner_001.parquet",
                                                                                  "runner_002.parquet"}
    table = read_trajectories(run_dir / "trajectories")
    assert table.schema.metadata[b"unmask.trajectory_schema_version"] == str(SCHEMA_VERSION).encode()
    assert ds.dataset(str(run_dir / "trajectories"), format="parquet").schema.names == TRAJECTORY_SCHEMA.names
    assert ray.data.read_parquet(str(run_dir / "trajectories")).count() == table.num_rows

    # every trajectory exactly once, with one row per step it took; pacing drops nothing
    df = table.to_pandas()
    assert set(df["env_runner"]) == {1, 2}
    assert df["used"].all() and int(float(rows[-1]["unmask/dropped_groups"])) == 0
    assert not df.duplicated(["group_id", "sample_id", "step"]).any()
    per_traj = df.groupby(["group_id", "sample_id"]).agg(rows=("step", "size"), nfe=("nfe", "first"),
                                                        first=("step", "min"), last=("step", "max"),
                                                        iterations=("iteration", "nunique"))
    assert (per_traj["rows"] == per_traj["nfe"]).all() and (per_traj["first"] == 0).all()
    assert (per_traj["last"] == per_traj["nfe"] - 1).all() and (per_traj["iterations"] == 1).all()
    assert len(per_traj) == int(float(rows[-1]["unmask/trajectories_total"]))
    groups = df.drop_duplicates("group_id")["group_id"].str.extract(r"r(\d+)-g(\d+)").astype(int)
    for _, numbers in groups.groupby(0)[1]:  # per runner: every group it delivered, none twice (a left-over
        assert len(set(numbers)) == len(numbers)  # sample may still wait in the buffer at the end)

    # versions never go back; the learner's version when iteration k gathered is its version after k, less k's own
    # update; pacing keeps every sample within 1 + pace_ahead updates of it
    by_iter = df.groupby("iteration")["policy_version"].agg(["min", "max"])
    assert (np.diff(by_iter["min"].to_numpy()) >= 0).all()
    assert df["policy_version"].max() >= 1
    learner_version = {int(r["training_iteration"]): int(float(r["unmask/policy_version"]))
                       - (1 - int(float(r["unmask/skipped_batch"]))) for r in rows}
    df["learner_version"] = df["iteration"].map(learner_version)
    lag = df["learner_version"] - df["policy_version"]
    assert (lag >= 0).all() and (lag <= 2).all()
    assert lag.groupby(df["iteration"]).max().to_dict() == {
        int(r["training_iteration"]): int(float(r["unmask/staleness_max"])) for r in rows}
    streak = 0  # skipped updates in a row, as the console's collapse warning reads it
    for r in rows:
        streak = streak + 1 if int(float(r["unmask/skipped_batch"])) else 0
        assert int(float(r["unmask/skipped_streak"])) == streak
    # one iteration convention: dumps, Tune and the saved policies all count iterations from 1
    assert sorted(set(df["iteration"])) == list(range(1, 9))
    saved = {json.loads((d / "config.json").read_text())["training"]["policy_version"]:
             json.loads((d / "config.json").read_text())["training"]["iteration"]
             for d in (run_dir / "checkpoints").glob("policy_*")}
    after = {int(float(r["unmask/policy_version"])): int(r["training_iteration"]) for r in rows}  # last one wins
    assert saved == after  # a checkpoint every iteration, named by the version it holds
    final = json.loads((run_dir / "checkpoints" / "final" / "config.json").read_text())["training"]
    assert final["iteration"] == 8 and final["policy_version"] == int(float(rows[-1]["unmask/policy_version"]))

    # learning happened: the speed reward of the last iterations beats the first
    reward = df.groupby(["group_id", "sample_id"]).first().groupby("iteration")["reward"].mean()
    assert reward.iloc[-2:].mean() > reward.iloc[0] + 0.1, reward.to_dict()

    # stale steps: trained against the learner's log-prob of the time, fresh ones against their own
    fresh = df[df["policy_version"] == df["learner_version"]]
    assert (fresh["old_logp"] == fresh["logp"]).all()
    stale = df[df["policy_version"] < df["learner_version"]]
    assert len(stale) > 0, "pacing let no sample go stale: nothing was importance-weighted"
    for version, part in stale.groupby("learner_version"):
        [saved_at] = sorted((run_dir / "checkpoints").glob(f"policy_{version:06d}_iter_*"))[-1:]
        policy = load_policy(saved_at)
        with torch.no_grad():
            column = {name: torch.from_numpy(np.stack(part[name].to_numpy())) for name in
                      ("confidences", "mask", "action", "valid")}
            logits = policy(column["confidences"], column["mask"], torch.tensor(part["t"].to_numpy()))
        expected = fallback_logp(logits, column["action"], column["valid"])  # grpo.fallback: evaluation's rule
        np.testing.assert_allclose(part["old_logp"].to_numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def kill_one_env_runner_when(ready) -> threading.Thread:
    """SIGKILL the process of one live DLLMEnvRunner actor of *this* Ray instance once `ready()`. The process is
    found first (Ray's state API can take seconds on a busy machine), so the kill lands when `ready()` turns true,
    not after the run has gone on without needing the runner again; a runner an earlier run left alive is not it."""
    killed: list[int] = []

    def runners() -> dict[str, int]:
        return {a["ActorID"]: a.get("Pid") for a in ray._private.state.actors().values()
                if a["ActorClassName"] == "DLLMEnvRunner" and a["State"] == "ALIVE" and a.get("Pid")}

    earlier = set(runners())

    def run():
        deadline, pid = time.time() + 300, None
        while time.time() < deadline and pid is None:
            pid = next((p for actor, p in runners().items() if actor not in earlier), None)
            time.sleep(0.1)
        while time.time() < deadline and not ready():
            time.sleep(0.05)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    thread = threading.Thread(target=run, daemon=True)
    thread.killed = killed
    thread.start()
    return thread


def test_the_console_names_the_collapse_it_sees_once_a_streak_starts_and_then_rarely(capsys):
    """Skipped (or stuck) iterations in a row: at COLLAPSE_WARNING_STREAK the console says so on stderr, naming what
    the rollouts show (nothing unmasked, everything at once, identical groups, or only equal rewards), then again
    every COLLAPSE_WARNING_EVERY iterations while it lasts, not every iteration."""
    from unmask.cluster.progress import COLLAPSE_WARNING_EVERY, COLLAPSE_WARNING_STREAK, ProgressPrinter

    base = {"reward_mean": 0.0, "accuracy": 0.0, "trajectories_per_s": 1.0, "env_runner_busy_fraction": 1.0,
            "staleness_mean": 0.0, "policy_version": 129}
    cases = [({"nfe_mean": 24.0, "collapse_nothing": 1}, "NFE 24.00 = L): the policy has collapsed to unmasking"),
             ({"nfe_mean": 3.0, "collapse_all_at_once": 1}, "NFE 3.00 = the number of blocks): the policy has "
                                                              "collapsed to unmasking everything at once"),
             ({"nfe_mean": 9.0, "collapse_identical": 1, "identical_groups": 0.95, "reward_mean": 0.8},
              "the members of 95% of groups decoded identically: the policy has become deterministic"),
             ({"nfe_mean": 9.0, "reward_mean": 0.5}, "every group's members scored alike (reward 0.500, NFE 9.00)")]
    printer = ProgressPrinter()
    for flags, words in cases:
        for streak in range(2 * COLLAPSE_WARNING_EVERY + 1):
            printer.on_trial_result(0, [], "trial", {"training_iteration": 130 + streak, "time_total_s": 1.0,
                                                     "unmask": {**base, **flags, "skipped_streak": streak}})
        out, err = capsys.readouterr()
        assert out.count("iter ") == 2 * COLLAPSE_WARNING_EVERY + 1
        warnings = err.strip().splitlines()
        assert len(warnings) == 3 and all(words in w for w in warnings), err  # at 3, 25 and 50
        assert f"WARNING: {COLLAPSE_WARNING_STREAK} updates in a row skipped (every advantage 0): " in warnings[0]
        assert ("collapsed" in err) == ("collapse_nothing" in flags or "collapse_all_at_once" in flags)
    printer.on_trial_result(0, [], "trial", {"training_iteration": 1, "time_total_s": 1.0, "unmask": {
        **base, "nfe_mean": 24.0, "collapse_nothing": 1, "skipped_streak": 0, "stalled_streak": 3}})
    assert "3 iterations in a row stuck (no rollout solved its prompt): every policy rollout spent" in (
        capsys.readouterr().err)


@pytest.mark.parametrize("runners", [1, 3, 8])
def test_pacing_never_stalls_and_stays_within_its_budget(runners):
    """The admission rule, simulated over every small size: each update is filled (a request is always sent while
    the buffer and the requests in flight cannot fill it, even when one sample is larger than the budget, as with
    prompts_per_sample 8 and groups_per_update 2), and no more is asked for than the budget or one sample over
    the need."""
    from unmask.cluster.collector import may_admit

    for per_sample in range(1, 10):
        for need in range(1, 10):
            for pace_ahead in range(3):
                budget = need * (1 + pace_ahead)
                ahead, in_flight = 0, 0
                for _ in range(12):  # twelve updates
                    while ahead < need:
                        while in_flight < runners and may_admit(ahead, in_flight, per_sample, need, budget):
                            in_flight += 1
                        assert in_flight > 0, (per_sample, need, pace_ahead)  # something will arrive
                        assert ahead + in_flight * per_sample <= max(budget, need - 1 + per_sample)
                        in_flight, ahead = in_flight - 1, ahead + per_sample  # one sample arrives
                    ahead -= need  # the update takes its groups


@pytest.mark.slow
def test_expert_steered_alpha_conditioned_training_end_to_end(local_ray, tiny_model_dir, tmp_path):
    """Experts and a drawn alpha on real Ray: each group has G = 4 policy members and one Fast-dLLM expert
    (lambda 0: a whole expert block of 8 per step, so NFE 2 at L = 16), each group at its own alpha from
    [0.3, 3]; the metrics report the expert apart, the dumps mark it, and the saved policy is alpha-conditioned
    and evaluates at any `sampler.alpha`. Trained with per-step credit (grpo.credit=value): the learner fits its state
    value (its loss reported), while the runners and checkpoints get the policy alone."""
    from unmask.rollout.config import ExpertConfig

    run_dir = tmp_path / "steered"
    base = tiny_run(tiny_model_dir, run_dir, eval_examples=4)
    rollout = RolloutConfig(**{**base.rollout.__dict__, "expert": ExpertConfig(thresholds=[0.0], block_length=8)})
    grpo = GRPOConfig(**{**base.grpo.__dict__, "alpha_range": [0.3, 3.0], "credit": "value", "value_warmup": 1})
    result = train(tiny_run(tiny_model_dir, run_dir, eval_examples=4, rollout=rollout, grpo=grpo, max_iterations=4,
                            num_env_runners=0, validate_every=2, validate_examples=6))
    rows = progress(run_dir)
    assert len(rows) == 4 and all(float(r["unmask/expert_nfe_mean"]) == 2.0 for r in rows)
    value_losses = [float(r["learners/default_policy/value_loss"]) for r in rows
                    if r.get("learners/default_policy/value_loss") not in (None, "", "nan")]
    assert value_losses and all(0 <= v < 10 for v in value_losses)
    # held-out validation every 2 iterations, the start included: checkpoints/best is the best of them
    validated = {int(float(r["unmask/validation_iteration"])): float(r["unmask/validation_reward"]) for r in rows
                 if r["unmask/validation_iteration"] not in ("", "nan")}
    assert sorted(validated) == [0, 2, 4]
    best = json.loads((run_dir / "checkpoints" / "best" / "config.json").read_text())["training"]
    assert best["iteration"] in (0, 2, 4) and set(best["best"]["validation"]) == {"reward", "accuracy", "nfe"}
    assert best["best"]["validation"]["reward"] == pytest.approx(max(validated.values()), abs=1e-6)
    assert validated[best["iteration"]] == pytest.approx(max(validated.values()), abs=1e-6)
    assert all(float(r["unmask/nfe_mean"]) > 2.0 for r in rows[:1])  # the policy's own, apart from the expert's
    df = read_trajectories(run_dir / "trajectories").to_pandas()
    per_trajectory = df.groupby(["group_id", "sample_id"]).first().reset_index()
    assert (per_trajectory["expert"] == (per_trajectory["sample_id"] == 4)).all()
    assert per_trajectory.groupby("group_id")["expert"].sum().eq(1).all()  # one expert member per group
    alphas = per_trajectory.groupby("group_id")["alpha"].agg(["min", "max"])
    assert (alphas["min"] == alphas["max"]).all() and alphas["min"].between(0.3, 3.0).all()
    assert alphas["min"].nunique() == len(alphas)  # every group its own trade-off
    assert np.allclose(per_trajectory["reward"], -per_trajectory["alpha"] * per_trajectory["nfe"] / 16, atol=1e-6)
    final = json.loads((run_dir / "checkpoints" / "final" / "config.json").read_text())
    assert final["alpha_conditioned"] and final["training"]["alpha_range"] == [0.3, 3.0]
    assert "alpha_conditioned: true" in (run_dir / "config.yaml").read_text()  # the run's record says what it trained
    assert final["training"]["model"] == tiny_model_dir.rsplit("/", 1)[-1] and final["training"]["model_path"]
    assert final["training"]["experts"] == [0.0]
    assert "policy alpha=1/[0.3,3]" in result["sampler"] and "experts=0.0" in result["sampler"]
    response = result["alpha_response"]  # its NFE at both ends of the range; a policy that ignores alpha is named
    assert response["alpha"] == [0.3, 3.0] and response["responds"] == (
        response["mean_nfe"][1] < response["mean_nfe"][0] - 0.05)
    from unmask.rollout.config import EvalConfig
    from unmask.rollout.evaluate import evaluate

    fast = evaluate(EvalConfig(model=tiny_model_dir, task=TaskConfig(num_symbols=7), num_examples=4, progress=False,
                               env=EnvConfig(gen_length=16, block_length=8),
                               sampler=dict_sampler(run_dir / "checkpoints" / "final", alpha=3.0)))
    assert "alpha=3/[0.3,3]" in fast["sampler"]
    from unmask.rollout.config import ParetoConfig
    from unmask.rollout.pareto import run_pareto

    rows = run_pareto(ParetoConfig(model=tiny_model_dir, task=TaskConfig(num_symbols=7), env=EnvConfig(gen_length=16),
                                   block_lengths=[8], heuristic_grid="small",
                                   policies=[str(run_dir / "checkpoints" / "final")],
                                   policy_alphas=[0.3, 3.0], num_examples=4, out_dir=str(tmp_path / "p"),
                                   progress=False))
    curve = [r for r in rows if r["sampler"].startswith("policy")]
    series = "policy (alpha-conditioned, expert-steered, trained at BL=8)"  # one curve over alpha per panel
    assert [(r["block_length"], r["sampler"]) for r in curve] == [(bl, series) for bl in (8, 8, 16, 16)]
    assert all("alpha=0.3/" in low["setting"] and "alpha=3/" in high["setting"] for low, high in (curve[:2], curve[2:]))


def dict_sampler(checkpoint, **settings):
    from unmask.envs.config import SamplerConfig

    return SamplerConfig(name="policy", checkpoint=str(checkpoint), **settings)


@pytest.mark.slow
def test_a_policy_that_unmasks_nothing_stops_the_run_and_the_best_checkpoint_is_evaluated(local_ray, tiny_model_dir,
                                                                                           tmp_path, capsys):
    """The absorbing state: a policy that unmasks nothing abandons every position at the block budget, so every
    trajectory gets the same reward, every advantage is 0 and every update is skipped; the policy can never change
    again. After `stop_after_skipped` such updates the run stops, says so, and evaluates checkpoints/best, whose
    fallback share shows what the policy is."""
    run_dir = tmp_path / "collapsed"
    grpo = GRPOConfig(reward="additive", alpha=1.0, fallback=False)  # the paper's
    result = train(tiny_run(tiny_model_dir, run_dir, eval_examples=4, grpo=grpo, policy=PolicyConfig(init_bias=-30.0),
                            stop_after_skipped=2, best_window=1, num_env_runners=0))
    rows = progress(run_dir)
    assert len(rows) == 2 and all(int(float(r["unmask/skipped_batch"])) == 1 for r in rows)
    assert float(rows[-1]["unmask/nfe_mean"]) == 16.0  # NFE pinned at L
    err = capsys.readouterr().err
    assert "stopped at iteration 2: 2 updates in a row skipped (every advantage 0): every policy rollout spent the " \
           "whole forward budget (NFE 16.00 = L)" in err and "checkpoints/best" in err
    best = json.loads((run_dir / "checkpoints" / "best" / "config.json").read_text())["training"]
    assert best["iteration"] == 1 and best["policy_version"] == 0  # no update was ever applied
    assert result["fallback_share"] == 1.0 and result["num_examples"] == 4


@pytest.mark.slow
def test_with_experts_a_collapsed_policy_is_still_detected(local_ray, tiny_model_dir, tmp_path, capsys):
    """Experts keep the advantages alive (their reward differs from the policy's), so no update is skipped; a policy
    that unmasks nothing is caught instead by its rollouts: every one spends the whole budget and solves nothing."""
    from unmask.rollout.config import ExpertConfig

    run_dir = tmp_path / "collapsed-steered"
    base = tiny_run(tiny_model_dir, run_dir)
    rollout = RolloutConfig(**{**base.rollout.__dict__, "expert": ExpertConfig(thresholds=[0.0], block_length=8)})
    grpo = GRPOConfig(reward="additive", alpha=1.0, fallback=False)  # the paper's
    train(tiny_run(tiny_model_dir, run_dir, eval_examples=2, rollout=rollout, grpo=grpo,
                   policy=PolicyConfig(init_bias=-30.0), stop_after_skipped=2, num_env_runners=0))
    rows = progress(run_dir)
    assert len(rows) == 2 and not any(int(float(r["unmask/skipped_batch"])) for r in rows)
    assert [int(float(r["unmask/stalled_streak"])) for r in rows] == [1, 2]
    assert "stopped at iteration 2: 2 iterations in a row stuck (no rollout solved its prompt): every policy " \
           "rollout spent the whole forward budget (NFE 16.00 = L)" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_env_runner_is_restarted_and_no_trajectory_is_lost_or_duplicated(local_ray, tiny_model_dir,
                                                                               tmp_path):
    run_dir = tmp_path / "run"
    killer = kill_one_env_runner_when(lambda: (run_dir / "trajectories" / "iter_000002").exists())
    # the only runner dies: training cannot go on until Ray has restarted it and it has been resumed
    config = tiny_run(tiny_model_dir, run_dir, num_env_runners=1, max_iterations=6, eval_examples=0,
                      checkpoint_every=0, staleness="drop")  # asynchronous, too stale a sample dropped
    config.env.batch_size = 3  # continuous batching: 3 of the 8 rows in flight
    train(config)
    killer.join(timeout=1)
    assert killer.killed, "no env runner process was found to kill"

    rows = progress(run_dir)
    assert len(rows) == 6  # training went on to the end
    assert int(float(rows[-1]["unmask/env_runner_restarts"])) >= 1  # and says what happened
    assert int(float(rows[-1]["unmask/healthy_env_runners"])) == 1

    df = read_trajectories(run_dir / "trajectories").to_pandas()
    assert not df.duplicated(["group_id", "sample_id", "step"]).any()
    per_traj = df.groupby(["group_id", "sample_id"]).agg(rows=("step", "size"), nfe=("nfe", "first"))
    assert (per_traj["rows"] == per_traj["nfe"]).all()  # every dumped trajectory is whole
    assert len(per_traj) == int(float(rows[-1]["unmask/trajectories_total"]))
    learner_version = {int(r["training_iteration"]): int(float(r["unmask/policy_version"]))
                       - (1 - int(float(r["unmask/skipped_batch"]))) for r in rows}
    lag = df["iteration"].map(learner_version) - df["policy_version"]  # trained on within max_policy_lag, else dropped
    assert (lag[df["used"]] <= 1).all() and (lag[~df["used"]] > 1).all()
    # the restarted runner resumed its group counter: per runner the group numbers are 0..n-1, no gap, no repeat
    groups = df.drop_duplicates("group_id")["group_id"].str.extract(r"r(\d+)-g(\d+)").astype(int)
    for runner, numbers in groups.groupby(0)[1]:
        assert sorted(numbers) == list(range(len(numbers))), runner


@pytest.mark.parametrize("args, message", [
    (["env.block_length=5"], "not divisible"),
    (["rollout.group_size=1"], "group_size"),
    (["grpo.reward=linear"], "grpo.reward"),
    (["max_policy_lag=-1"], "max_policy_lag"),
])
def test_bad_train_input_is_one_line(args, message, tmp_path, capsys):
    assert main(["train", f"out_dir={tmp_path / 'r'}", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_unreachable_ray_address_is_a_quick_one_line_error(tmp_path, capsys):
    assert main(["train", f"out_dir={tmp_path / 'r'}", "ray_address=127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Ray cluster at '127.0.0.1:9'" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("key", ["directory", "not hex", "short"])
def test_a_run_key_that_is_no_key_is_refused_before_any_work(key, tmp_path, capsys, monkeypatch):
    path = tmp_path / "key"
    if key == "directory":
        path.mkdir()
    else:
        path.write_text("not hex at all" if key == "not hex" else "abcd")
    monkeypatch.setenv("UNMASK_RUN_KEY", str(path))
    assert main(["train", f"out_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert f"the run key {path}" in err and "is not a key" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_existing_run_dir_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("keep me")
    assert main(["train", f"out_dir={tmp_path / 'r'}"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "r" / "config.yaml").read_text() == "keep me"


@pytest.mark.slow
def test_training_on_a_native_llada_with_gsm8k_and_a_kv_cache(local_ray, tmp_path):
    """The real-model path end to end: official-layout LLaDA checkpoint, GSM8K files, chat template,
    prefix-cached env (sampled in the learner's process); the policy is trained on the trajectories it dumps."""
    from tests.native_checkpoints import write_gsm8k, write_llada

    model = write_llada(tmp_path / "llada")
    task = TaskConfig(name="gsm8k", path=str(write_gsm8k(tmp_path / "gsm8k")))
    config = tiny_run(str(model), tmp_path / "run", max_iterations=3, checkpoint_every=0, eval_examples=3,
                      num_env_runners=0)
    config.task = task
    config.env.kv_cache = "prefix"
    train(config)
    table = read_trajectories(tmp_path / "run" / "trajectories")
    assert table.num_rows > 0 and set(table.column("iteration").to_pylist()) == {1, 2, 3}
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["num_examples"] == 3
