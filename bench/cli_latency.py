"""How fast the command line answers `--help` and a bad key, side by side with what importing the heavy
libraries alone costs (every command paid `import ray.rllib` before the configs became import-free).

    python bench/cli_latency.py [--repeats 5]

Each figure is the median wall time of a fresh process (interpreter start included).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "unmask eval --help": ["-m", "unmask.cli", "eval", "--help"],
    "unmask train --help": ["-m", "unmask.cli", "train", "--help"],
    "unmask eval sampler.treshold=0.5 (typo)": ["-m", "unmask.cli", "eval", "sampler.treshold=0.5"],
    "unmask train env.block_length=5": ["-m", "unmask.cli", "train", "env.block_length=5"],
    "unmask pareto heuristic_grid=bogus": ["-m", "unmask.cli", "pareto", "heuristic_grid=bogus"],
    "python -c 'import torch'": ["-c", "import torch"],
    "python -c 'import ray.rllib' (the old floor)": ["-c", "import ray.rllib"],
}


def median_seconds(args: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    figures = {name: median_seconds(args, repeats) for name, args in CASES.items()}
    floor = figures["python -c 'import ray.rllib' (the old floor)"]
    print(f"median of {repeats} fresh processes each")
    for name, seconds in figures.items():
        print(f"  {name:<48} {seconds:6.2f} s   {seconds / floor:5.2f}x of importing ray.rllib")


if __name__ == "__main__":
    main()
