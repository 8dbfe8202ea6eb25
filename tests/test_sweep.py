"""`unmask sweep` on a real local Ray: a Tune grid over alpha, per-trial run directories, the Pareto report
with policies beside heuristics, Tuner.restore, and bad grids."""

import json

import pytest

from unmask.cli.main import main
from unmask.cluster.config import FinalEvalConfig, SweepConfig
from unmask.cluster.sweep import sweep
from unmask.envs.config import EnvConfig, TaskConfig
from unmask.learner.config import GRPOConfig, PolicyConfig
from unmask.learner.policy import policy_info
from unmask.rollout.config import RolloutConfig
from unmask.rollout.trajectories import read_trajectories


def tiny_sweep(model_dir, run_dir, **overrides) -> SweepConfig:
    rollout = RolloutConfig(group_size=4, prompts_per_sample=2, train_pool=64)
    grpo = GRPOConfig(reward="additive", lr=1e-3, warmup_steps=1)
    settings = dict(model=model_dir, task=TaskConfig(num_symbols=7), env=EnvConfig(gen_length=16, block_length=8),
                    rollout=rollout, grpo=grpo, policy=PolicyConfig(init_bias=0.0), out_dir=str(run_dir),
                    max_iterations=2, num_env_runners=0, groups_per_update=2, checkpoint_every=0,
                    eval=FinalEvalConfig(num_examples=8), heuristic_grid="small", block_lengths=[4],
                    grid={"grpo": {"alpha": [0.5, 2.0]}})
    settings.update(overrides)
    return SweepConfig(**settings)


@pytest.mark.slow
def test_sweep_over_alpha_reports_policies_beside_heuristics_and_resumes(local_ray, tiny_model_dir, tmp_path):
    run_dir = tmp_path / "sweep"
    result = sweep(tiny_sweep(tiny_model_dir, run_dir))

    trials = result["trials"]
    assert [t["grpo.alpha"] for t in trials] == [0.5, 2.0]
    assert all(t["status"] == "finished" and t["iterations"] == 2 for t in trials), trials
    assert json.loads((run_dir / "trials.json").read_text())["trials"] == json.loads(json.dumps(trials))
    assert "grpo.alpha" in (run_dir / "trials.md").read_text()
    for t in trials:  # each trial trained with its own alpha, in its own directory
        info = policy_info(t["policy"])
        assert info["alpha"] == t["grpo.alpha"] and info["reward"] == "additive" and info["run_id"] == t["trial"]
        dumps = read_trajectories(f"{t['policy']}/../../trajectories")
        assert set(dumps.column("run_id").to_pylist()) == {t["trial"]}
        assert sorted(set(dumps.column("iteration").to_pylist())) == [1, 2]

    rows = result["pareto"]
    assert {r["block_length"] for r in rows} == {4, 8, 16}  # report BL, the trained BL, full diffusion
    for bl in (4, 8, 16):
        settings = {r["setting"] for r in rows if r["block_length"] == bl}
        assert {"policy alpha=0.5 block_length=8 reward=additive",
                "policy alpha=2.0 block_length=8 reward=additive"} <= settings
        assert any(s.startswith("top_k") for s in settings) and any(s.startswith("fast_dllm") for s in settings)
    assert all(r["num_examples"] == 8 for r in rows)
    assert json.loads((run_dir / "pareto.json").read_text())["rows"] == json.loads(json.dumps(rows))
    assert (run_dir / "pareto.png").stat().st_size > 10_000
    assert "policy alpha=2.0" in (run_dir / "pareto.md").read_text()
    # the report ran in a Ray task with one runner's resources (here the learner's, num_env_runners=0), not in the
    # driver: on_runner_resources, whose placement on a GPU runner's resources test_cluster_ready checks
    assert json.loads((run_dir / "report-resources.json").read_text())["resources"] == {"CPU": 1.0}

    # resume: Tuner.restore finds both trials finished and runs nothing new
    before = sorted(p.name for p in (run_dir / "tune").iterdir() if p.is_dir())
    again = sweep(tiny_sweep(tiny_model_dir, tmp_path / "elsewhere", resume=str(run_dir)))
    assert [t["trial"] for t in again["trials"]] == [t["trial"] for t in trials]
    assert sorted(p.name for p in (run_dir / "tune").iterdir() if p.is_dir()) == before

    with pytest.raises(ValueError, match="already holds a run"):
        sweep(tiny_sweep(tiny_model_dir, run_dir))
    with pytest.raises(ValueError, match="was started with max_iterations=2, not 3: a run resumes with its own config"):
        sweep(tiny_sweep(tiny_model_dir, run_dir, resume=str(run_dir), max_iterations=3))
    with pytest.raises(ValueError, match="no run to resume there"):
        sweep(tiny_sweep(tiny_model_dir, tmp_path / "nothing", resume=str(tmp_path / "nothing")))


@pytest.mark.slow
def test_a_failed_trial_is_reported_not_hidden(local_ray, tiny_model_dir, tmp_path, capsys):
    """One grid point's model has truncated weights (its files, config and tokenizer pass the driver's checks;
    loading the weights in the env runner fails): its trial fails at runtime, the other finishes; the command
    lists the failure, reports the finished policy, and exits 1."""
    import shutil

    not_a_model = shutil.copytree(tiny_model_dir, tmp_path / "truncated")
    weights = not_a_model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    run_dir = tmp_path / "sweep"
    code = main(["sweep", f"out_dir={run_dir}", f"grid.model=[{tiny_model_dir},{not_a_model}]",
                 "grid.grpo.alpha=[1.0]", "rollout.group_size=4", "rollout.prompts_per_sample=2",
                 "rollout.train_pool=64", "env.gen_length=16", "env.block_length=8", "groups_per_update=2",
                 "max_iterations=2", "num_env_runners=0", "checkpoint_every=0", "eval.num_examples=4",
                 "block_lengths=[4]", f"model={tiny_model_dir}"])
    out = capsys.readouterr().out
    assert code == 1
    trials = json.loads((run_dir / "trials.json").read_text())["trials"]
    assert sorted(t["status"] for t in trials) == ["failed", "finished"]
    failed = next(t for t in trials if t["status"] == "failed")
    assert failed["model"] == str(not_a_model) and failed["error"]
    assert f"FAILED {failed['trial']}" in out and "1 of 2 trials finished" in out
    rows = json.loads((run_dir / "pareto.json").read_text())["rows"]
    assert sum(r["sampler"] == "policy" for r in rows) == 3  # the finished policy at BL 4, 8 and 16


@pytest.mark.parametrize("args, message", [
    (["grid.grpo.alpha=3"], "grid.grpo.alpha must be a non-empty list"),
    (["grid.policy.width=[64,128]"], "a sweep varies grpo.*, rollout.*, env.*, task.*, seed and model"),
    (["grid.max_iterations=[1,2]"], "a sweep varies grpo.*, rollout.*, env.*, task.*, seed and model"),
    (["grid.grpo.lr=[0.001,-1]"], "grid point {'grpo.alpha': 0.5, 'grpo.lr': -1}"),
    (["grid.grpo.alpah=[1,2]"], "grid point"),
])
def test_bad_sweep_grids_are_one_line_errors_before_anything_runs(tmp_path, capsys, args, message):
    run_dir = tmp_path / "sweep"
    assert main(["sweep", f"out_dir={run_dir}", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not run_dir.exists()

