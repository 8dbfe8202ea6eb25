"""`ray job submit` against a real Ray head started with `ray start --head` on loopback: the job runs
`unmask train`, joins the job's cluster (RAY_ADDRESS) and leaves a complete run directory."""

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """One loopback head for the module's jobs (token auth off for this test head; real clusters keep it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.delenv("RAY_ADDRESS", raising=False)
        env = dict(os.environ)
        gcs, dashboard, agent = free_port(), free_port(), free_port()
        # Beside other Rays on the machine (another test process's): the job agent on a port of its own (every local
        # Ray starts a dashboard agent on Ray's default 52365, and the head that came second would never get a job
        # agent), and a temp folder of its own (a job's driver finds its cluster through <temp>/ray_current_cluster,
        # which the last Ray started on the machine would otherwise have rewritten). Short: socket paths < 108.
        temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
        subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=3",
                        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                        f"--dashboard-agent-listen-port={agent}", f"--temp-dir={temp}", "--disable-usage-stats"],
                       check=True, env=env, timeout=180, capture_output=True)
        try:
            yield f"http://127.0.0.1:{dashboard}", env
        finally:
            stop_head(gcs)
            shutil.rmtree(temp, ignore_errors=True)


def stop_head(gcs: int) -> None:
    """Stop this head alone, as `ray stop --force` does (SIGKILL): its daemons (each names its GCS port) and what they
    started (workers, job drivers). `ray stop` would stop every Ray on the machine, another test process's too."""
    import psutil

    family = {}
    for daemon in psutil.process_iter(["cmdline"]):
        if re.search(rf"[:=]{gcs}\b", " ".join(daemon.info["cmdline"] or [])):
            with contextlib.suppress(psutil.NoSuchProcess):  # one that exits meanwhile takes no children along
                family |= {p.pid: p for p in (daemon, *daemon.children(recursive=True))}
    for p in family.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(list(family.values()), timeout=10)


def wait_for_job(address: str, job_id: str, env: dict, timeout_s: float = 480) -> str:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.time() + timeout_s
    status = client.get_job_status(job_id)
    while time.time() < deadline and status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        time.sleep(0.25)
        status = client.get_job_status(job_id)
    return str(status.value)


def submit(address: str, env: dict, *args: str) -> str:
    # RAY_JOB_STOP_WAIT_TIME_S: `ray job stop` sends SIGTERM, then SIGKILL after this many seconds (Ray's
    # default, 3, can cut the clean stop short)
    runtime_env = json.dumps({"excludes": [".venv", "runs", ".git", "*.egg-info"],
                              "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "60"}})
    # a fresh head's job agent registers a little after `ray start` returns (Ray says to try again): seconds on an
    # idle machine, once more than 90 on this 2-core one under a parallel test's load; the bound is only reached when
    # the agent never comes
    deadline = time.time() + 240
    while True:
        res = subprocess.run([RAY, "job", "submit", "--address", address, "--working-dir", str(REPO), "--no-wait",
                              "--runtime-env-json", runtime_env, "--", sys.executable, "-m", "unmask.cli", *args],
                             env=env, capture_output=True, text=True, timeout=180)
        if res.returncode == 0 or "No available agent" not in res.stderr or time.time() > deadline:
            break
        time.sleep(1)
    assert res.returncode == 0, res.stderr[-2000:]
    [job_id] = set(re.findall(r"raysubmit_\w+", res.stdout + res.stderr))
    return job_id


def test_ray_job_submit_stop_and_resume_on_a_real_head(ray_head, tiny_model_dir, tmp_path):
    """One job is stopped with `ray job stop` mid-run (a clean stop: final policy, no eval.json), a second job
    resumes it and succeeds with a complete run directory; an invalid config inside a job fails with the one-line
    error and leaves no run directory."""
    address, env = ray_head
    run_dir = tmp_path / "stopped"
    job_id = submit(address, env, "train", f"out_dir={run_dir}", f"model={tiny_model_dir}",
                    "rollout.group_size=4", "rollout.prompts_per_sample=2", "rollout.train_pool=64",
                    "env.gen_length=16", "env.block_length=8", "groups_per_update=2", "max_iterations=20",
                    "checkpoint_every=2", "eval.num_examples=5", "num_env_runners=0")
    deadline = time.time() + 300
    while not (run_dir / "trajectories" / "iter_000003").exists() and time.time() < deadline:
        time.sleep(0.2)
    # the client's HTTP call, not the `ray job stop` CLI (a second of start-up: a fast host ran out the run first);
    # 20 iterations (17 after the third) leave it ample time to arrive mid-run
    from ray.job_submission import JobSubmissionClient

    assert JobSubmissionClient(address).stop_job(job_id)
    assert wait_for_job(address, job_id, env) == "STOPPED"
    assert sorted(p.name for p in (run_dir / "trajectories").glob("iter_*"))[-1] < "iter_000020"
    assert (run_dir / "checkpoints" / "final" / "config.json").is_file()  # written on the way out
    assert not (run_dir / "eval.json").exists()
    assert list((run_dir / "tune").glob("*/checkpoint_*"))

    job_id = submit(address, env, "train", f"resume={run_dir}")
    status = wait_for_job(address, job_id, env, timeout_s=600)
    logs = subprocess.run([RAY, "job", "logs", "--address", address, job_id], env=env, capture_output=True,
                          text=True, timeout=60).stdout
    assert status == "SUCCEEDED", logs[-3000:]
    assert "final policy: accuracy" in logs
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "final" / "config.json").is_file()
    assert json.loads((run_dir / "eval.json").read_text())["num_examples"] == 5
    assert sorted(p.name for p in (run_dir / "trajectories").glob("iter_*"))[-1] == "iter_000020"

    bad_dir = tmp_path / "bad-run"
    job_id = submit(address, env, "train", f"out_dir={bad_dir}", "env.gen_length=24",
                    "env.block_length=7")
    assert wait_for_job(address, job_id, env) == "FAILED"
    logs = subprocess.run([RAY, "job", "logs", "--address", address, job_id], env=env, capture_output=True,
                          text=True, timeout=60).stdout
    assert "unmask train: error:" in logs and "block_length" in logs
    assert not bad_dir.exists()
