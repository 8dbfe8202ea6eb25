"""`unmask sweep`: a Tune grid of GRPO runs (by default over the reward trade-off alpha), then a Pareto
report of every trained policy beside the heuristics, in semi-AR and full-diffusion mode.

out_dir/
  config.yaml          the resolved SweepConfig (`resume=<out_dir>` must match it)
  tune/                Tune's experiment; one trial directory per grid point, each with its own
                       checkpoints/ and trajectories/ (the layout of `unmask train`)
  trials.md, .json     one row per trial: grid values, status, last training metrics, the error if it failed
  pareto.md, .json, .png   heuristics and the finished policies, accuracy vs mean NFE
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

from unmask.cluster.config import SweepConfig, TrainConfig, check_sweep, grid_axes, grid_points
from unmask.cluster.remote import on_runner_resources
from unmask.cluster.rundir import claim_run_dir, seal
from unmask.cluster.train import absolute_paths, connect_ray, say, tune_run_config
from unmask.envs.config import DLLMSettings
from unmask.envs.files import write_atomic, write_json
from unmask.envs.structured import narrow, to_yaml


def param_space(cfg: SweepConfig, axes: dict[str, list]):
    """The UnmaskGRPOConfig of the base run with a `tune.grid_search` at each swept key (Tune sees it as
    plain data through `UnmaskGRPOConfig.to_dict`)."""
    from ray import tune

    from unmask.cluster.algorithm_config import UnmaskGRPOConfig, algo_path

    algo = UnmaskGRPOConfig.from_train_config(cfg).outputs(out_dir="")  # each trial writes into its own directory
    for path, values in axes.items():
        *parents, key = algo_path(path).split(".")
        node = operator.attrgetter(".".join(parents))(algo)
        setattr(node, key, tune.grid_search(values))
    return algo


def sweep(cfg: SweepConfig) -> dict:
    """Run (or resume) the grid, then write trials.* and pareto.*; returns {"trials": rows, "pareto": rows}."""
    check_sweep(cfg)
    axes = grid_axes(cfg.grid)
    points = grid_points(cfg, axes)
    cfg = absolute_paths(cfg)
    run_dir = claim_run_dir(cfg, SweepConfig)
    from unmask.rollout.preflight import preflight

    settings = {repr(narrow(point, DLLMSettings)): point for point in points}  # each distinct dLLM setting once
    for point in settings.values():
        preflight(point, point.rollout.train_pool, point.validate_examples if point.validate_every else 0)
    from ray import tune

    from unmask.cluster.algorithm import UnmaskGRPO

    connect_ray(cfg, concurrent_runs=cfg.max_concurrent_trials)
    if cfg.resume:
        tuner = tune.Tuner.restore(str(run_dir / "tune"), trainable=UnmaskGRPO, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "config.yaml", to_yaml(cfg))
        tuner = tune.Tuner(UnmaskGRPO, param_space=param_space(cfg, axes),
                           run_config=tune_run_config(cfg, label_trials=True),
                           tune_config=tune.TuneConfig(max_concurrent_trials=cfg.max_concurrent_trials))
    try:
        results = tuner.fit()
    finally:
        seal(run_dir)
    # the config each trial was given, also for trials that died before reporting one (Tune keeps it on the
    # Trial objects of the experiment analysis)
    analysis = getattr(results, "_experiment_analysis", None)
    given = {Path(t.path).name: t.config for t in getattr(analysis, "trials", None) or []}
    trials = [trial_row(result, axes, given) for result in results]
    trials.sort(key=lambda r: [str(r[k]) for k in axes])
    write_json(run_dir / "trials.json", {"trials": trials})
    from unmask.rollout.report import markdown_table

    columns = ["trial", *axes, "status", "iterations", "reward_mean", "accuracy", "nfe_mean", "error"]
    write_atomic(run_dir / "trials.md", markdown_table(trials, columns))
    pareto = report(cfg, points, [Path(r["policy"]) for r in trials if r["status"] == "finished"])
    return {"trials": trials, "pareto": pareto}


def trial_row(result, axes: dict[str, list], given: dict[str, dict]) -> dict:
    """One trial: its grid values (read back from the trial's own config), status and last metrics."""
    from unmask.cluster.algorithm_config import UnmaskGRPOConfig, algo_path

    config = result.config or given.get(Path(result.path).name, {})  # a trial that died in setup reports none
    trial_config = UnmaskGRPOConfig().update_from_dict(config)
    row: dict[str, Any] = {"trial": Path(result.path).name}
    row.update({path: operator.attrgetter(algo_path(path))(trial_config) for path in axes})
    metrics = result.metrics or {}
    row.update({k: metrics.get("unmask", {}).get(k) for k in ("reward_mean", "accuracy", "nfe_mean")})
    row["iterations"] = metrics.get("training_iteration", 0)
    policy = Path(result.path) / "checkpoints" / "final"
    row["policy"] = str(policy)
    if result.error is not None:
        lines = [line.strip() for line in str(result.error).splitlines() if line.strip()] or ["?"]
        named = [line for line in lines if "Error:" in line]  # the innermost exception's own line
        row["status"], row["error"] = "failed", (named or lines)[-1][:200]
        row["traceback"] = str(Path(result.path) / "error.txt")
    elif not (policy / "config.json").is_file():
        row["status"], row["error"] = "failed", "no final policy was saved"
    else:
        row["status"], row["error"] = "finished", ""
    return row


def report(cfg: SweepConfig, points: list[TrainConfig], policies: list[Path]) -> list[dict]:
    """Heuristics and policies on the test split, at the report's block lengths, every trained one and full
    diffusion; writes pareto.md/.json/.png into out_dir."""
    from unmask.rollout.config import ParetoConfig
    from unmask.rollout.pareto import run_pareto
    from unmask.rollout.report import write_pareto

    trained = {point.env.block_length for point in points}
    pareto_cfg = ParetoConfig(model=cfg.model, task=cfg.task, env=cfg.env,
                              block_lengths=sorted(set(cfg.block_lengths) | trained), heuristic_grid=cfg.heuristic_grid,
                              policies=[str(p) for p in policies], num_examples=cfg.eval.num_examples,
                              seed=cfg.seed, out_dir=cfg.out_dir, progress=False,
                              trust_remote_code=cfg.trust_remote_code)
    say(f"the report: heuristics and {len(policies)} policies on {cfg.eval.num_examples} test prompts, with one env "
        "runner's resources")
    rows, where = on_runner_resources(cfg, run_pareto, pareto_cfg)  # never in the driver
    write_json(Path(cfg.out_dir) / "report-resources.json", where)
    write_pareto(rows, Path(cfg.out_dir), pareto_cfg, title=f"sweep {Path(cfg.out_dir).name}: heuristics and policies")
    return rows
