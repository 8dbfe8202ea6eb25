"""Exact resume: SIGTERM to the `unmask train` driver stops the run cleanly (final policy written, no
eval.json, so it does not look complete); `unmask train resume=<dir>` continues it from the last
checkpoint, and in on-policy mode with fixed seeds it ends with the same weights and the same trajectory
dumps as a run that was never interrupted. Along the way: the local Ray of the run listens on loopback only,
and `resume=` refuses a run directory whose pickled state this user's unmask did not write."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from rollout.trajectories import read_trajectories

pytestmark = pytest.mark.slow


LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def listening(pid: int) -> set[tuple[str, int, str]]:
    """(address, port, process) of every listening socket of a process and all its descendants."""
    import psutil

    tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    names = {p.pid: p.name() for p in tree}
    return {(c.laddr.ip, c.laddr.port, names[c.pid]) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in names}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def tiny_train(model_dir, run_dir) -> list[str]:
    return ["train", f"run_dir={run_dir}", f"rollout.model={model_dir}", "rollout.group_size=4",
            "rollout.prompts_per_sample=2", "rollout.batch_rows=3", "rollout.env.gen_length=16",
            "rollout.env.block_length=8",
            "groups_per_update=2", "max_iterations=10", "checkpoint_every=2", "max_policy_lag=0",
            "num_env_runners=1", "eval.num_examples=5", "grpo.reward=additive", "grpo.lr=1e-3", "grpo.warmup_steps=1",
            "grpo.policy.init_bias=0.0"]


def trajectories(run_dir):
    columns = ["iteration", "group_id", "sample_id", "step", "action", "logp", "reward", "policy_version"]
    df = read_trajectories(run_dir / "trajectories").select(columns).to_pandas()
    df["action"] = df["action"].map(tuple)
    return df.sort_values(["iteration", "group_id", "sample_id", "step"]).reset_index(drop=True)


def test_sigterm_then_resume_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    # the uninterrupted run goes on beside the interrupted one (each starts its own local Ray)
    done = subprocess.Popen(cli(*tiny_train(tiny_model_dir, straight)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen(cli(*tiny_train(tiny_model_dir, cut)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while not (cut / "trajectories" / "iter_000005").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    sockets = listening(proc.pid)  # mid-run: the local Ray it started (GCS, raylet, workers, agents, metrics)
    assert len(sockets) >= 4 and {s for s in sockets if s[0] not in LOOPBACK} == set(), sockets
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert f"unmask train resume={cut}" in err
    assert (cut / "checkpoints" / "final" / "model.safetensors").is_file()  # the final policy, written on SIGTERM
    assert not (cut / "eval.json").exists()  # an interrupted run does not look complete
    _, straight_err = done.communicate(timeout=600)
    assert done.returncode == 0, straight_err[-3000:]

    # someone else's run directory (sealed under another key), and a pickled file changed after the seal: refused
    # before anything is unpickled
    other = shutil.copytree(cut, tmp_path / "other")
    someone_else = {**os.environ, "UNMASK_RUN_KEY": str(tmp_path / "someone-else.key")}
    refused = subprocess.run(cli("train", f"resume={other}"), env=someone_else, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "is not the file this user's unmask wrote" in refused.stderr and "resume_unverified=true" in refused.stderr
    tuner = other / "tune" / "tuner.pkl"
    tuner.write_bytes(tuner.read_bytes() + b"\0")
    changed = subprocess.run(cli("train", f"resume={other}"), capture_output=True, text=True, timeout=120)
    assert changed.returncode == 2 and "tune/tuner.pkl is not the file this user's unmask wrote" in changed.stderr

    wrong = subprocess.run(cli("train", f"resume={cut}", "grpo.alpha=2"), capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "a run resumes with its own config" in wrong.stderr
    assert wrong.stderr.count("\n") == 1

    # a truncated checkpoint: the seal sees the changed files before anything is unpickled (one clear line),
    # and the run still does not look complete
    [trial_dir] = [d for d in (cut / "tune").iterdir() if d.is_dir()]
    shutil.copytree(trial_dir, tmp_path / "backup")
    for checkpoint in trial_dir.glob("checkpoint_*"):
        for path in checkpoint.rglob("*"):
            if path.is_file():
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    refused = subprocess.run(cli("train", f"resume={cut}"), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "is not the file this user's unmask wrote" in refused.stderr, refused.stderr
    assert not (cut / "eval.json").exists()
    shutil.rmtree(trial_dir)
    shutil.copytree(tmp_path / "backup", trial_dir)

    resumed = subprocess.run(cli("train", f"resume={cut}"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (cut / "eval.json").exists()

    a = load_file(straight / "checkpoints" / "final" / "model.safetensors")
    b = load_file(cut / "checkpoints" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    first, second = trajectories(straight), trajectories(cut)
    assert sorted(set(first["iteration"])) == list(range(1, 11))
    assert first.equals(second)  # every iteration once, each decision identical
    # the policy really changed along the way: it learned to unmask whole blocks (reward -NFE/L from about
    # -0.55 to the minimum NFE's -2/16), after which batches have all-zero advantages and are skipped
    reward = first.groupby("iteration")["reward"].mean()
    assert first["policy_version"].max() >= 2 and reward[10] > reward[1] + 0.2, reward.to_dict()


@pytest.mark.parametrize("target", ["missing", "no-tune"])
def test_resume_needs_a_run_directory(tmp_path, target):
    run_dir = tmp_path / target
    if target == "no-tune":
        run_dir.mkdir()
        (run_dir / "config.yaml").write_text("max_iterations: 3\n")
    res = subprocess.run(cli("train", f"resume={run_dir}"), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no run to resume there" in res.stderr and res.stderr.count("\n") == 1
