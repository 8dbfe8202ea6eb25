"""What a policy's inputs beyond the confidence cost per env step, beside a bare dLLM forward, side by side in one run.

    python bench/policy_inputs.py [rows=64] [repeats=5] [llada=1]

For each input set (the paper's confidence alone; + margin and entropy, which the forward's softmax gives; + the
history: stable_steps, confidence_ema, confidence_delta; all six of them; + repeat, read off the canvas; + hidden,
the dLLM's last hidden state from the same forward, at the default view of 32 numbers and at the model's whole width
d) it times a whole policy-driven decode of `rows` built-in prompts (observe + the policy's forward + its decision +
the env's step) and reports the time per env step over a bare forward of the same rows; then the same on a random-weight
LLaDA-shaped model (a 126k-token vocabulary, where a per-position feature over the vocabulary costs most). Ratios
are the figures (best of `repeats`).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from common import random_checkpoint, random_prompts

from unmask.envs.config import SamplerConfig
from unmask.envs.dllm import load_dllm
from unmask.envs.mdp import UnmaskingEnv
from unmask.envs.tasks.cycles import CycleTask
from unmask.learner.config import PolicyConfig
from unmask.learner.policy import UnmaskingPolicy
from unmask.learner.sampler import PolicySampler

INPUT_SETS = {
    "confidence (the paper's)": ["confidence"],
    "+ margin, entropy": ["confidence", "margin", "entropy"],
    "+ history": ["confidence", "stable_steps", "confidence_ema", "confidence_delta"],
    "all six": ["confidence", "margin", "entropy", "stable_steps", "confidence_ema", "confidence_delta"],
    "+ repeat": ["confidence", "repeat"],
    "+ hidden (32 of d)": ["confidence", "hidden"],
    "+ hidden (all d)": ["confidence", "hidden:all"],
}


def per_step(dllm, prompts, inputs: list[str], gen_length: int, repeats: int) -> float:
    """Best seconds per env step of a policy-driven decode (observe + policy + decide + step). `hidden:all`: the hidden
    input at the model's whole width (hidden_dims = d), `hidden`: at the default view (policy.hidden_dims)."""
    dims = dllm.hidden_width if "hidden:all" in inputs else PolicyConfig().hidden_dims
    inputs = [name.split(":")[0] for name in inputs]
    policy = UnmaskingPolicy(PolicyConfig(inputs=inputs, hidden_dims=dims)).eval()
    best = float("inf")
    for _ in range(repeats):
        sampler = PolicySampler(SamplerConfig(name="policy"), torch.Generator().manual_seed(0), policy=policy)
        env = UnmaskingEnv(dllm, gen_length, gen_length // 3)
        start, steps = time.perf_counter(), 0
        obs = env.reset(prompts, features=sampler.features)
        while not env.done:
            obs = env.step(sampler.select(obs))
            steps += 1
        best = min(best, (time.perf_counter() - start) / (steps + 1))
    return best


def bare(dllm, prompts, gen_length: int, repeats: int) -> float:
    env = UnmaskingEnv(dllm, gen_length, gen_length)
    env.reset(prompts, features=())
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(5):
            dllm.logits(env.ids, env.attn, last=gen_length)
        best = min(best, (time.perf_counter() - start) / 5)
    return best


def report(title: str, dllm, prompts, gen_length: int, repeats: int) -> None:
    forward = bare(dllm, prompts, gen_length, repeats)
    print(f"\n{title}: bare forward {forward * 1e3:.1f} ms")
    base = None
    for name, inputs in INPUT_SETS.items():
        step = per_step(dllm, prompts, inputs, gen_length, repeats)
        base = base or step
        print(f"  {name:<26} {step * 1e3:8.1f} ms/step  {step / forward:5.2f}x a bare forward  {step / base:5.2f}x "
              "the paper's inputs")


def main(argv: list[str]) -> None:
    a = {"rows": "64", "repeats": "5", "llada": "1"} | dict(arg.split("=", 1) for arg in argv)
    rows, repeats = int(a["rows"]), int(a["repeats"])
    torch.manual_seed(0)
    dllm = load_dllm("builtin")
    prompts = dllm.encode_prompts([ex.prompt for ex in CycleTask().examples("test", rows)])
    report(f"built-in dLLM, {rows} rows, L = 24", dllm, prompts, 24, repeats)
    if a["llada"] != "0":
        with tempfile.TemporaryDirectory() as tmp:
            path = random_checkpoint(str(Path(tmp) / "llada"), "llada", 2, 256, 126464, head_dim=64, mlp_hidden=768)
            llada = load_dllm(path, chat_template="off")
            prompts = random_prompts(8, 32, seed=1)
            report("random-weight LLaDA-shaped (2 layers, d 256, vocabulary 126,464), 8 rows, L = 48", llada,
                   prompts, 48, repeats)


if __name__ == "__main__":
    main(sys.argv[1:])
