"""Ready for the cluster, tested on this CPU machine: the memory plan before any GPU-hour (--plan), a resource check
that counts everything, the dLLM only where Ray gives it a GPU, evaluation inside Ray (Ray's declared GPUs and the
GPU emulation stand in for real ones: the driver never loads a dLLM), and failures that stop in one line."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import ray

from unmask.cli.main import main
from unmask.cluster.config import TrainConfig
from unmask.cluster.train import check_resources, resources_needed

REPO = Path(__file__).resolve().parents[1]
LLADA_CONFIG = REPO / "configs" / "llada8b-gsm8k.yaml"


def test_plan_of_the_shipped_cluster_config_needs_no_weights_and_no_ray():
    """Three --plan command lines in one fresh interpreter (each prints its plan and its exit code), then whether any
    of them imported Ray."""
    commands = [["train", f"config={LLADA_CONFIG}", "task=cycles", "env.device_memory_gb=80", "--plan"],
                ["eval", "--plan"],
                ["eval", "env.device=cuda", "--plan"]]  # a GPU this machine does not have: its memory must be given
    probe = ("import json, sys; from unmask.cli.main import main\n"
             "for args in json.loads(sys.argv[1]): print('EXIT', main(args), flush=True)\n"
             "print('RAY' if 'ray' in sys.modules else 'NO RAY')")
    res = subprocess.run([sys.executable, "-c", probe, json.dumps(commands)], capture_output=True, text=True,
                         cwd=REPO)
    assert res.returncode == 0, res.stderr
    llada, built_in = res.stdout.split("EXIT ")[:2]  # what each printed before its exit code
    codes = [int(part.split()[0]) for part in res.stdout.split("EXIT ")[1:]]
    assert codes == [0, 0, 2] and res.stdout.strip().endswith("NO RAY")
    assert "nothing loaded, no Ray" in llada
    assert "the known shape of llada-8b (8.02 B parameters)" in llada and "weights      14.93 GiB" in llada
    assert "training    16 of 16 (2 prompts x 8)" in llada and "8 env runner(s)" in llada and "8 GPUs" in llada
    assert "evaluation  250 of 250" in built_in
    assert "give its memory with env.device_memory_gb" in res.stderr


def test_the_plan_sizes_batches_and_refuses_a_model_that_cannot_fit(tiny_dllm):
    from unmask.envs.config import EnvConfig
    from unmask.envs.memory import batch_rows

    roomy = EnvConfig(gen_length=16, device_memory_gb=8)
    assert batch_rows(tiny_dllm, roomy, prompt_length=12, wanted=250) == 250
    assert batch_rows(tiny_dllm, EnvConfig(gen_length=16, batch_size=7), prompt_length=12, wanted=250) == 7
    tight = EnvConfig(gen_length=16, device_memory_gb=0.0002)  # 200 kB: a few rows of this tiny model
    rows = batch_rows(tiny_dllm, tight, prompt_length=12, wanted=250)
    assert 1 <= rows < 250
    with pytest.raises(ValueError, match="does not fit: .* of weights"):
        batch_rows(tiny_dllm, EnvConfig(gen_length=16, device_memory_gb=1e-6), prompt_length=12, wanted=250)


def test_the_resource_check_counts_runners_learner_and_custom_resources_per_node():
    cfg = TrainConfig(num_env_runners=4, num_cpus_per_env_runner=2, num_gpus_per_env_runner=1, num_gpus_per_learner=1,
                      custom_resources_per_env_runner={"a100": 1})
    assert resources_needed(cfg) == {"CPU": 9, "GPU": 5, "a100": 4}
    assert resources_needed(cfg, concurrent_runs=2)["GPU"] == 10
    node = {"CPU": 16, "GPU": 8, "a100": 8}
    check_resources(cfg, 1, node, [node], "the cluster")  # fits
    with pytest.raises(ValueError, match=r"needs 5 GPU \(it has 4\)"):
        check_resources(cfg, 1, {**node, "GPU": 4}, [{**node, "GPU": 4}], "the cluster")
    with pytest.raises(ValueError, match=r"needs 4 a100 \(it has 0\)"):
        check_resources(cfg, 1, {"CPU": 16, "GPU": 8}, [{"CPU": 16, "GPU": 8}], "the cluster")
    two_gpu = TrainConfig(num_env_runners=1, num_gpus_per_env_runner=2)  # 4 GPUs in all, but never 2 on one node
    small_nodes = [{"CPU": 8, "GPU": 1}] * 4
    with pytest.raises(ValueError, match=r"no node of the cluster can hold an env runner \(1 CPU, 2 GPU\)"):
        check_resources(two_gpu, 1, {"CPU": 32, "GPU": 4}, small_nodes, "the cluster")


@pytest.mark.parametrize("args, message", [
    (["num_gpus_per_env_runner=1"], "this machine's Ray cannot hold the run: it needs 1 GPU (it has 0)"),
    (["env.device=cuda"], "env.device=cuda needs num_gpus_per_env_runner > 0: Ray gives a process its GPU"),
    (["env.device=cuda", "num_env_runners=0"], "needs num_gpus_per_learner (num_env_runners=0"),
    (["env.device=cpu", "num_gpus_per_env_runner=1"], "the GPU would sit idle"),
])
def test_a_run_that_cannot_be_placed_is_one_line_before_it_starts(args, message, tmp_path, capsys, no_ray):
    assert main(["train", f"out_dir={tmp_path / 'r'}", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("unmask train: error:"), err
    assert not (tmp_path / "r" / "config.yaml").exists()
    ray.shutdown()


FLAKY = textwrap.dedent('''
    CALLS = 0

    def verify(completion, answer):
        """Passes the driver's one check, then fails in every runner after its first call: a deterministic error."""
        global CALLS
        CALLS += 1
        if CALLS > 1:
            raise ValueError("verifier exploded")
        return completion == answer
''')


@pytest.fixture(scope="module")
def ray_with_gpus(tmp_path_factory):
    """One local Ray for this file's tests that need one. It declares 2 GPUs on this CPU machine: Ray schedules GPU
    actors and tasks onto them (CUDA is not needed to place them), and the runners' env.emulate_gpu keeps the model
    itself on the CPU. Its workers import modules from a folder, as `ray job submit --working-dir` gives a cluster (a
    verifier module and its data there), and Weights & Biases runs offline into another: Ray's workers (the logging
    actor is one) take their environment from the Ray's start. Yields (that folder, W&B's folder)."""
    ray.shutdown()
    seen, wandb_home = tmp_path_factory.mktemp("seen"), tmp_path_factory.mktemp("wandb-home")
    (seen / "flaky_verifier.py").write_text(FLAKY)
    rows = [{"prompt": f"{a}{b}?", "answer": f"{b}{a}"} for a in "abc" for b in "abc"] * 20
    (seen / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(seen))
        patch.setenv("PYTHONPATH", str(seen))
        for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_home), "WANDB_SILENT": "true"}.items():
            patch.setenv(key, value)
        ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
        yield seen, wandb_home
        ray.shutdown()


def tiny_gpu_args(model_dir: str, out: Path) -> list[str]:
    return [f"out_dir={out}", f"model={model_dir}", "task.num_symbols=7", "env.gen_length=16", "env.block_length=8",
            "env.emulate_gpu=h200-llada8b", "env.emulate_tokens=1", "num_gpus_per_env_runner=1",
            "rollout.group_size=4", "rollout.prompts_per_sample=2", "rollout.train_pool=64", "groups_per_update=2",
            "max_iterations=2",
            "checkpoint_every=0", "eval.num_examples=6"]


@pytest.mark.slow
def test_gpu_runners_train_and_the_final_eval_runs_on_the_runner_s_gpu_not_in_the_driver(
        ray_with_gpus, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """... and the run's metrics reach Weights & Biases and MLflow (offline: files) every iteration."""
    from unmask.envs import dllm

    def driver_load(*args, **kwargs):
        raise AssertionError("the driver loaded a dLLM")

    monkeypatch.setattr(dllm, "load_dllm", driver_load)  # this process is the driver; runners and tasks are others
    out = tmp_path / "run"
    tracked = ["tracking=[wandb,mlflow]", "tracking_project=unmask-test"]
    assert main(["train", *tiny_gpu_args(tiny_model_dir, out), *tracked]) == 0, capsys.readouterr().err
    result = json.loads((out / "eval.json").read_text())
    assert result["num_examples"] == 6
    # on the run's env runner, with the dLLM it had loaded, before the run let it go
    assert result["evaluated_on"]["env_runner"] == 1 and result["evaluated_on"]["resources"].get("GPU") == 1.0
    console = capsys.readouterr()
    assert "rows in flight per env runner" in console.out
    assert "the run ends after iteration 2: evaluating final on 6 test prompts on an env runner" in console.err
    assert "stopped after iteration 2: it reached max_iterations=2" in console.err

    from mlflow.tracking import MlflowClient

    client = MlflowClient((out / "mlruns").resolve().as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("unmask-test").experiment_id])
    history = client.get_metric_history(run.info.run_id, "unmask/reward_mean")
    assert len(history) == 2  # both iterations
    offline = list((ray_with_gpus[1] / "wandb").glob("offline-run-*/run-*.wandb"))
    assert offline and offline[0].stat().st_size > 0


@pytest.mark.slow
def test_a_final_eval_no_runner_could_do_runs_in_a_task_with_a_runner_s_resources(ray_with_gpus, tiny_model_dir,
                                                                                  tmp_path, capsys):
    """on_runner_resources, the place of this fallback and of a sweep's report (test_sweep): one GPU runner's
    resources, a GPU among them."""
    from unmask.cluster.config import FinalEvalConfig
    from unmask.cluster.remote import final_eval_result
    from unmask.envs.config import EnvConfig, TaskConfig
    from unmask.learner.config import PolicyConfig
    from unmask.learner.policy import UnmaskingPolicy, save_policy

    cfg = TrainConfig(model=tiny_model_dir, task=TaskConfig(num_symbols=7), out_dir=str(tmp_path),
                      env=EnvConfig(gen_length=16, block_length=8, emulate_gpu="h200-llada8b", emulate_tokens=1),
                      num_gpus_per_env_runner=1, eval=FinalEvalConfig(num_examples=4))
    policy = save_policy(UnmaskingPolicy(PolicyConfig()), tmp_path / "checkpoints" / "final",
                         {"gen_length": 16, "block_length": 8, "kv_cache": "none"})
    result = final_eval_result(cfg, {"final_eval": {"error": "RayActorError: the runner died"}}, policy)
    assert "the final eval on an env runner failed (RayActorError: the runner died); evaluating in a Ray task" in \
        capsys.readouterr().err
    assert result["num_examples"] == 4 and json.loads((tmp_path / "eval.json").read_text()) == result
    assert result["evaluated_on"]["resources"].get("GPU") == 1.0 and "env_runner" not in result["evaluated_on"]


@pytest.fixture
def flaky(ray_with_gpus):
    sys.modules.pop("flaky_verifier", None)  # its call counter starts again (the driver's one check passes)
    return ray_with_gpus[0]


@pytest.mark.slow
def test_a_runner_error_that_keeps_coming_back_stops_the_run_in_one_line(flaky, tiny_model_dir, capsys):
    ray_seeing = flaky
    out = ray_seeing / "run"
    args = ["train", f"out_dir={out}", f"model={tiny_model_dir}", "task=jsonl",
            f"task.path={ray_seeing / 'data.jsonl'}", "task.verifier=flaky_verifier:verify", "env.gen_length=8",
            "env.block_length=8", "rollout.group_size=2",
            "rollout.prompts_per_sample=2", "groups_per_update=2", "max_iterations=5", "max_runner_restarts=1",
            "eval.num_examples=0"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "env runner 1: ValueError: verifier 'flaky_verifier:verify' raised ValueError on example" in err, err
    assert "verifier exploded (2 times, max_runner_restarts=1; traceback:" in err, err
    kept = sorted((out / "errors").glob("runner_1-*.txt"))
    assert len(kept) == 2 and "Traceback" in kept[-1].read_text() and "verifier exploded" in kept[-1].read_text()
    assert (out / "error.txt").is_file()  # the trial's whole traceback, named in the line above


@pytest.mark.slow
def test_debug_shows_the_whole_traceback(flaky, tiny_model_dir, capsys):
    ray_seeing = flaky
    out = ray_seeing / "debug-run"
    with pytest.raises(RuntimeError, match="verifier exploded"):
        main(["train", f"out_dir={out}", f"model={tiny_model_dir}", "task=jsonl",
              f"task.path={ray_seeing / 'data.jsonl'}", "task.verifier=flaky_verifier:verify", "env.gen_length=8",
              "env.block_length=8", "rollout.group_size=2", "rollout.prompts_per_sample=2", "groups_per_update=2",
              "max_iterations=5", "num_env_runners=0", "eval.num_examples=0", "--debug"])
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    assert "UNMASK_DEBUG" not in os.environ  # set for the command and what it started, then as it was


def test_tracking_needs_its_package_and_a_known_name(tmp_path, capsys):
    assert main(["train", f"out_dir={tmp_path / 'r'}", "tracking=[tensorboardx]"]) == 2
    assert "unknown tracking 'tensorboardx': use wandb or mlflow" in capsys.readouterr().err
