"""Toward the limit (issue 37): a policy that reads the dLLM's hidden state, the oracle as a teacher, GRPO from both,
and the teacher chosen from the task (teachers=[auto]), on the built-in `cycles` task and on `commas` (a task of our own
with its own dLLM, made as docs/guides/own-task.md says). Each part is a real command (`unmask ...`) in a subprocess.

    unmask limit task=cycles out_dir=runs/limit [train_seeds=[0,1]] [alphas=[1,3,10]] [iterations=100]
        [routes=[lrh,orh,auto]] [block_lengths=[8,24]] [num_examples=500] [publish=docs/results]
    unmask limit task=commas out_dir=runs/limit-commas [pretrain_minutes=15] ...

(`unmask limit --help` lists every key; `python -m unmask.experiments.limit` takes the same command line.)

Routes, per mode (semi-AR BL = 8; full diffusion BL = L) and training seed:

    lr    the recipe as it is: `unmask imitate` at its defaults (left_run 0.9/0.4, reading confidence and repeat), then
          `unmask train init_from=` at its defaults from a policy, at each alpha
    lrh   the same teacher, the student reading the hidden state too (policy.inputs=[confidence,repeat,hidden])
    orh   the oracle as the teacher (its reference one token per step, in blocks of 8 in full diffusion), the student
          reading every input (confidence, history, repeat, hidden): the oracle's rule labels the teacher's rollouts and
          then, in the DAgger round, the student's own canvases
    auto  `unmask imitate teachers=[auto] auto_alpha=<a>` for each alpha: the heuristic with the best reward at that
          alpha on 200 held-out training prompts teaches; then GRPO at that alpha

GRPO runs a fixed number of updates (`iterations`), not a wall-clock budget: other work on a shared machine then slows a
run down without changing what it trains. Minutes are wall-clock, start-up included (and the clone's, for GRPO).
With task=commas the task's JSONL (`unmask own-tasks family=commas`) and its dLLM (`unmask pretrain`, L = 32, as the
guide says, `pretrain_minutes`) are parts too, and `unmask pareto` gives its heuristics and oracle line. Resumable: the
ledger is out_dir/done. With `publish` (cycles), frontier.{md,json,png} there are published again with these points
(experiments.frontier.republish: every point shipped before re-evaluated on the same prompts).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

from unmask.experiments.config import LimitConfig
from unmask.experiments.frontier import evaluate, write_points
from unmask.experiments.frontier import unmask as unmask_wall
from unmask.experiments.reproduce import Parts

ORACLE_INPUTS = "policy.inputs=[confidence,stable_steps,confidence_ema,confidence_delta,repeat,hidden]"
HIDDEN_INPUTS = "policy.inputs=[confidence,repeat,hidden]"
COMMAS_KEYS = ["task.name=jsonl", "task.verifier=unmask.experiments.own_tasks:free_commas", "env.gen_length=32"]
NAMES = {"lr": "imitation of left_run", "lrh": "imitation of left_run, reading the hidden state",
         "orh": "imitation of the oracle, reading the hidden state and history", "auto": "imitation of teachers=auto"}


CPU = {"minutes": 0.0}  # CPU-minutes of the last command (its reaped descendants', Ray's actors included)


def unmask(*args: str) -> float:
    """One `unmask` command in a subprocess, with OMP_NUM_THREADS=1 (on a shared 2-core machine a second thread per
    process only oversubscribes it); returns wall-clock minutes and leaves its CPU-minutes in CPU."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["RAY_worker_niceness"] = "0"  # Ray's actors otherwise yield every core to the other work of the machine
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = unmask_wall(*args)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU["minutes"] = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / 60
    return wall


def task_keys(a: LimitConfig, out: Path) -> list[str]:
    """The keys every command of this task takes (the model and the JSONL for commas)."""
    if a.task == "cycles":
        return []
    data = out / "data"
    return [f"model={out / 'dllm'}", *COMMAS_KEYS, f"task.path={data / 'commas-train.jsonl'}",
            f"task.test_path={data / 'commas-test.jsonl'}"]


def prepare_commas(parts: Parts, a: LimitConfig, out: Path) -> None:
    """The JSONL and its dLLM, made as docs/guides/own-task.md says (`pretrain_minutes` of pretraining)."""
    data = out / "data"
    parts.run("commas/data", lambda: {"minutes": unmask("own-tasks", "family=commas", f"out_dir={data}")}, {})
    minutes = a.pretrain_minutes

    def pretrain() -> dict:
        shutil.rmtree(out / "dllm", ignore_errors=True)
        took = unmask("pretrain", "task.name=jsonl", f"task.path={data / 'commas-train.jsonl'}",
                      f"task.test_path={data / 'commas-test.jsonl'}", "env.gen_length=32", f"out_dir={out / 'dllm'}",
                      f"max_minutes={minutes}", "progress=false")
        return {"minutes": took}

    parts.run("commas/dllm", pretrain, {"minutes": minutes})


def heuristics(parts: Parts, a: LimitConfig, out: Path, keys: list[str]) -> list[dict]:
    """Every heuristic and the oracle line in both modes on the test prompts (`unmask pareto`)."""
    n, where = a.num_examples, out / "pareto"

    def run() -> list[dict]:
        unmask("pareto", *keys, "block_lengths=[8]", f"num_examples={n}", f"out_dir={where}", "progress=false")
        return json.loads((where / "pareto.json").read_text())["rows"]

    return parts.run("pareto", run, {"n": n, "task": a.task})


def route_parts(parts: Parts, a: LimitConfig, out: Path, keys: list[str], route: str, bl: int, seed: int) -> list[dict]:
    """One route's clone(s) and GRPO runs at one block length and seed, each evaluated: policy rows."""
    n, iterations, L, alphas = a.num_examples, a.iterations, a.gen_length, a.alphas
    root = out / f"bl{bl}" / f"s{seed}"
    full = bl == L
    points = []

    def clone(name: str, extra: list[str]) -> dict:
        def run() -> dict:
            path = root / name
            shutil.rmtree(path, ignore_errors=True)
            minutes = unmask("imitate", *keys, f"out_dir={path}", f"env.block_length={bl}", f"seed={seed}",
                             "eval.num_examples=0", "progress=false", *extra)
            info = json.loads((path / "imitate.json").read_text())
            return {"checkpoint": str(path), "minutes": minutes, "cpu_minutes": CPU["minutes"],
                    "teacher": info["teachers"][0],
                    **({"auto": info["auto"]} if "auto" in info else {})}

        made = parts.run(f"{bl}/s{seed}/{name}", run, {"extra": extra})
        label = NAMES[route] + (f" (alpha={made['auto']['alpha']:g}: {made['teacher']})" if "auto" in made else "")
        points.append({"name": label, "route": route, "alpha": None, **made, **parts.run(
            f"{bl}/s{seed}/{name}/eval", lambda: evaluate(Path(made["checkpoint"]), bl, n, keys=tuple(keys)),
            {"n": n, **made})})
        return made

    def grpo(name: str, start: dict, alpha: float) -> None:
        def run() -> dict:
            path = root / name
            shutil.rmtree(path, ignore_errors=True)
            took = unmask("train", *keys, f"out_dir={path}", f"env.block_length={bl}", f"seed={seed}",
                          f"init_from={start['checkpoint']}", f"grpo.alpha={alpha}", f"max_iterations={iterations}",
                          "eval.num_examples=0", "dump_trajectories=false", "checkpoint_every=50")
            return {"checkpoint": str(path / "checkpoints" / "best"), "minutes": took + start["minutes"],
                    "cpu_minutes": CPU["minutes"] + start["cpu_minutes"]}

        made = parts.run(f"{bl}/s{seed}/{name}", run, {"iterations": iterations, "start": start["checkpoint"]})
        label = NAMES[route] + f" + GRPO alpha={alpha:g}"
        points.append({"name": label, "route": route, "alpha": alpha, "teacher": start["teacher"], **made,
                       **parts.run(f"{bl}/s{seed}/{name}/eval",
                                   lambda: evaluate(Path(made["checkpoint"]), bl, n, keys=tuple(keys)),
                                   {"n": n, **made})})

    if route in ("lr", "lrh"):
        start = clone(f"imitate-{route}", [HIDDEN_INPUTS] if route == "lrh" else [])
        for alpha in alphas:
            grpo(f"grpo-{route}-a{alpha:g}", start, alpha)
    elif route == "orh":
        oracle = "oracle:block_length=8" if full else "oracle"
        start = clone("imitate-orh", [f"teachers=[{oracle}]", ORACLE_INPUTS])
        for alpha in alphas:
            grpo(f"grpo-orh-a{alpha:g}", start, alpha)
    elif route == "auto":
        for alpha in alphas:
            start = clone(f"imitate-auto-a{alpha:g}", ["teachers=[auto]", f"auto_alpha={alpha:g}"])
            grpo(f"grpo-auto-a{alpha:g}", start, alpha)
    mode = "full diffusion" if full else "semi-AR"
    return [{**p, "mode": mode, "block_length": bl, "seed": seed} for p in points]


def limit(a: LimitConfig) -> None:
    """Every route, mode and seed of `a` (parts already in the ledger are read back), then the summary, the heuristics
    and, with `publish`, the frontier pages."""
    out = Path(a.out_dir or f"runs/limit-{a.task}").resolve()
    parts = Parts(out, say_as="limit")
    started = time.perf_counter()
    if a.task == "commas":
        prepare_commas(parts, a, out)
    keys = task_keys(a, out)
    rows = []
    for seed in a.train_seeds:
        for bl in a.block_lengths or [8, a.gen_length]:
            for route in a.routes:
                rows += route_parts(parts, a, out, keys, route, bl, seed)
    write_points(rows, out, "summary.json", width=80)
    rules = heuristics(parts, a, out, keys)
    (out / "heuristics.json").write_text(json.dumps(rules, indent=1) + "\n")
    if a.publish:
        from unmask.experiments.frontier import republish

        print(republish(rows, rules, Path(a.publish), a.num_examples))
    print(f"limit: {(time.perf_counter() - started) / 60:.1f} minutes", file=sys.stderr)


if __name__ == "__main__":  # the same command line as `unmask limit`
    from unmask.cli.main import main

    raise SystemExit(main(["limit", *sys.argv[1:]]))
