"""Exact resume: SIGTERM to the `unmask train` driver stops the run cleanly (final policy written, no
eval.json, so it does not look complete); `unmask train resume=<dir>` continues it from the last
checkpoint, and in on-policy mode with fixed seeds it ends with the same weights and the same trajectory
dumps as a run that was never interrupted. Along the way: the local Ray of the run listens on loopback only, its
authentication token is readable by this user alone, and `resume=` refuses a run directory whose pickled state
this user's unmask did not write."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unmask.cli.main import main
from unmask.rollout.trajectories import read_trajectories

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
    return [sys.executable, "-m", "unmask.cli", *args]


def tiny_train(model_dir, run_dir) -> list[str]:
    return ["train", f"out_dir={run_dir}", f"model={model_dir}", "rollout.group_size=4",
            "rollout.prompts_per_sample=2", "rollout.train_pool=64", "env.batch_size=3", "env.gen_length=16",
            "env.block_length=8",
            "groups_per_update=2", "max_iterations=6", "checkpoint_every=2", "max_policy_lag=0",
            "num_env_runners=2", "eval.num_examples=5", "grpo.reward=additive", "grpo.lr=1e-3", "grpo.warmup_steps=1",
            "policy.init_bias=0.0"]


def trajectories(run_dir):
    columns = ["iteration", "group_id", "sample_id", "step", "action", "logp", "reward", "policy_version"]
    df = read_trajectories(run_dir / "trajectories").select(columns).to_pandas()
    df["action"] = df["action"].map(tuple)
    return df.sort_values(["iteration", "group_id", "sample_id", "step"]).reset_index(drop=True)


def test_sigterm_then_resume_matches_an_uninterrupted_run(local_ray, tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Two on-policy env runners. The interrupted run is a real `unmask train` process (its own local Ray, on
    loopback only), stopped by SIGTERM mid-run; the uninterrupted one and the resume run in this process."""
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    # the interrupted run has a HOME of its own, to see the authentication token its local Ray writes there; the
    # run key that seals its directory is this user's, as in the rest of the test
    home, key = tmp_path / "home", Path.home() / ".config" / "unmask" / "run-key"
    monkeypatch.setenv("UNMASK_RUN_KEY", str(os.environ.get("UNMASK_RUN_KEY", key)))
    env = {**os.environ, "HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(cli(*tiny_train(tiny_model_dir, cut)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    seen: dict = {}

    def interrupt_mid_run() -> None:
        deadline = time.time() + 300

        def wait_for(iteration: str) -> None:
            while not (cut / "trajectories" / iteration).exists() and time.time() < deadline and proc.poll() is None:
                time.sleep(0.05)

        wait_for("iter_000001")
        seen["sockets"] = listening(proc.pid)  # mid-run: the local Ray it started (GCS, raylet, workers, agents)
        wait_for("iter_000003")  # (listing the sockets can take seconds on a loaded machine: done before, not here)
        proc.send_signal(signal.SIGTERM)

    watcher = threading.Thread(target=interrupt_mid_run, daemon=True)
    watcher.start()
    uninterrupted = [a if not a.startswith("eval.") else "eval.num_examples=0" for a in tiny_train(tiny_model_dir,
                                                                                                  straight)]
    assert main(uninterrupted) == 0  # the uninterrupted run, meanwhile (its final eval is not compared: none)
    watcher.join(timeout=300)
    _, err = proc.communicate(timeout=300)
    sockets = seen["sockets"]
    assert len(sockets) >= 4 and {s for s in sockets if s[0] not in LOOPBACK} == set(), sockets
    assert proc.returncode == 130, err[-3000:]
    assert f"unmask train resume={cut}" in err
    assert "unmask: starting Ray ..." in err and "unmask: starting the run" in err  # start-up, said as it goes
    token = home / ".ray" / "auth_token"  # what its local Ray wrote for authentication: this user's alone
    assert token.is_file() and token.stat().st_mode & 0o777 == 0o600
    assert (cut / "checkpoints" / "final" / "model.safetensors").is_file()  # the final policy, written on SIGTERM
    assert not (cut / "eval.json").exists()  # an interrupted run does not look complete
    capsys.readouterr()

    def refused(*args: str) -> str:
        assert main(["train", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err

    # someone else's run directory (sealed under another key), and a pickled file changed after the seal: refused
    # before anything is unpickled
    other = shutil.copytree(cut, tmp_path / "other")
    with monkeypatch.context() as someone_else:
        someone_else.setenv("UNMASK_RUN_KEY", str(tmp_path / "someone-else.key"))
        err = refused(f"resume={other}")
    assert "is not the file this user's unmask wrote" in err and "resume_unverified=true" in err
    config = other / "config.yaml"  # asking for a model's own code is as good as a pickle: sealed too
    original = config.read_text()
    config.write_text(original.replace("trust_remote_code: false", "trust_remote_code: true"))
    assert "config.yaml is not the file this user's unmask wrote" in refused(f"resume={other}")
    config.write_text(original)
    tuner = other / "tune" / "tuner.pkl"
    tuner.write_bytes(tuner.read_bytes() + b"\0")
    assert "tune/tuner.pkl is not the file this user's unmask wrote" in refused(f"resume={other}")
    assert "a run resumes with its own config" in refused(f"resume={cut}", "grpo.alpha=2")

    # a truncated checkpoint: the seal sees the changed files before anything is unpickled (one clear line),
    # and the run still does not look complete
    [trial_dir] = [d for d in (cut / "tune").iterdir() if d.is_dir()]
    shutil.copytree(trial_dir, tmp_path / "backup")
    for checkpoint in trial_dir.glob("checkpoint_*"):
        for path in checkpoint.rglob("*"):
            if path.is_file():
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "is not the file this user's unmask wrote" in refused(f"resume={cut}")
    assert not (cut / "eval.json").exists()
    shutil.rmtree(trial_dir)
    shutil.copytree(tmp_path / "backup", trial_dir)

    assert main(["train", f"resume={cut}"]) == 0, capsys.readouterr().err[-3000:]
    # the resumed run's final eval ran on one of its runners: Tune restored the callback that asks for it
    assert json.loads((cut / "eval.json").read_text())["evaluated_on"]["env_runner"] in (1, 2)

    a = load_file(straight / "checkpoints" / "final" / "model.safetensors")
    b = load_file(cut / "checkpoints" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    first, second = trajectories(straight), trajectories(cut)
    assert sorted(set(first["iteration"])) == list(range(1, 7))
    assert first.equals(second)  # every iteration once, each decision identical
    # on-policy: both runners sample after each update, with its weights; nothing is stale, nothing dropped
    dumps = read_trajectories(straight / "trajectories").to_pandas()
    assert set(dumps["env_runner"]) == {1, 2} and dumps["used"].all()
    assert (dumps["policy_version"] == dumps["iteration"].map(
        dumps.groupby("iteration")["policy_version"].max())).all()
    # the policy really changed along the way: it learned to unmask whole blocks (reward -NFE/L from about
    # -0.55 to the minimum NFE's -2/16), after which batches have all-zero advantages and are skipped
    reward = first.groupby("iteration")["reward"].mean()
    assert first["policy_version"].max() >= 2 and reward[6] > reward[1] + 0.2, reward.to_dict()


@pytest.mark.parametrize("target", ["missing", "no-tune"])
def test_resume_needs_a_run_directory(tmp_path, target):
    run_dir = tmp_path / target
    if target == "no-tune":
        run_dir.mkdir()
        (run_dir / "config.yaml").write_text("max_iterations: 3\n")
    res = subprocess.run(cli("train", f"resume={run_dir}"), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no run to resume there" in res.stderr and res.stderr.count("\n") == 1
