"""GPU validation of the real-model path in one command: a randomly initialised LLaDA-shaped model (1B+
parameters by default, LLaDA's 126,464-token vocabulary) loaded through `load_dllm` in bf16 on CUDA,
decoded by the env without and with the KV caches, driven by the learned policy (its share of step time),
and trained for a few iterations by `unmask train` with a GPU-resident env-runner actor.

    python bench/gpu_validation.py                      # on a GPU machine: writes docs/results/gpu-validation.md
    python bench/gpu_validation.py device=cpu dtype=float32 layers=2 d_model=128 vocab=4096 \
        gen_length=32 block_length=8 prompt_tokens=16 batch=2 train_iterations=2 out=/tmp/gpu-smoke.md

Keys: layers=16 d_model=2048 vocab=126464 device=cuda dtype=bfloat16 gen_length=256 block_length=32
batch=16 prompt_tokens=160 steps=64 train_iterations=5 out=docs/results/gpu-validation.md. Random weights
cost what real ones cost per forward, so the throughput figures hold for a trained model of this shape.
"""

from __future__ import annotations

import csv
import datetime
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import random_checkpoint, random_prompts, synchronize, timed_decode

DEFAULTS = {"layers": "16", "d_model": "2048", "vocab": "126464", "device": "cuda", "dtype": "bfloat16",
            "gen_length": "256", "block_length": "32", "batch": "16", "prompt_tokens": "160", "steps": "64",
            "train_iterations": "5", "out": "docs/results/gpu-validation.md"}


def decode_figures(dllm, a: dict) -> list[tuple[str, str]]:
    """Env throughput without and with the caches, and the policy's share of a policy-driven step."""
    from unmask.envs.config import SamplerConfig
    from unmask.envs.mdp import UnmaskingEnv
    from unmask.learner.policy import UnmaskingPolicy
    from unmask.learner.sampler import PolicySampler

    L, BL, batch, steps = int(a["gen_length"]), int(a["block_length"]), int(a["batch"]), int(a["steps"])
    prompts = random_prompts(batch, int(a["prompt_tokens"]))
    rows = []
    for cache in ("none", "prefix", "dual"):
        timed_decode(dllm, prompts, L, BL, steps, cache)  # warms up kernels and the allocator
        seconds, env = timed_decode(dllm, prompts, L, BL, steps, cache)
        nfe = int(env.nfe.sum())
        rows.append((f"decode kv_cache={cache}, top_k {L // steps if steps else 1} tokens/step",
                     f"{batch * L / seconds:,.0f} tokens/s, {nfe / seconds:,.1f} NFE/s, "
                     f"{seconds / max(1, int(env.nfe.max())) * 1000:,.1f} ms per env step"))
    policy = UnmaskingPolicy().to(dllm.device).eval()
    sampler = PolicySampler(SamplerConfig(name="policy"), torch.Generator(device=dllm.device).manual_seed(0),
                            policy=policy)
    env = UnmaskingEnv(dllm, L, BL)
    policy_s = step_s = 0.0
    obs = env.reset(prompts)
    while not env.done:
        synchronize(a["device"])
        t0 = time.perf_counter()
        action, _ = sampler.act(obs)
        synchronize(a["device"])
        t1 = time.perf_counter()
        obs = env.step(action)
        synchronize(a["device"])
        policy_s, step_s = policy_s + t1 - t0, step_s + time.perf_counter() - t0
    rows.append(("policy share of a policy-driven step (policy forward + sampling vs dLLM step)",
                 f"{100 * policy_s / step_s:.2f}% ({policy_s * 1000:.1f} of {step_s * 1000:.0f} ms)"))
    return rows


def training_figures(model: str, a: dict, root: Path) -> list[tuple[str, str]]:
    from unmask.cluster.config import FinalEvalConfig, TrainConfig
    from unmask.cluster.train import train
    from unmask.envs.config import EnvConfig, TaskConfig
    from unmask.learner.config import GRPOConfig
    from unmask.rollout.config import RolloutConfig

    env = EnvConfig(gen_length=int(a["gen_length"]), block_length=int(a["block_length"]), dtype=a["dtype"],
                    device=a["device"])
    rollout = RolloutConfig(group_size=8, prompts_per_sample=2, fill_at_budget=False)
    cfg = TrainConfig(model=model, task=TaskConfig(), env=env, rollout=rollout,
                      grpo=GRPOConfig(reward="additive", alpha=1.0),
                      out_dir=str(root / "train"), max_iterations=int(a["train_iterations"]), num_env_runners=1,
                      num_gpus_per_env_runner=1.0 if a["device"].startswith("cuda") else 0.0,
                      groups_per_update=2, checkpoint_every=0, eval=FinalEvalConfig(num_examples=0))
    start = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - start
    [progress] = list((root / "train" / "tune").glob("*/progress.csv"))
    rows = list(csv.DictReader(progress.open()))
    last = rows[-1]
    return [(f"`unmask train`, 1 env-runner actor holding the dLLM on {a['device']}, 2 prompts x 8 per sample",
             f"{len(rows)} iterations in {wall:.0f} s (incl. Ray start and model load); last iteration: "
             f"{float(last['unmask/trajectories_per_s']):.1f} traj/s, "
             f"busy {float(last['unmask/env_runner_busy_fraction']):.2f}, "
             f"mean NFE {float(last['unmask/nfe_mean']):.1f}")]


def main(argv: list[str]) -> None:
    a = DEFAULTS | dict(arg.split("=", 1) for arg in argv)
    from unmask.envs.dllm import load_dllm

    with tempfile.TemporaryDirectory() as tmp:
        d_model = int(a["d_model"])
        model = random_checkpoint(str(Path(tmp) / "llada"), "llada", int(a["layers"]), d_model, int(a["vocab"]),
                                  head_dim=128, mlp_hidden=3 * d_model, dtype=torch.bfloat16)
        dllm = load_dllm(model, device=a["device"], dtype=a["dtype"], chat_template="off")
        params = sum(p.numel() for p in dllm.model.parameters())
        device_name = torch.cuda.get_device_name() if a["device"].startswith("cuda") else "CPU"
        figures = decode_figures(dllm, a)
        del dllm
        if a["device"].startswith("cuda"):
            torch.cuda.empty_cache()
        figures += training_figures(model, a, Path(tmp))
    header = (f"# GPU validation ({datetime.date.today().isoformat()}, {device_name})\n\n"
              f"`python bench/gpu_validation.py {' '.join(argv)}`: random-weight LLaDA-shaped model, "
              f"{params / 1e6:,.0f} M parameters, {a['dtype']}, batch {a['batch']}, prompt {a['prompt_tokens']} "
              f"tokens, L={a['gen_length']}, BL={a['block_length']}.\n\n| measurement | figure |\n|---|---|\n")
    text = header + "".join(f"| {name} | {value} |\n" for name, value in figures)
    out = Path(a["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
