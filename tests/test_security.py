"""What a run exposes and what resuming trusts: the local Ray of `unmask train` listens on loopback alone, and
`resume=` refuses a run directory whose pickled state this user's unmask did not write."""

import os
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.slow

LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def train_args(model_dir, run_dir, iterations: int) -> list[str]:
    return [sys.executable, "-m", "cluster.cli", "train", f"run_dir={run_dir}", f"rollout.model={model_dir}",
            "rollout.group_size=4", "rollout.prompts_per_sample=2", "rollout.env.gen_length=16",
            "rollout.env.block_length=8", "groups_per_update=2", f"max_iterations={iterations}", "checkpoint_every=2",
            "eval.num_examples=0", "num_env_runners=1"]


def listening(pid: int) -> set[tuple[str, int, str]]:
    """(address, port, process) of every listening socket of a process and all its descendants."""
    tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    pids = {p.pid: p.name() for p in tree}
    return {(c.laddr.ip, c.laddr.port, pids[c.pid]) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


def test_local_ray_listens_on_loopback_only_and_resume_checks_the_seal(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(train_args(tiny_model_dir, run_dir, 12), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run_dir / "trajectories" / "iter_000003").exists() and time.time() < deadline:
        time.sleep(0.2)
    sockets = listening(proc.pid)  # mid-run: GCS, raylet, workers, agents, metrics, the driver
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert len(sockets) >= 4, sockets
    assert {s for s in sockets if s[0] not in LOOPBACK} == set()

    # someone else's run directory (sealed under another key): refused before anything is unpickled
    other_key = {**os.environ, "UNMASK_RUN_KEY": str(tmp_path / "someone-else.key")}
    refused = subprocess.run([sys.executable, "-m", "cluster.cli", "train", f"resume={run_dir}"], env=other_key,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "is not the file this user's unmask wrote" in refused.stderr and "resume_unverified=true" in refused.stderr
    # a pickled file changed after the seal: refused too
    tuner = run_dir / "tune" / "tuner.pkl"
    tuner.write_bytes(tuner.read_bytes() + b"\0")
    changed = subprocess.run([sys.executable, "-m", "cluster.cli", "train", f"resume={run_dir}"],
                             capture_output=True, text=True, timeout=120)
    assert changed.returncode == 2 and "tune/tuner.pkl is not the file this user's unmask wrote" in changed.stderr
