"""Scale without GPUs: `unmask train` with 1, 2, 4, 8 and 16 emulated-GPU env runners, the same wall budget each.

    python bench/scale_sim.py [gpu=h200-llada8b] [tokens=456] [runners=1,2,4,8,16] [minutes=3] [cluster=1]
                              [compare=8] [prompts_per_sample=8] [group_size=8] [policy_hidden=32]

Every runner hosts the built-in dLLM whose forwards take, in wall-clock, what the named GPU would take for LLaDA-8B
on that batch (envs.emulation: real logits, sleeping the difference), so K runners on this machine pace like K
GPU runners. Each run: groups_per_update = K x prompts_per_sample (every update takes one sample per runner),
asynchronous runners under admission pacing. `overrun` is the share of forwards whose real compute on this
machine took longer than the emulated GPU would (where it is high, this CPU, not the system, is the limit).
Prints trajectories/s, scaling efficiency (trajectories/s over
K x the 1-runner figure), runner busy fraction, learner time per update, weight push and pull times, the
staleness distribution, dropped groups and the driver's CPU; once more with the runners spread over several
raylets of a `ray.cluster_utils.Cluster`; and pace vs drop at `compare` runners (reward, accuracy after the same
wall time, and the NFE of what was dropped); and the runner count K* at which the driver's loop (learner update
+ report, per trajectory) would saturate, from each measured point. The last line is one JSON object with
`efficiency`, `busy` and `saturation_runners`. About 40 minutes with the defaults.
"""

from __future__ import annotations

import collections
import csv
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from unmask.cluster.config import FinalEvalConfig, TrainConfig
from unmask.cluster.train import train
from unmask.envs.config import EnvConfig
from unmask.learner.config import GRPOConfig, PolicyConfig
from unmask.rollout.config import RolloutConfig
from unmask.rollout.trajectories import read_trajectories

DEFAULTS = {"gpu": "h200-llada8b", "tokens": "456", "runners": "1,2,4,8,16", "minutes": "3", "cluster": "1",
            "compare": "8", "prompts_per_sample": "8", "group_size": "8", "policy_hidden": "32"}


class CpuMeter:
    """The driver process's CPU use (percent of one core) and the machine's (percent of all cores), sampled while a
    run goes on: where the machine is near 100%, the emulation host, not the system under test, is the limit."""

    def __init__(self):
        self.samples: list[float] = []
        self.host: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        me.cpu_percent()
        psutil.cpu_percent()
        while not self._stop.wait(1.0):
            self.samples.append(me.cpu_percent())
            self.host.append(psutil.cpu_percent())  # the whole machine, percent of all its cores

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run(k: int, a: dict, root: Path, staleness: str = "pace", cluster: bool = False, samples_per_update: int = 0
        ) -> dict:
    """One `unmask train` of K runners for the wall budget; its figures from progress.csv and the dumps. By default
    every update takes one sample per runner; `samples_per_update` fewer makes the runners run ahead of the learner
    (the pace-vs-drop comparison: `drop` then drops what is over `max_policy_lag` = 1 update old, `pace` admits up
    to K samples at once, so every runner stays busy, and importance-weights the stale steps)."""
    import ray

    per = int(a["prompts_per_sample"])
    per_update = samples_per_update or k
    pace_ahead = max(0, k // per_update - 1)
    rollout = RolloutConfig(fill_at_budget=False, group_size=int(a["group_size"]), prompts_per_sample=per)
    env = EnvConfig(block_length=24, emulate_gpu=a["gpu"], emulate_tokens=int(a["tokens"]))
    d = int(a["policy_hidden"])  # the learner runs on this CPU: a small policy keeps it from being the only limit
    policy = PolicyConfig(hidden_size=d, num_heads=2, ffn_size=4 * d, time_embed_size=d)
    name = f"k{k}-{staleness}{'-cluster' if cluster else ''}{f'-compare{per_update}' if samples_per_update else ''}"
    cfg = TrainConfig(env=env, rollout=rollout, grpo=GRPOConfig(alpha=0.3, lr=2e-4, warmup_steps=5), policy=policy,
                      out_dir=str(root / name),
                      max_iterations=100_000, max_minutes=float(a["minutes"]), num_env_runners=k,
                      num_cpus_per_env_runner=0.1, groups_per_update=per_update * per, max_policy_lag=1,
                      staleness=staleness, pace_ahead=pace_ahead,
                      checkpoint_every=0, eval=FinalEvalConfig(num_examples=0),
                      custom_resources_per_env_runner={"runner_slot": 1} if cluster else {})
    if cluster:
        from ray.cluster_utils import Cluster

        nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
        for _ in range(4):
            nodes.add_node(num_cpus=2, resources={"runner_slot": (k + 3) // 4})
        ray.init(address=nodes.address, log_to_driver=False)
    with CpuMeter() as cpu:
        start = time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - start
    ray.shutdown()
    if cluster:
        nodes.shutdown()
    [progress] = list((root / name / "tune").glob("*/progress.csv"))
    rows = list(csv.DictReader(progress.open()))[1:]  # after start-up (the first iteration waits for every actor)
    df = read_trajectories(root / name / "trajectories").to_pandas()
    per_traj = df.drop_duplicates(["group_id", "sample_id"])
    span = float(rows[-1]["time_total_s"]) - float(rows[0]["time_total_s"]) if len(rows) > 1 else float("nan")
    done = int(float(rows[-1]["unmask/trajectories_total"])) - int(float(rows[0]["unmask/trajectories_total"]))

    def median(key: str, group: str = "unmask") -> float:
        return statistics.median(float(r[f"{group}/{key}"]) for r in rows)

    dropped = per_traj[~per_traj["used"]]
    return {"runners": k, "mode": staleness, "cluster": cluster, "samples_per_update": per_update,
            "compare": bool(samples_per_update),
            "iterations": len(rows) + 1, "wall_s": wall,
            "trajectories_per_s": done / span if span > 0 else float("nan"),
            "busy": median("env_runner_busy_fraction"), "learner_s": median("learner_s"),
            "update_s": median("update_s", "timers"), "report_s": median("report_s", "timers"),
            "trajectories_per_update": per_update * per * int(a["group_size"]),
            "weight_push_s": median("weight_push_s"), "weight_pull_s": median("weight_pull_s"),
            "emulation_overrun": median("emulation_overrun"),
            "staleness": dict(collections.Counter(int(float(r["unmask/staleness_max"])) for r in rows)),
            "dropped_groups": int(dropped["group_id"].nunique()), "groups": int(per_traj["group_id"].nunique()),
            "driver_cpu_percent": statistics.mean(cpu.samples) if cpu.samples else 0.0,
            "host_cpu_percent": statistics.mean(cpu.host) if cpu.host else 0.0,
            "reward_last": statistics.mean(float(r["unmask/reward_mean"]) for r in rows[-5:]),
            "accuracy_last": statistics.mean(float(r["unmask/accuracy"]) for r in rows[-5:]),
            "nfe_used": float(per_traj[per_traj["used"]]["nfe"].mean()),
            "nfe_dropped": float(dropped["nfe"].mean()) if len(dropped) else None}


def main(argv: list[str]) -> None:
    a = DEFAULTS | dict(arg.split("=", 1) for arg in argv)
    counts = [int(k) for k in a["runners"].split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in counts:
            results.append(run(k, a, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
        if a["cluster"] != "0":
            results.append(run(counts[-1], a, Path(tmp), cluster=True))
            print(json.dumps(results[-1]), flush=True)
        compare = int(a["compare"])
        if compare:
            for staleness in ("pace", "drop"):
                results.append(run(compare, a, Path(tmp), staleness=staleness, samples_per_update=2))
                print(json.dumps(results[-1]), flush=True)
    scaling = [r for r in results if not r["compare"]]  # one sample per runner per update
    base = next(r for r in scaling if r["runners"] == counts[0] and r["mode"] == "pace")["trajectories_per_s"]
    print(f"\nemulated GPU {a['gpu']}: {', '.join(f'{k}={v}' for k, v in a.items() if k != 'gpu')}")
    print(f"{'runners':>7} {'mode':<13} {'traj/s':>8} {'efficiency':>10} {'busy':>5} {'learn s':>8} {'push ms':>8} "
          f"{'pull ms':>8} {'driver CPU':>10} {'host CPU':>8} {'overrun':>7} {'dropped':>7} "
          "staleness (iterations by max lag)")
    efficiency, busy = {}, {}
    for r in results:
        eff = r["trajectories_per_s"] / (r["runners"] * base)
        mode = r["mode"] + (" cluster" if r["cluster"] else "") + (f" {r['samples_per_update']}/upd"
                                                                  if r not in scaling else "")
        if r in scaling and r["mode"] == "pace" and not r["cluster"]:
            efficiency[r["runners"]], busy[r["runners"]] = round(eff, 3), round(r["busy"], 3)
        print(f"{r['runners']:>7} {mode:<13} {r['trajectories_per_s']:>8.1f} {eff:>10.2f} {r['busy']:>5.2f} "
              f"{r['learner_s']:>8.3f} {r['weight_push_s'] * 1e3:>8.1f} {r['weight_pull_s'] * 1e3:>8.1f} "
              f"{r['driver_cpu_percent']:>9.0f}% {r['host_cpu_percent']:>7.0f}% {r['emulation_overrun']:>7.2f} "
              f"{r['dropped_groups']:>7} "
              f"{r['staleness']}")
    print("\nsaturation (the driver's loop: update + report must fit in one sample's time, K* = 1 / (r x c), "
          "r = one runner's trajectories/s, c = driver seconds per trajectory):")
    saturation = {}
    for r in scaling:
        if r["mode"] == "pace" and not r["cluster"]:
            c = (r["update_s"] + r["report_s"]) / r["trajectories_per_update"]
            saturation[r["runners"]] = round(1 / (base * c), 1)
            learner_ms = r["learner_s"] / r["trajectories_per_update"] * 1e3
            print(f"  measured at K={r['runners']:>2}: learner {learner_ms:.1f} ms/trajectory, update + report "
                  f"{c * 1e3:.1f} ms/trajectory -> K* = {saturation[r['runners']]}")
    pace = next((r for r in results if r not in scaling and r["mode"] == "pace"), None)
    drop = next((r for r in results if r not in scaling and r["mode"] == "drop"), None)
    if pace and drop:
        print(f"\npace vs drop at {drop['runners']} runners, 2 samples per update, same wall time: trajectories/s "
              f"{pace['trajectories_per_s']:.1f} vs {drop['trajectories_per_s']:.1f}, reward {pace['reward_last']:.3f} "
              f"vs {drop['reward_last']:.3f}, accuracy {pace['accuracy_last']:.3f} vs {drop['accuracy_last']:.3f}; "
              f"drop dropped {drop['dropped_groups']} of {drop['groups']} groups (mean NFE "
              f"{drop['nfe_dropped'] or float('nan'):.2f} dropped vs {drop['nfe_used']:.2f} kept), pace trained on "
              f"all {pace['groups']}")
    print(json.dumps({"efficiency": efficiency, "busy": busy, "saturation_runners": saturation, "results": results}))


if __name__ == "__main__":
    main(sys.argv[1:])
