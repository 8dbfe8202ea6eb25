"""Benchmark: Fast-dLLM's prefix and dual KV caches vs full forwards, same model and prompts, side by side.

    python bench/kv_cache.py [arch=llada] [model=<dir>] [layers=8] [d_model=512] [vocab=32768]
        [prompt_tokens=128] [gen_length=256] [block_length=32] [steps=64] [batch=4] [device=cpu] [dtype=float32]

Without `model=` it writes a randomly initialised LLaDA- or Dream-shaped checkpoint of the given size
(weights do not change the cost of a forward) and loads it through `load_dllm`, as `unmask eval` would.
Prints env steps/s (one step = one dLLM forward for the batch), tokens/s and NFE/s per mode and the ratios
to full forwards; the prefix cache's goal is >= 2x at L=256, BL=32. Absolute figures only mean something
on the machine that printed them; on a GPU pass device=cuda dtype=bfloat16.
"""

from __future__ import annotations

import sys
import tempfile

import torch
from common import random_checkpoint, random_prompts, timed_decode

from unmask.envs.dllm import load_dllm


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    arch, device, dtype = args.get("arch", "llada"), args.get("device", "cpu"), args.get("dtype", "float32")
    L, BL, steps = int(args.get("gen_length", 256)), int(args.get("block_length", 32)), int(args.get("steps", 64))
    batch, prompt_tokens = int(args.get("batch", 4)), int(args.get("prompt_tokens", 128))
    with tempfile.TemporaryDirectory() as tmp:
        d_model = int(args.get("d_model", 512))
        mlp_hidden = int(d_model * (8 / 3 if arch == "llada" else 16 / 3))
        path = args.get("model") or random_checkpoint(tmp, arch, int(args.get("layers", 8)), d_model,
                                                      int(args.get("vocab", 32768)), 64, mlp_hidden)
        dllm = load_dllm(path, device=device, dtype=dtype, chat_template="off")
    params = sum(p.numel() for p in dllm.model.parameters())
    prompts = random_prompts(batch, prompt_tokens)
    print(f"{type(dllm.model).__name__} {params / 1e6:.1f}M params, device={device} dtype={dtype} "
          f"threads={torch.get_num_threads()}; batch={batch} prompt={prompt_tokens} L={L} BL={BL} steps={steps}")
    timed_decode(dllm, prompts, L, BL, 2 * (L // BL), "dual")  # warm-up
    results = {}
    for cache in ("none", "prefix", "dual"):
        seconds, env = timed_decode(dllm, prompts, L, BL, steps, cache)
        forwards = int(env.nfe.max())
        results[cache] = forwards / seconds
        print(f"kv_cache={cache:<7} {seconds:8.2f} s  {forwards:4d} env steps  "
              f"{forwards / seconds:7.2f} env steps/s  {batch * L / seconds:9.1f} tokens/s  "
              f"{batch * forwards / seconds:7.2f} NFE/s")
    print(f"-> speed-up over full forwards: prefix {results['prefix'] / results['none']:.2f}x (goal >= 2x), "
          f"dual {results['dual'] / results['none']:.2f}x env steps/s")


if __name__ == "__main__":
    main(sys.argv[1:])
