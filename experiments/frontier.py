"""The learned policies' accuracy-vs-NFE frontier on the built-in model, per mode, beside the heuristics and the oracle
limit: what `docs/results/frontier.{md,json,png}` and the shipped policies in `docs/results/policies/` come from.

    unmask frontier [out_dir=runs/frontier] [train_seeds=[0,1]] [grpo_minutes=4] [paper_minutes=4] [past_minutes=7]
                    [num_examples=500] [publish=docs/results]        (or: python -m unmask.experiments.frontier ...)

Per mode (semi-AR BL = 8, full diffusion BL = L = 24), per training seed, each a real command run in a subprocess:

    imitate    `unmask imitate` of Fast-dLLM lambda = 0.9 (full diffusion: in blocks of 8 inside the canvas)
    imitate-eb `unmask imitate` of EB gamma = 0.05, a faster teacher (0.974 @ 9.8 at BL = 8), the same way
    imitate-lt `unmask imitate` of left_threshold lambda = 0.9 (the leftmost masked position always, the others at
               >= lambda), in full diffusion over the whole canvas
    imitate-lr `unmask imitate` of left_run lambda = 0.9, mu = 0.4 (left_threshold, and the run right of the leftmost
               at >= mu with no token repeating a neighbour's), the policy reading the `repeat` input beside the
               confidence, in full diffusion over the whole canvas: the heuristic that makes both modes' frontier
    grpo-a<a>  `unmask train` from that clone (init_from) at alpha in {0.3, 1, 3}, lr 3e-5 and no bound on the
               training draws (CLONE_GRPO); its checkpoints/best, chosen by held-out validation (so never worse than
               the clone on validation)
    grpo-lr-a<a> `unmask train` from the imitate-lr clone at alpha in {3, 10} and its defaults from a policy (lr
               1e-4, grpo.logit_bound = 3, 16 groups per update, validation every 10), `past_minutes`: GRPO moving a
               policy past the heuristics, to fewer forwards than any of them reaches at its accuracy (alpha = 10
               further down the NFE axis than 3)
    paper      `unmask train` from the paper's initialisation at alpha = 0.3 (no fallback in training draws, as the
               paper trains); its checkpoints/best (the paper's checkpoint-best)
    family     `unmask imitate` of Fast-dLLM lambda = 0.9 / 0.8 / 0.7 standing for alpha = 0.3 / 1 / 3: one
               alpha-conditioned policy, evaluated at each

Every policy is evaluated on `num_examples` test prompts (`unmask eval`); a point is the mean over seeds. Resumable:
a finished part is kept in out_dir/done (the same ledger as `unmask reproduce`). Minutes are wall-clock on the machine
that ran it (2 cores here), start-up included.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from unmask.cluster.config import FROM_POLICY
from unmask.experiments.config import FrontierConfig
from unmask.experiments.reproduce import Parts
from unmask.rollout.pareto import default_grid
from unmask.rollout.report import pareto_front, write_pareto

MODES = {"semi-AR": 8, "full diffusion": 24}
ALPHAS = (0.3, 1.0, 3.0)
CLONE_TEACHER = "fast_dllm:threshold=0.9"  # the first recipe's teacher (in full diffusion, in blocks of 8)
# GRPO from that clone, as it was run: the paper's lr with a short warm-up, and no bound on the training draws
CLONE_GRPO = {"lr": 3e-5, "warmup_steps": 10, "logit_bound": 0.0}
FAST_TEACHER = "eb:gamma=0.05"  # the faster clone's teacher: in full diffusion, in blocks of 8, under 10 NFE
LEFT_TEACHER = "left_threshold:threshold=0.9"  # left-to-right with a threshold, itself in full diffusion
RUN_TEACHER = "left_run:threshold=0.9;run_threshold=0.4"  # the frontier's heuristic in both modes
RUN_INPUTS = "policy.inputs=[confidence,repeat]"  # what its student must see: the rule reads `repeat`
FAMILY = (("fast_dllm:threshold=0.9", 0.3), ("fast_dllm:threshold=0.8", 1.0), ("fast_dllm:threshold=0.7", 3.0))
# GRPO past the heuristics: from the left_run clone at `unmask train`'s defaults from a policy (FROM_POLICY: lr 1e-4,
# training draws bounded, as a clone is deterministic and every group would decode identically without it; 16 groups;
# validation), at the fast end of the trade-off
PAST_GRPO = {k.split(".", 1)[1]: v for k, v in FROM_POLICY.items() if k.startswith("grpo.")}
PAST_ALPHAS = (3.0, 10.0)


def unmask(*args: str) -> float:
    """Run one `unmask` command; returns its wall-clock minutes."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "unmask.cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"unmask {' '.join(args[:2])} failed: {done.stderr.strip().splitlines()[-1:]}")
    return (time.perf_counter() - start) / 60


def evaluate(checkpoint: Path, block_length: int, n: int, alpha: float | None = None, out: Path | None = None,
             keys: tuple[str, ...] = ()) -> dict:
    """`unmask eval` of a saved policy on `n` test prompts (`keys`: the task's and model's, for another task); its
    eval.json goes beside the checkpoint, or to `out`."""
    out = out or checkpoint.parent / f"eval-{checkpoint.name}{'' if alpha is None else f'-a{alpha:g}'}"
    args = ["eval", *keys, "sampler=policy", f"sampler.checkpoint={checkpoint}", f"env.block_length={block_length}",
            f"num_examples={n}", f"out_dir={out}", "progress=false"]
    unmask(*args, *([f"sampler.alpha={alpha}"] if alpha is not None else []))
    result = json.loads((out / "eval.json").read_text())
    return {"accuracy": result["accuracy"], "mean_nfe": result["mean_nfe"],
            "fallback_share": result.get("fallback_share", 0.0)}


def parts_of_mode(parts: Parts, out: Path, mode: str, bl: int, seed: int, a: FrontierConfig) -> list[dict]:
    """Every policy point of one mode and training seed: [{name, alpha, checkpoint, minutes, accuracy, mean_nfe}]."""
    n, root = a.num_examples, out / f"bl{bl}" / f"s{seed}"
    blocks = ["teacher_block_length=8"] if bl == 24 else []
    points = []

    def imitate(name: str, extra: list[str], in_blocks: bool = True) -> dict:
        path = root / name
        shutil.rmtree(path, ignore_errors=True)
        minutes = unmask("imitate", f"out_dir={path}", f"env.block_length={bl}", f"seed={seed}", "eval.num_examples=0",
                         "progress=false", *(blocks if in_blocks else []), *extra)
        return {"checkpoint": str(path), "minutes": minutes}

    def cloned(name: str, label: str, teacher: str, depends: dict, in_blocks: bool = True, extra: tuple = ()) -> dict:
        """One clone (a part) and its evaluation (a point); returns the clone's checkpoint and minutes."""
        clone = parts.run(f"{bl}/s{seed}/{name}",
                          lambda: imitate(name, [f'teachers=["{teacher}"]', *extra], in_blocks),
                          {"bl": bl, "seed": seed, **depends})
        points.append({"name": label, **clone, **parts.run(
            f"{bl}/s{seed}/{name}/eval", lambda: evaluate(Path(clone["checkpoint"]), bl, n), {"n": n, **clone})})
        return clone

    clone = cloned("imitate", "imitation", CLONE_TEACHER, {})
    cloned("imitate-eb", "imitation of EB gamma=0.05", FAST_TEACHER, {"teacher": FAST_TEACHER})
    cloned("imitate-lt", "imitation of left_threshold 0.9", LEFT_TEACHER, {"teacher": LEFT_TEACHER}, in_blocks=False)
    run_clone = cloned("imitate-lr", "imitation of left_run 0.9/0.4", RUN_TEACHER,
                       {"teacher": RUN_TEACHER, "inputs": RUN_INPUTS}, in_blocks=False, extra=(RUN_INPUTS,))

    def train(name: str, extra: list[str], minutes: float, before: float = 0.0) -> dict:
        """One training run; its minutes, with `before` (its starting policy's) added."""
        run = root / name
        shutil.rmtree(run, ignore_errors=True)
        took = unmask("train", f"out_dir={run}", f"env.block_length={bl}", f"seed={seed}",
                      f"max_minutes={minutes}", "max_iterations=100000", "eval.num_examples=0",
                      "dump_trajectories=false", "checkpoint_every=50", *extra)
        return {"checkpoint": str(run / "checkpoints" / "best"), "minutes": took + before}

    def trained(name: str, label: str, alpha: float, keys: list[str], minutes: float, depends: dict,
                start: dict | None = None) -> None:
        """One `unmask train` run (from `start`, a clone, when given: its checkpoint and minutes) and its evaluation:
        a policy point. The ledger records `depends` (with the start's) beside each."""
        if start:  # the rest of the keys: `unmask train`'s defaults from a policy (groups_per_update, validate_every)
            keys = ["init_from=" + start["checkpoint"], *keys]
        run = parts.run(f"{bl}/s{seed}/{name}", lambda: train(name, keys, minutes, start["minutes"] if start else 0.0),
                        {"bl": bl, "seed": seed, "minutes": minutes, **depends, **(start or {})})
        points.append({"name": label, "alpha": alpha, **run, **parts.run(
            f"{bl}/s{seed}/{name}/eval", lambda: evaluate(Path(run["checkpoint"]), bl, n), {"n": n, **run})})

    for alpha in ALPHAS:
        trained(f"grpo-a{alpha:g}", f"imitation + GRPO alpha={alpha:g}", alpha,
                [f"grpo.alpha={alpha}", *(f"grpo.{k}={v}" for k, v in CLONE_GRPO.items())], a.grpo_minutes, {},
                start=clone)
    for alpha in PAST_ALPHAS:
        grpo = {"alpha": alpha, **PAST_GRPO}
        trained(f"grpo-lr-a{alpha:g}", f"imitation of left_run + GRPO alpha={alpha:g}", alpha,
                [f"grpo.alpha={alpha}"], a.past_minutes, {"grpo": grpo}, start=run_clone)
    trained("paper", "the paper's GRPO alpha=0.3", 0.3, ["grpo.alpha=0.3", "grpo.fallback=false"],
            a.paper_minutes, {})
    family_keys = ["teachers=[" + ",".join(t for t, _ in FAMILY) + "]",
                   "teacher_alphas=[" + ",".join(f"{x:g}" for _, x in FAMILY) + "]"]
    family = parts.run(f"{bl}/s{seed}/family", lambda: imitate("family", family_keys), {"bl": bl, "seed": seed})
    for _, alpha in FAMILY:
        points.append({"name": f"alpha-conditioned imitation, alpha={alpha:g}", "alpha": alpha, **family,
                       **parts.run(f"{bl}/s{seed}/family/eval-a{alpha:g}", lambda x=alpha: evaluate(
                           Path(family["checkpoint"]), bl, n, x), {"n": n, **family})})
    return [{**p, "mode": mode, "block_length": bl, "seed": seed} for p in points]


def write_points(rows: list[dict], out: Path, summary_name: str, width: int) -> list[dict]:
    """Every run's point (out/points.json) and their mean over seeds (out/<summary_name>), printed a line each."""
    (out / "points.json").write_text(json.dumps(rows, indent=1) + "\n")
    summary = summarize(rows)
    (out / summary_name).write_text(json.dumps(summary, indent=1) + "\n")
    for line in summary:
        print(f"{line['block_length']:>3} {line['name']:<{width}} {line['accuracy']:.3f} "
              f"[{line['accuracy_min']:.3f}-{line['accuracy_max']:.3f}] @ {line['mean_nfe']:.2f}  "
              f"{line['minutes']:.1f} min")
    return summary


def frontier(a: FrontierConfig) -> None:
    """Every part (resumably), the summary; with `publish`, the published frontier."""
    out = Path(a.out_dir).resolve()
    parts = Parts(out, say_as="unmask frontier")
    rows = [row for seed in a.train_seeds for mode, bl in MODES.items()
            for row in parts_of_mode(parts, out, mode, bl, seed, a)]
    write_points(rows, out, "frontier-summary.json", width=45)
    if a.publish:
        n = a.num_examples
        grid = [str(c) for c in default_grid(24, 1)]  # a grid that gained a sampler is run again
        heuristics = parts.run("pareto", lambda: heuristic_rows(out / "pareto", n), {"n": n, "grid": grid})
        print(publish(rows, heuristics, Path(a.publish)))


def heuristic_rows(out_dir: Path, n: int) -> list[dict]:
    """Every heuristic and the oracle line at BL = 8 and 24 on the same test prompts (`unmask pareto`)."""
    unmask("pareto", "block_lengths=[8]", f"num_examples={n}", f"out_dir={out_dir}", "progress=false")
    return json.loads((out_dir / "pareto.json").read_text())["rows"]


SERIES = {"imitation": "policy: imitation", "imitation + GRPO": "policy: imitation + GRPO",
          "imitation of left_run + GRPO": "policy: imitation + GRPO",
          "the paper's GRPO": "policy: the paper's GRPO", "alpha-conditioned imitation": "policy: alpha-conditioned",
          # experiments.limit (issue 37): the hidden-state input, the oracle as teacher, teachers=auto
          "imitation of left_run, reading the hidden state": "policy: imitation, hidden state",
          "imitation of the oracle": "policy: imitation of the oracle",
          "imitation of teachers=auto": "policy: imitation, teachers=auto"}


def series(name: str) -> str:
    """The plot's series of a policy point: the longest name of SERIES it starts with (+ GRPO when it is a GRPO run
    from a clone of experiments.limit)."""
    kind = SERIES[max((k for k in SERIES if name.startswith(k)), key=len)]
    limit_route = kind in ("policy: imitation, hidden state", "policy: imitation of the oracle",
                           "policy: imitation, teachers=auto")
    return kind + " + GRPO" if limit_route and " + GRPO alpha=" in name else kind


def republish(rows: list[dict], heuristics: list[dict], publish_dir: Path, n: int) -> str:
    """frontier.{md,json,png} again with `rows` (experiments.limit's policy points) beside what was published there:
    the earlier summary lines carried as they were, every point shipped before re-evaluated on the same `n` test
    prompts as the new ones (`reevaluated` in frontier.json: each with its published and its new numbers), and this
    run's heuristics and oracle line (`heuristics`, the same prompts). Returns the markdown."""
    previous = json.loads((publish_dir / "frontier.json").read_text())
    shipped = []
    for p in previous["points"]:
        alpha = p.get("eval", {}).get("sampler.alpha")
        checkpoint = Path(p["checkpoint"])
        with tempfile.TemporaryDirectory() as tmp:
            now = evaluate(checkpoint, p["block_length"], n, alpha, out=Path(tmp) / "eval")
        shipped.append({"name": p["name"], "checkpoint": p["checkpoint"], "block_length": p["block_length"],
                        "mode": "full diffusion" if p["block_length"] == 24 else "semi-AR", "seed": p["seed"],
                        "minutes": p["minutes"], "alpha": alpha, "accuracy": now["accuracy"],
                        "mean_nfe": now["mean_nfe"], "published": {k: p[k] for k in ("accuracy", "mean_nfe")}})
    new = {(r["block_length"], r["name"]) for r in rows}
    carried = [s for s in previous["summary"] if (s["block_length"], s["name"]) not in new]
    reevaluated = [{k: s[k] for k in ("name", "checkpoint", "block_length", "seed", "accuracy", "mean_nfe",
                                      "published")} for s in shipped]
    return publish(rows, heuristics, publish_dir, carried=carried, shipped=shipped,
                   extra={"reevaluated": reevaluated})


def publish(rows: list[dict], heuristics: list[dict], publish_dir: Path, carried: list[dict] = (),
            shipped: list[dict] = (), extra: dict | None = None) -> str:
    """frontier.{md,json,png} in `publish_dir`: the heuristics, the oracle line and each policy point (the mean over
    training seeds, its spread and minutes beside), and the policies that make each mode's frontier copied to
    `publish_dir/policies/` so that frontier.json's `points` are each one `unmask eval` away (a policy shipped before
    that is no longer on a front is removed: the folder holds exactly the points). `carried`: summary lines of an
    earlier publication kept as they were; `shipped`: its shipped points re-evaluated (rows whose checkpoints are
    already in publish_dir/policies), candidates for the fronts beside `rows`. Returns the markdown."""
    summary = list(carried) + summarize(rows)
    policy_rows = [{"mode": "full diffusion" if s["block_length"] == 24 else "semi-AR",
                    "block_length": s["block_length"], "sampler": series(s["name"]),
                    "setting": f"{s['name']} ({s['seeds']} seeds: {s['accuracy_min']:.3f}-{s['accuracy_max']:.3f}, "
                               f"{s['minutes']:.1f} min)", "accuracy": s["accuracy"], "mean_nfe": s["mean_nfe"]}
                   for s in summary]
    points = []
    candidates = [*rows, *shipped]
    for bl in sorted({r["block_length"] for r in candidates}):
        mine = [r for r in candidates if r["block_length"] == bl]
        front = pareto_front([(r["mean_nfe"], r["accuracy"]) for r in mine])
        for r in mine:
            if (r["mean_nfe"], r["accuracy"]) not in front:
                continue
            here = Path(r["checkpoint"])
            if here.parent.resolve() == (publish_dir / "policies").resolve():  # shipped before: stays as it is
                target = publish_dir / "policies" / here.name
            else:
                target = publish_dir / "policies" / f"bl{bl}-{run_name(r['checkpoint'])}-s{r['seed']}"
                ship(here, target)
            points.append({"name": r["name"], "checkpoint": target.as_posix(), "block_length": bl,
                           "accuracy": r["accuracy"], "mean_nfe": r["mean_nfe"], "seed": r["seed"],
                           "minutes": round(r["minutes"], 2),
                           "eval": {"sampler.alpha": r["alpha"]} if r["name"].startswith("alpha-conditioned") else {}})
    kept = {Path(p["checkpoint"]).name for p in points}
    for stale in (publish_dir / "policies").glob("*"):
        if stale.is_dir() and stale.name not in kept:
            shutil.rmtree(stale)
    # every seed's row too: what a later run needs to add a point without re-running the rest (the ledger is in runs/)
    extra = {"points": points, "summary": summary, "runs": [*rows, *shipped], **(extra or {})}
    return write_pareto([r for r in heuristics if r["block_length"] in {8, 24}] + policy_rows, publish_dir,
                        {"recipe": "unmask frontier"}, title="built-in model: learned policies "
                        "beside every heuristic and the oracle limit", stem="frontier", extra=extra)


def run_name(checkpoint: str) -> str:
    """imitate, imitate-eb, family, grpo-a1, paper: a training's checkpoints/best is named by its run."""
    path = Path(checkpoint)
    return path.parents[1].name if path.name == "best" else path.name


def ship(checkpoint: Path, to: Path) -> None:
    """Copy a policy's files (weights, config, card) into the repository's results."""
    to.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.json", "README.md"):
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, to / name)


def summarize(rows: list[dict]) -> list[dict]:
    """One line per (block length, policy): the mean over training seeds, with the spread of accuracy."""
    keys = list(dict.fromkeys((r["block_length"], r["name"]) for r in rows))
    out = []
    for bl, name in keys:
        runs = [r for r in rows if r["block_length"] == bl and r["name"] == name]
        acc = [r["accuracy"] for r in runs]
        out.append({"block_length": bl, "name": name, "accuracy": statistics.fmean(acc),
                    "accuracy_min": min(acc), "accuracy_max": max(acc),
                    "mean_nfe": statistics.fmean(r["mean_nfe"] for r in runs),
                    "minutes": statistics.fmean(r["minutes"] for r in runs), "seeds": len(runs),
                    **({"cpu_minutes": statistics.fmean(r["cpu_minutes"] for r in runs)}
                       if all("cpu_minutes" in r for r in runs) else {}),
                    "checkpoints": [r["checkpoint"] for r in runs], "alpha": runs[0].get("alpha")})
    return out


if __name__ == "__main__":  # the same command line as `unmask frontier`
    from unmask.cli.main import main

    raise SystemExit(main(["frontier", *sys.argv[1:]]))
