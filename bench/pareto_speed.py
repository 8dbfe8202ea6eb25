"""`unmask pareto`'s two ways of running the heuristic grid and the oracle's line, side by side in one run on the
built-in model: every setting alone (run_episodes, as before; an oracle decodes its reference first) and the settings
that draw no random numbers together in one batched env (run_together: a prompt's first forward once for all settings,
later ones while their decisions agree; the oracles' references together first). Prints the dLLM rows each way
computed, the wall time, the ratios, and whether every setting's episodes are identical.

    python bench/pareto_speed.py [num_examples=100] [block_length=8] [threads=0]
"""

from __future__ import annotations

import sys
import time

import torch

from unmask.envs.config import EnvConfig, TaskConfig
from unmask.envs.dllm import load_dllm
from unmask.envs.engine import ForwardEngine
from unmask.envs.tasks import make_task
from unmask.rollout.evaluate import run_episodes, run_together, together
from unmask.rollout.pareto import default_grid, oracle_line
from unmask.rollout.samplers import make_sampler

DEFAULTS = {"num_examples": "100", "block_length": "8", "threads": "0"}


def counted(work) -> tuple[object, int, float]:
    """work()'s result, the dLLM rows every engine computed meanwhile, and its wall seconds."""
    rows = [0]
    original = ForwardEngine._count

    def count(self, n_rows: int, tokens: int) -> None:
        rows[0] += n_rows
        original(self, n_rows, tokens)

    ForwardEngine._count = count
    try:
        start = time.perf_counter()
        result = work()
        return result, rows[0], time.perf_counter() - start
    finally:
        ForwardEngine._count = original


def main(argv: list[str]) -> None:
    a = DEFAULTS | dict(arg.split("=", 1) for arg in argv)
    if int(a["threads"]):
        torch.set_num_threads(int(a["threads"]))
    dllm, task = load_dllm("builtin"), make_task(TaskConfig())
    examples = task.examples("test", int(a["num_examples"]), seed=0)
    env = EnvConfig(block_length=int(a["block_length"]))
    grid = default_grid(env.gen_length, env.gen_length // env.block_length)
    grid += oracle_line(env.gen_length, env.block_length, env.block_length)  # the main job's limit line
    samplers = [make_sampler(s) for s in grid]
    shared = [s for s in samplers if together([s], env)]
    alone, alone_rows, alone_s = counted(lambda: [run_episodes(dllm, task, examples, s, env) for s in shared])
    joint, joint_rows, joint_s = counted(lambda: run_together(dllm, task, examples, shared, env))
    same = all([(e.generation.tokens, e.generation.nfe) for e in x] == [(e.generation.tokens, e.generation.nfe)
                                                                        for e in y] for x, y in zip(alone, joint))
    print(f"{len(shared)} of the {len(samplers)} settings of the default grid and the oracle line (those that draw no "
          f"random numbers), BL={env.block_length}, {len(examples)} test prompts, torch threads "
          f"{torch.get_num_threads()}")
    print(f"  each alone   {alone_rows:>9,} rows  {alone_s:7.1f} s")
    print(f"  together     {joint_rows:>9,} rows  {joint_s:7.1f} s")
    print(f"  ratio        {alone_rows / joint_rows:9.2f}x rows  {alone_s / joint_s:5.2f}x time; episodes identical: "
          f"{same}")


if __name__ == "__main__":
    main(sys.argv[1:])
