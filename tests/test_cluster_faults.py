"""Losing a worker node of a multi-node Ray cluster (several raylets on this machine) during training."""

import threading
import time

import pytest
import ray

from tests.test_train import progress, tiny_run
from unmask.cluster.train import train
from unmask.rollout.trajectories import read_trajectories

pytestmark = pytest.mark.slow


def test_losing_a_worker_node_does_not_stop_the_run(tiny_model_dir, tmp_path):
    """Several raylets on this machine: the node hosting the env runner is removed mid-run; training cannot go on
    until Ray has restarted the runner on the spare node, and then it does, to the end, with every trajectory once."""
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the session's local Ray, if a test started one: this test needs a cluster of its own
    quick_detection = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}  # a lost node in ~2 s
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "_system_config": quick_detection})
    nodes = [cluster.add_node(num_cpus=1, resources={"runner_slot": 1}) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    run_dir = tmp_path / "run"
    removed = []

    def remove_a_runner_node():
        deadline = time.time() + 300
        while time.time() < deadline and not (run_dir / "trajectories" / "iter_000002").exists():
            time.sleep(0.2)
        hosts = {a["Address"]["NodeID"] for a in ray._private.state.actors().values()
                 if a["ActorClassName"] == "DLLMEnvRunner" and a["State"] == "ALIVE"}
        victim = next(n for n in nodes if n.node_id in hosts)
        cluster.remove_node(victim, allow_graceful=False)
        removed.append(victim.node_id)

    thread = threading.Thread(target=remove_a_runner_node, daemon=True)
    thread.start()
    config = tiny_run(tiny_model_dir, run_dir, num_env_runners=1, max_iterations=6, eval_examples=0,
                      checkpoint_every=0, custom_resources_per_env_runner={"runner_slot": 1})
    config.env.emulate_gpu = "a100-llada8b"  # 149 ms a forward: the removal lands mid-run, not after it
    try:
        train(config)
    finally:
        thread.join(timeout=1)
        ray.shutdown()
        cluster.shutdown()
    assert removed, "no worker node hosting an env runner was found"
    rows = progress(run_dir)
    assert len(rows) == 6 and int(float(rows[-1]["unmask/env_runner_restarts"])) >= 1
    df = read_trajectories(run_dir / "trajectories").to_pandas()
    assert not df.duplicated(["group_id", "sample_id", "step"]).any()
    assert set(df["env_runner"]) == {1} and sorted(set(df["iteration"])) == list(range(1, 7))
