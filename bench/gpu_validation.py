"""The GPU tier in one command, for the first GPU a session is lent: a random-weight LLaDA-shaped model (its real
126,464-token vocabulary) evaluated in bfloat16 at L = 256 by `unmask eval`'s own code, decoded without and with the
KV caches, driven by the learned policy, and trained for 3 iterations by `unmask train` with one GPU env runner and a
GPU learner; each actor's peak GPU memory beside the memory plan's. Writes docs/results/gpu-validation.md.

    python bench/gpu_validation.py                       # on a GPU machine (about 5 minutes on an H100)
    python bench/gpu_validation.py device=cpu layers=1 d_model=64 vocab=512 gen_length=16 block_length=8 \\
        prompt_tokens=8 eval_examples=4 steps=8 out=/tmp/gpu-smoke.md          # a dry run on the CPU

Keys: layers=16 d_model=2048 vocab=126464 device=cuda gen_length=256 block_length=32 prompt_tokens=160 eval_examples=64
steps=64 batch=16 train_iterations=3 out=docs/results/gpu-validation.md. Random weights cost what trained ones cost per
forward, so the speed and memory figures hold for a trained model of this shape (its accuracy means nothing).
"""

from __future__ import annotations

import csv
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import random_checkpoint, random_prompts, synchronize, timed_decode

DEFAULTS = {"layers": "16", "d_model": "2048", "vocab": "126464", "device": "cuda", "gen_length": "256",
            "block_length": "32", "prompt_tokens": "160", "eval_examples": "64", "steps": "64", "batch": "16",
            "train_iterations": "3", "out": "docs/results/gpu-validation.md"}


def prompt_file(root: Path, n: int, chars: int) -> Path:
    """A JSONL task of random printable prompts (the checkpoint's tokenizer is one token per character)."""
    rows = ["".join(chr(32 + (7 * i + 3 * j) % 95) for j in range(chars)) for i in range(n)]
    path = root / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "answer": p[:4]}) + "\n" for p in rows))
    return path


def env_of(a: dict, **more):
    from unmask.envs.config import EnvConfig

    return EnvConfig(gen_length=int(a["gen_length"]), block_length=int(a["block_length"]), **{"device": a["device"],
                                                                                             **more})


def free_gpu(a: dict) -> None:
    """What one part cached on the GPU goes back before the next part measures its own."""
    if a["device"].startswith("cuda"):
        torch.cuda.empty_cache()


def eval_figures(model: str, data: Path, a: dict, root: Path) -> list[tuple[str, str]]:
    """`unmask eval`'s code on the GPU, batches from the memory plan; the peak against the plan."""
    from unmask.envs.config import SamplerConfig, TaskConfig
    from unmask.envs.dllm import load_env_dllm
    from unmask.envs.memory import plan_for
    from unmask.rollout.config import EvalConfig
    from unmask.rollout.evaluate import evaluate

    task = TaskConfig(name="jsonl", path=str(data), test_fraction=1.0)
    cfg = EvalConfig(model=model, task=task, env=env_of(a), sampler=SamplerConfig(name="fast_dllm", threshold=0.9),
                     num_examples=int(a["eval_examples"]), out_dir=str(root / "eval"), progress=False)
    dllm = load_env_dllm(model, cfg.env)
    placement = dllm.placement
    if a["device"].startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = evaluate(cfg, dllm)
    seconds = time.perf_counter() - start
    rows = min(250, int(a["eval_examples"]))
    figures = [("`unmask eval` placement (env.device=cuda, env.dtype=auto)",
                f"{placement['device']}, {placement['dtype']}, weights loaded straight onto the device: "
                f"{placement['loaded_onto_device']}"),
               ("`unmask eval`, fast_dllm 0.9", f"{result['num_examples']} prompts in {seconds:.1f} s, mean NFE "
                f"{result['mean_nfe']:.1f}, {result['num_examples'] * int(a['gen_length']) / seconds:,.0f} tokens/s")]
    if a["device"].startswith("cuda"):
        plan = plan_for(dllm, cfg.env, prompt_length=int(a["prompt_tokens"]))
        measured = torch.cuda.max_memory_allocated()
        figures.append(("eval peak GPU memory vs the memory plan",
                        f"{measured / 2**30:.2f} GiB measured, {plan.peak_bytes(rows) / 2**30:.2f} GiB planned for "
                        f"{rows} rows (ratio {measured / plan.peak_bytes(rows):.2f}); the plan fits "
                        f"{plan.rows_fit} rows in {plan.budget_bytes / 2**30:.0f} GiB"))
    return figures


def decode_figures(model: str, a: dict) -> list[tuple[str, str]]:
    """Env throughput without and with the caches, and the policy's share of a policy-driven step."""
    from unmask.envs.config import SamplerConfig
    from unmask.envs.dllm import load_dllm
    from unmask.envs.mdp import UnmaskingEnv
    from unmask.learner.policy import UnmaskingPolicy
    from unmask.learner.sampler import PolicySampler

    dllm = load_dllm(model, device=a["device"], chat_template="off")
    L, BL, batch, steps = int(a["gen_length"]), int(a["block_length"]), int(a["batch"]), int(a["steps"])
    prompts = random_prompts(batch, int(a["prompt_tokens"]))
    rows = []
    for cache in ("none", "prefix", "dual"):
        timed_decode(dllm, prompts, L, BL, steps, cache)  # warms up kernels and the allocator
        seconds, env = timed_decode(dllm, prompts, L, BL, steps, cache)
        nfe = int(env.nfe.sum())
        rows.append((f"decode kv_cache={cache}, top_k {L // steps if steps else 1} tokens/step, batch {batch}",
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


def training_figures(model: str, data: Path, a: dict, root: Path) -> list[tuple[str, str]]:
    """`unmask train`: one env runner holding the dLLM on half the GPU, the learner on the other half; 3 iterations
    and the final evaluation (on the env runner, with the dLLM it has loaded)."""
    from unmask.cluster.config import FinalEvalConfig, TrainConfig
    from unmask.cluster.train import train
    from unmask.envs.config import TaskConfig
    from unmask.envs.memory import plan_memory, shape_from_path
    from unmask.rollout.config import RolloutConfig

    gpu = a["device"].startswith("cuda")
    task = TaskConfig(name="jsonl", path=str(data), test_fraction=0.25)
    cfg = TrainConfig(model=model, task=task, env=env_of(a, device="auto"),
                      rollout=RolloutConfig(group_size=8, prompts_per_sample=2, fill_at_budget=False),
                      out_dir=str(root / "train"), max_iterations=int(a["train_iterations"]), num_env_runners=1,
                      num_gpus_per_env_runner=0.5 if gpu else 0.0, num_gpus_per_learner=0.5 if gpu else 0.0,
                      groups_per_update=2, checkpoint_every=0, eval=FinalEvalConfig(num_examples=8))
    start = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - start
    [progress] = list((root / "train" / "tune").glob("*/progress.csv"))
    rows = list(csv.DictReader(progress.open()))
    last = rows[-1]
    figures = [(f"`unmask train`: 1 env runner ({cfg.num_gpus_per_env_runner:g} GPU) + learner "
                f"({cfg.num_gpus_per_learner:g} GPU), 2 prompts x 8 per sample",
                f"{len(rows)} iterations in {wall:.0f} s (Ray start and model load included); last iteration "
                f"{float(last['unmask/trajectories_per_s']):.1f} traj/s, mean NFE "
                f"{float(last['unmask/nfe_mean']):.1f}, {int(float(last['unmask/rows_in_flight']))} rows in flight"),
               ("final evaluation, on the env runner's loaded dLLM (else a Ray task with its resources)",
                f"{result['num_examples']} prompts, ran on env runner {result['evaluated_on'].get('env_runner', '-')} "
                f"with {result['evaluated_on']['resources']}")]
    if gpu:
        peak = max(float(r["unmask/runner_peak_memory_gib"]) for r in rows) * 2**30
        plan = plan_memory(shape_from_path(model), dtype="bfloat16", gen_length=int(a["gen_length"]),
                           prompt_length=int(a["prompt_tokens"]), device_bytes=torch.cuda.get_device_properties(0)
                           .total_memory, memory_fraction=0.45, group_size=8)
        planned = plan.peak_bytes(16) - plan.overhead_bytes  # max_memory_allocated holds no CUDA context
        figures.append(("env runner's peak GPU memory vs the memory plan (16 rows in flight)",
                        f"{peak / 2**30:.2f} GiB measured, {planned / 2**30:.2f} GiB planned "
                        f"(ratio {peak / planned:.2f})"))
    return figures


def main(argv: list[str]) -> None:
    a = DEFAULTS | dict(arg.split("=", 1) for arg in argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        d_model = int(a["d_model"])
        model = random_checkpoint(str(root / "llada"), "llada", int(a["layers"]), d_model, int(a["vocab"]),
                                  head_dim=min(128, d_model), mlp_hidden=3 * d_model, dtype=torch.bfloat16)
        data = prompt_file(root, max(64, int(a["eval_examples"])), int(a["prompt_tokens"]))
        from unmask.envs.memory import shape_from_path

        params = shape_from_path(model).params
        device_name = torch.cuda.get_device_name() if a["device"].startswith("cuda") else "CPU"
        figures = eval_figures(model, data, a, root)
        free_gpu(a)
        figures += decode_figures(model, a)
        free_gpu(a)
        figures += training_figures(model, data, a, root)
    header = (f"# GPU validation ({datetime.date.today().isoformat()}, {device_name})\n\n"
              f"`python bench/gpu_validation.py {' '.join(argv)}`: random-weight LLaDA-shaped model, "
              f"{params / 1e6:,.0f} M parameters (vocabulary {int(a['vocab']):,}), bfloat16 on CUDA, prompt "
              f"{a['prompt_tokens']} tokens, L={a['gen_length']}, BL={a['block_length']}.\n\n"
              "| measurement | figure |\n|---|---|\n")
    text = header + "".join(f"| {name} | {value} |\n" for name, value in figures)
    out = Path(a["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
