"""Does GRPO get out of the absorbing state, and does the remedy change what the paper's setting learns?

    python bench/collapse.py [minutes=5] [out=runs/collapse] [parallel=2] [init_bias=-8] [lr=2e-4]

Four `unmask train` runs on the built-in task, full diffusion, alpha = 0.3 (the README's recipe), the same wall
budget each, two at a time:
  stuck/abandon   the output bias at `init_bias` (-8: each position unmasked w.p. 3e-4 per step, so nearly every
                  rollout unmasks nothing and every position is abandoned at the block budget: the state the
                  Sudoku run collapsed into), positions left at a block's budget abandoned (the paper's rule,
                  rollout.fill_at_budget=false)
  stuck/fill      the same start, rollout.fill_at_budget=true (the block's last forward writes what is left;
                  the default since this measurement)
  paper/abandon   the paper's initialisation (bias -2), abandoned (the README's alpha = 0.3 run, shorter)
  paper/fill      the same with fill_at_budget
Prints per run: iterations, the share of updates skipped (every advantage 0), the last 25 iterations' training
reward / accuracy / NFE, and the final policy's evaluation on 500 test prompts (accuracy, NFE, fallback share).
The last line is one JSON object with those figures.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RECIPE = ["grpo.alpha=0.3", "env.block_length=24", "max_iterations=100000", "grpo.warmup_steps=20",
          "grpo.total_steps=3000", "checkpoint_every=100", "dump_trajectories=false"]


def run(name: str, keys: list[str], out: Path, minutes: float) -> dict:
    run_dir = out / name.replace("/", "-")
    log = run_dir.with_suffix(".log")
    out.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        subprocess.run([str(Path(sys.executable).with_name("unmask")), "train", f"out_dir={run_dir}",
                        f"max_minutes={minutes}", *RECIPE, *keys], stdout=f, stderr=subprocess.STDOUT, check=False)
    [progress] = list((run_dir / "tune").glob("*/progress.csv"))
    rows = list(csv.DictReader(open(progress)))
    last = rows[-25:]

    def mean(key: str, part: list[dict]) -> float:
        return sum(float(r[f"unmask/{key}"]) for r in part) / len(part)

    evaluation = json.loads((run_dir / "eval.json").read_text()) if (run_dir / "eval.json").is_file() else {}
    return {"run": name, "iterations": len(rows), "skipped": mean("skipped_batch", rows),
            "reward": mean("reward_mean", last), "accuracy": mean("accuracy", last), "nfe": mean("nfe_mean", last),
            "eval_accuracy": evaluation.get("accuracy"), "eval_nfe": evaluation.get("mean_nfe"),
            "fallback_share": evaluation.get("fallback_share")}


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    minutes, out = float(args.get("minutes", 5)), Path(args.get("out", "runs/collapse"))
    bias, lr = args.get("init_bias", "-8"), args.get("lr", "2e-4")
    runs = {"stuck/abandon": [f"policy.init_bias={bias}", "rollout.fill_at_budget=false"],
            "stuck/fill": [f"policy.init_bias={bias}", "rollout.fill_at_budget=true"],
            "paper/abandon": ["rollout.fill_at_budget=false"], "paper/fill": ["rollout.fill_at_budget=true"]}
    with ThreadPoolExecutor(int(args.get("parallel", 2))) as pool:
        results = list(pool.map(lambda item: run(item[0], [f"grpo.lr={lr}", *item[1]], out, minutes), runs.items()))
    print("| run | iterations | skipped | train reward | train acc | train NFE | eval acc | eval NFE | fallback |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        cells = [r["run"], r["iterations"]] + [f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k])
                                                for k in ("skipped", "reward", "accuracy", "nfe", "eval_accuracy",
                                                          "eval_nfe", "fallback_share")]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
