"""The RLlib way, exactly as docs/guides/python.md shows it: the typed UnmaskGRPOConfig with its defaults (built-in
model and task), build_algo / train / save_to_path / from_checkpoint / stop, and a Tune grid over alpha."""

import json
import time
from pathlib import Path

import pytest
import ray
import torch
from ray import tune

from unmask.cluster.algorithm import UnmaskGRPO
from unmask.cluster.algorithm_config import UnmaskGRPOConfig
from unmask.envs.config import EnvConfig, TaskConfig
from unmask.learner.config import GRPOConfig
from unmask.learner.policy import load_policy
from unmask.rollout.config import RolloutConfig
from unmask.rollout.trajectories import read_trajectories

pytestmark = pytest.mark.slow



def wait_until_free(cpus: float, timeout_s: float = 60) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if ray.available_resources().get("CPU", 0) >= cpus:
            return True
        time.sleep(0.1)
    return False


def test_the_documented_rllib_snippet(local_ray, tmp_path):
    run_dir = tmp_path / "rllib"
    # --- the guide's snippet, as written there (out_dir in tmp_path) ---------------------------------
    config = (UnmaskGRPOConfig()
              .env_runners(num_env_runners=1)
              .training(alpha=1.0, groups_per_update=2)
              .outputs(out_dir=str(run_dir)))
    algo = config.build_algo()
    result = algo.train()
    path = algo.save_to_path(str(tmp_path / "checkpoint"))
    algo.stop()  # writes run_dir/checkpoints/final and frees the env runner
    # ---------------------------------------------------------------------------------------------------
    assert 0.0 <= result["unmask"]["reward_mean"] <= 1.0 and result["unmask"]["trajectories_total"] == 64
    assert {"collect_s", "update_s", "report_s"} <= set(result["timers"])  # the three phases, timed
    assert algo.config.grpo.alpha == 1.0 and algo.config.updates.groups_per_update == 2
    assert algo.config.dllm.model == "builtin" and algo.config.dllm.env.gen_length == 24
    final = json.loads((run_dir / "checkpoints" / "final" / "config.json").read_text())["training"]
    assert final["iteration"] == 1 and final["alpha"] == 1.0 and final["gen_length"] == 24
    assert read_trajectories(run_dir / "trajectories").column("iteration").to_pylist()[0] == 1
    assert wait_until_free(4), "stop() left resources held"

    restored = UnmaskGRPO.from_checkpoint(path)
    assert restored.iteration == 1 and restored.policy_version == final["policy_version"]
    saved = load_policy(run_dir / "checkpoints" / "final").state_dict()
    live = {k.removeprefix("policy."): torch.as_tensor(v) for k, v in restored.policy_state().items()}
    assert all(torch.equal(saved[k], live[k]) for k in saved)
    again = restored.train()
    restored.stop()
    assert again["training_iteration"] == 2 and again["unmask"]["trajectories_total"] == 128
    assert sorted(set(read_trajectories(run_dir / "trajectories").column("iteration").to_pylist())) == [1, 2]
    assert wait_until_free(4)


def test_a_tune_grid_over_alpha_with_the_default_config(local_ray, tmp_path):
    tuner = tune.Tuner(
        "UnmaskGRPO",
        param_space=UnmaskGRPOConfig().env_runners(num_env_runners=0).training(
            alpha=tune.grid_search([0.5, 2.0]), groups_per_update=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="grid", stop={"training_iteration": 1}, verbose=0))
    results = tuner.fit()
    assert not results.errors
    seen = sorted(r.config["grpo"]["alpha"] for r in results)
    assert seen == [0.5, 2.0]
    for r in results:  # each trial wrote into its own trial directory, with its own alpha
        info = json.loads((Path(r.path) / "checkpoints" / "final" / "config.json").read_text())["training"]
        assert info["alpha"] == r.config["grpo"]["alpha"] and info["run_id"] == Path(r.path).name
        assert read_trajectories(Path(r.path) / "trajectories").num_rows > 0


def test_partial_and_typed_settings(local_ray, tmp_path):
    """A partial environment, whole typed configs, RLlib's own lr routed to GRPO, and errors for bad values."""
    config = (UnmaskGRPOConfig()
              .environment(gen_length=16, block_length=8, group_size=4, prompts_per_sample=2,
                           task=TaskConfig(num_symbols=7))
              .training(lr=1e-3, grad_clip=0.5, groups_per_update=2)
              .env_runners(num_env_runners=0))
    assert config.grpo.lr == 1e-3 and config.dllm.env == EnvConfig(gen_length=16, block_length=8)
    assert config.to_dict()["dllm"]["env"]["block_length"] == 8  # plain data for Tune
    restored = UnmaskGRPOConfig().update_from_dict(config.to_dict())
    assert restored.rollout == config.rollout and restored.dllm == config.dllm
    algo = config.build_algo()  # no run_dir and not a Tune trial: nothing is written
    result = algo.train()
    assert algo.run_dir is None and algo.config.grad_clip == 0.5
    assert result["unmask"]["trajectories_total"] == 2 * 4 and result["training_iteration"] == 1  # 2 groups of G = 4
    assert result["unmask"]["nfe_mean"] <= 16 and 0.0 <= result["unmask"]["accuracy"] <= 1.0
    algo.stop()
    whole = UnmaskGRPOConfig().environment(rollout=RolloutConfig(group_size=3)).training(grpo=GRPOConfig(alpha=3.0))
    assert whole.rollout.group_size == 3 and whole.grpo.alpha == 3.0
    with pytest.raises(ValueError, match="not divisible"):
        UnmaskGRPOConfig().environment(block_length=5).validate()
    with pytest.raises(ValueError, match="groups_per_update must be >= 1"):
        UnmaskGRPOConfig().training(groups_per_update=0).validate()
    with pytest.raises(ValueError, match="not a gym env"):
        UnmaskGRPOConfig().environment("CartPole-v1")
    with pytest.raises(TypeError):
        UnmaskGRPOConfig().training(alpah=1.0)
