"""Benchmark of the rollout engine: G policy rollouts per prompt, three ways, side by side in one run.

    python bench/rollout_engine.py [policy=bench/assets/policy-builtin] [samples=8] [prompts_per_sample=8]
                                   [group_size=8] [repeats=3] [llada=1]

Every schedule has the same rows in flight (prompts_per_sample x G):
  (a) static     the paper's loop: a sample's batch is forwarded whole every step until its last row is done,
                 nothing shared
  (b) engine     envs.engine through rollout.collect.roll_out, as the env runner runs it: finished rows leave the
                 batch, group members share their first forward, only the policy's feature is computed;
                 (b') engine+cb: every prompt streamed through those rows (continuous batching: a finished row
                 takes the next trajectory), i.e. `env.batch_size` with a large sample
(The env before the engine, measured beside these until 2026-12-03, is in the README's table: the engine was
1.12x it, with continuous batching 1.45x.)

on (i) the built-in model with a trained policy, full diffusion (L = BL = 24), and (ii) a random-weight
LLaDA-shaped model with the prefix cache. Prints rollouts/s, real forwards, rows per forward, the ratios, and the
batch-1 heuristic step over a bare model forward; then the same schedules under a GPU-like cost model (a
forward costs `gpu_forward_ms` up to `gpu_saturation_rows` rows, proportionally more beyond), and a last line
of JSON. Absolute times mean something only on the machine that printed them; the ratios are the figures.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import random_checkpoint, random_prompts

from unmask.envs.config import SamplerConfig
from unmask.envs.dllm import load_dllm
from unmask.envs.engine import ForwardEngine
from unmask.envs.mdp import UnmaskingEnv
from unmask.envs.tasks.cycles import CycleTask
from unmask.learner.policy import UnmaskingPolicy, load_policy
from unmask.learner.sampler import PolicySampler
from unmask.rollout.collect import roll_out
from unmask.rollout.samplers import make_sampler

HERE = Path(__file__).parent
DEFAULTS = {"policy": str(HERE / "assets" / "policy-builtin"), "samples": "8", "prompts_per_sample": "8",
            "group_size": "8", "repeats": "3", "llada": "1", "gpu_forward_ms": "30", "gpu_saturation_rows": "64"}


class StaticEngine(ForwardEngine):
    """The paper's loop: every row goes through every forward until the last row is done, none shared."""

    def logits(self, ids, attn, active, block_index):
        if active.any():
            yield from super().logits(ids, attn, torch.ones_like(active), block_index)

    def _unique(self, ids, attn, rows):
        return rows, None


class StaticLoop(UnmaskingEnv):
    def __init__(self, dllm, **env_kw):
        super().__init__(dllm, **env_kw)
        self.engine = StaticEngine(dllm, self.L, self.BL, env_kw.get("kv_cache", "none"))


class ForwardLog:
    """Counts the dLLM forwards a schedule really runs, and their rows."""

    def __init__(self, dllm):
        self.rows: list[int] = []
        for name in ("logits", "logits_and_cache", "logits_with_cache"):
            original = getattr(dllm, name)

            def counted(ids, *args, _original=original, **kwargs):
                self.rows.append(int(ids.shape[0]))
                return _original(ids, *args, **kwargs)

            setattr(dllm, name, counted)


def schedules(dllm, policy, task_prompts: list[list[int]], a: dict, env_kw: dict) -> dict:
    """The schedules on the same prompts (token ids) and the same policy, each with the same rows in flight
    (prompts_per_sample x G): static and engine roll out one sample at a time, engine+cb streams every
    prompt through that many rows (continuous batching). Seconds are the best of `repeats` interleaved runs."""
    G, per = int(a["group_size"]), int(a["prompts_per_sample"])
    samples = [task_prompts[i : i + per] for i in range(0, len(task_prompts), per)]
    log = ForwardLog(dllm)
    runs = {"static": (StaticLoop, samples, 0), "engine": (UnmaskingEnv, samples, 0),
            "engine+cb": (UnmaskingEnv, [task_prompts], per * G)}
    out = {name: {"seconds": float("inf"), "rollouts": len(task_prompts) * G} for name in runs}
    for _ in range(int(a["repeats"])):
        for name, (env_cls, batches, rows_in_flight) in runs.items():
            sampler = PolicySampler(SamplerConfig(name="policy"), torch.Generator().manual_seed(0), policy=policy)
            env = env_cls(dllm, **env_kw)
            log.rows.clear()
            start = time.perf_counter()
            for prompts in batches:
                roll_out(env, sampler, prompts, G, rows_in_flight)
            seconds = time.perf_counter() - start
            out[name].update(seconds=min(seconds, out[name]["seconds"]), forwards=len(log.rows), rows=sum(log.rows),
                             row_counts=list(log.rows))
    return out


def batch_one_step(dllm, block_length: int, trials: int = 5) -> float:
    """Seconds per env step of a heuristic (top_k, one token per step) on one prompt: best of `trials`."""
    sampler = make_sampler(SamplerConfig(name="top_k"))
    prompt = dllm.encode_prompts([CycleTask().examples("test", 1)[0].prompt])
    env = UnmaskingEnv(dllm, 24, block_length)
    best = float("inf")
    for _ in range(trials):
        steps, start = 0, time.perf_counter()
        for _ in range(10):
            obs = env.reset(prompt, features=sampler.features)
            while not env.done:
                obs = env.step(sampler.select(obs))
                steps += 1
        best = min(best, (time.perf_counter() - start) / (steps + 10))  # a reset is a forward too
    return best


def bare_forward(dllm, trials: int = 5) -> float:
    """Seconds of one bare model forward over the same prompt + canvas: best of `trials`."""
    prompt = dllm.encode_prompts([CycleTask().examples("test", 1)[0].prompt])
    env = UnmaskingEnv(dllm, 24, 8)
    env.reset(prompt)
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(100):
            dllm.logits(env.ids, env.attn, last=24)
        best = min(best, (time.perf_counter() - start) / 100)
    return best


def gpu_cost(row_counts: list[int], forward_ms: float, saturation: int) -> float:
    """Seconds under the cost model: flat up to `saturation` rows per forward, linear beyond."""
    return sum(forward_ms / 1000 * max(1.0, rows / saturation) for rows in row_counts)


def report(title: str, runs: dict, a: dict) -> dict:
    print(f"\n{title}")
    print(f"{'schedule':<11} {'rollouts/s':>10} {'forwards':>9} {'rows/fwd':>9} {'vs static':>10} {'GPU-model s':>12}")
    base = runs["static"]["seconds"]
    for name, r in runs.items():
        r["gpu_s"] = gpu_cost(r["row_counts"], float(a["gpu_forward_ms"]), int(a["gpu_saturation_rows"]))
        print(f"{name:<11} {r['rollouts'] / r['seconds']:>10.1f} {r['forwards']:>9} "
              f"{r['rows'] / max(1, r['forwards']):>9.1f} {base / r['seconds']:>9.2f}x {r['gpu_s']:>12.2f}")
    best = min(("engine", "engine+cb"), key=lambda name: runs[name]["seconds"])
    return {"speedup_vs_static": round(base / runs[best]["seconds"], 3), "fastest": best,
            "engine_vs_static": round(base / runs["engine"]["seconds"], 3),
            "gpu_model_speedup_vs_static": round(runs["static"]["gpu_s"] / runs["engine+cb"]["gpu_s"], 3)}


def main(argv: list[str]) -> None:
    a = DEFAULTS | dict(arg.split("=", 1) for arg in argv)
    torch.manual_seed(0)
    n_prompts = int(a["samples"]) * int(a["prompts_per_sample"])
    figures = {}

    dllm = load_dllm("builtin")
    policy = load_policy(a["policy"]) if Path(a["policy"]).exists() else UnmaskingPolicy().eval()
    prompts = dllm.encode_prompts([ex.prompt for ex in CycleTask().examples("train", n_prompts)])
    runs = schedules(dllm, policy, prompts, a, dict(gen_length=24, block_length=24))
    rows = int(a["prompts_per_sample"]) * int(a["group_size"])
    figures["builtin"] = report(f"(i) built-in dLLM, policy {a['policy']}, L = BL = 24, {n_prompts} prompts x "
                                f"G = {a['group_size']}, {rows} rows in flight", runs, a)
    bare = bare_forward(dllm)
    step = batch_one_step(dllm, 8)
    print(f"batch-1 top_k step, BL=8: {step * 1e3:.2f} ms, bare forward {bare * 1e3:.2f} ms: {step / bare:.2f}x a bare "
          "forward")
    figures["batch1_step_over_forward"] = round(step / bare, 3)

    if a["llada"] != "0":
        with tempfile.TemporaryDirectory() as tmp:
            path = random_checkpoint(str(Path(tmp) / "llada"), "llada", 4, 256, 4096, head_dim=64, mlp_hidden=768)
            llada = load_dllm(path, chat_template="off")
            prompts = random_prompts(8, 32, seed=1)
            small = a | {"prompts_per_sample": "4"}
            runs = schedules(llada, policy, prompts, small, dict(gen_length=64, block_length=16, kv_cache="prefix"))
            figures["llada_prefix"] = report(f"(ii) random-weight LLaDA-shaped (4 layers, d 256), prefix cache, "
                                             f"L = 64, BL = 16, 8 prompts x G = {a['group_size']}", runs, small)
    print(f"\nGPU cost model: gpu_forward_ms={a['gpu_forward_ms']} per forward, flat up to "
          f"gpu_saturation_rows={a['gpu_saturation_rows']} rows, proportional beyond")
    print(json.dumps({"speedup_vs_static": figures["builtin"]["speedup_vs_static"], **figures}))


if __name__ == "__main__":
    main(sys.argv[1:])
