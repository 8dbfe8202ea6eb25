"""Benchmark: evaluating 500 built-in prompts, batched vs one prompt at a time (measured side by side).

    python bench/eval_speed.py [model=builtin] [num_examples=500] [device=cpu]

Prints wall seconds, prompts/s and dLLM forwards/s per setting, and the batched/unbatched speed ratio.
Absolute times mean something only on the machine that printed them; the ratio is the portable figure.
"""

from __future__ import annotations

import sys
import time

import torch

from unmask.envs.config import EnvConfig, SamplerConfig
from unmask.envs.dllm import load_dllm
from unmask.envs.tasks.cycles import CycleTask
from unmask.rollout.evaluate import run_episodes, summarize
from unmask.rollout.samplers import make_sampler


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    model, n, device = args.get("model", "builtin"), int(args.get("num_examples", 500)), args.get("device", "cpu")
    unbatched_n = int(args.get("unbatched_examples", 50))
    dllm = load_dllm(model, device=device)
    task = CycleTask()
    examples = task.examples("test", n)
    print(f"model={model} device={device} torch_threads={torch.get_num_threads()}")
    print(f"{'setting':<38} {'prompts':>7} {'wall s':>8} {'prompts/s':>10} {'fwd/s':>8} {'acc':>6} {'NFE':>6}")
    rates = {}
    gen_length = int(args.get("gen_length", 24))
    for sampler_cfg, block in ((SamplerConfig(name="top_k"), 8), (SamplerConfig(name="fast_dllm"), 8),
                               (SamplerConfig(name="fast_dllm"), gen_length)):
        for batch_size, count in ((250, n), (1, unbatched_n)):
            env = EnvConfig(gen_length=gen_length, block_length=block, device=device)
            sampler = make_sampler(sampler_cfg)
            start = time.perf_counter()
            episodes = run_episodes(dllm, task, examples[:count], sampler, env, batch_size=batch_size)
            wall = time.perf_counter() - start
            s = summarize(episodes, env.gen_length)
            forwards = s["mean_nfe"] * count / batch_size if batch_size > 1 else s["mean_nfe"] * count
            label = f"{sampler.describe()} BL={block} batch={batch_size}"
            rates[label] = count / wall
            print(f"{label:<38} {count:>7} {wall:>8.2f} {count / wall:>10.1f} {forwards / wall:>8.1f} "
                  f"{s['accuracy']:>6.3f} {s['mean_nfe']:>6.1f}")
        batched, single = list(rates.values())[-2:]
        print(f"  -> batching speed-up: {batched / single:.1f}x prompts/s")


if __name__ == "__main__":
    main(sys.argv[1:])
