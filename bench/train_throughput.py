"""Benchmark of the RL system: policy vs dLLM forward cost, weight-sync latency, env-runner busy fraction,
trajectories/s with 1 and 2 env runners (measured side by side in one run).

    python bench/train_throughput.py [model=builtin] [iterations=12] [device=cpu] [batch=64]

Absolute times mean something only on the machine that printed them; the ratios are the portable figures.
On a machine with fewer cores than 1 learner + 2 runners, the 2-runner figure measures contention.
"""

from __future__ import annotations

import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from unmask.cluster.config import FinalEvalConfig, TrainConfig
from unmask.cluster.train import train
from unmask.envs.config import EnvConfig
from unmask.envs.dllm import load_dllm
from unmask.envs.mdp import UnmaskingEnv
from unmask.envs.tasks.cycles import CycleTask
from unmask.learner.config import GRPOConfig
from unmask.learner.policy import UnmaskingPolicy
from unmask.rollout.config import RolloutConfig


def forward_costs(model: str, device: str, batch: int, repeats: int = 20) -> tuple[float, float]:
    """Seconds per batched forward of the dLLM and of the policy on the same observations."""
    dllm = load_dllm(model, device=device)
    env = UnmaskingEnv(dllm, EnvConfig().gen_length, EnvConfig().block_length)
    prompts = dllm.encode_prompts([ex.prompt for ex in CycleTask().examples("train", batch)])
    obs = env.reset(prompts)
    policy = UnmaskingPolicy().to(dllm.device).eval()

    def timed(fn) -> float:
        with torch.no_grad():
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        return (time.perf_counter() - start) / repeats

    dllm_s = timed(lambda: dllm.logits(env.ids, env.attn))
    policy_s = timed(lambda: policy(obs.confidence, obs.masked, obs.t))
    return dllm_s, policy_s


def training_figures(model: str, device: str, runners: int, iterations: int, root: Path) -> dict:
    rollout = RolloutConfig(fill_at_budget=False, group_size=8, prompts_per_sample=4)  # the paper's MDP
    cfg = TrainConfig(model=model, env=EnvConfig(device=device), rollout=rollout, grpo=GRPOConfig(alpha=1.0),
                      out_dir=str(root / f"runners_{runners}"),
                      max_iterations=iterations, num_env_runners=runners, groups_per_update=4 * runners,
                      checkpoint_every=0, eval=FinalEvalConfig(num_examples=0), dump_trajectories=True,
                      num_gpus_per_env_runner=1 / runners if device.startswith("cuda") else 0.0)
    train(cfg)
    [progress] = list((root / f"runners_{runners}" / "tune").glob("*/progress.csv"))
    rows = list(csv.DictReader(open(progress)))[2:]  # skip start-up iterations

    def median(key: str) -> float:
        return statistics.median(float(r[f"unmask/{key}"]) for r in rows)

    return {key: median(key) for key in ("trajectories_per_s", "env_runner_busy_fraction", "weight_push_s",
                                         "weight_pull_s", "staleness_mean", "learner_s")}


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    model, device = args.get("model", "builtin"), args.get("device", "cpu")
    iterations, batch = int(args.get("iterations", 12)), int(args.get("batch", 64))
    dllm_s, policy_s = forward_costs(model, device, batch)
    print(f"model={model} device={device} batch={batch}")
    print(f"dLLM forward {dllm_s * 1e3:.2f} ms, policy forward {policy_s * 1e3:.2f} ms, "
          f"policy/dLLM = {policy_s / dllm_s:.3f}")
    import ray

    ray.init(address="local", num_cpus=4, num_gpus=torch.cuda.device_count(), include_dashboard=False,
             log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        figures = {n: training_figures(model, device, n, iterations, Path(tmp)) for n in (1, 2)}
    print(f"{'env runners':<12} {'traj/s':>8} {'busy':>6} {'push ms':>8} {'pull ms':>8} {'lag':>5} {'learn s':>8}")
    for n, f in figures.items():
        print(f"{n:<12} {f['trajectories_per_s']:>8.1f} {f['env_runner_busy_fraction']:>6.2f} "
              f"{f['weight_push_s'] * 1e3:>8.1f} {f['weight_pull_s'] * 1e3:>8.1f} {f['staleness_mean']:>5.2f} "
              f"{f['learner_s']:>8.2f}")
    print(f"  -> 2 runners / 1 runner: {figures[2]['trajectories_per_s'] / figures[1]['trajectories_per_s']:.2f}x "
          "trajectories/s")


if __name__ == "__main__":
    main(sys.argv[1:])
