"""`unmask sweep`: a Tune grid of GRPO runs (by default over the reward trade-off alpha), then a Pareto
report of every trained policy beside the heuristics, in semi-AR and full-diffusion mode.

run_dir/
  config.yaml          the resolved SweepConfig (`resume=<run_dir>` must match it)
  tune/                Tune's experiment; one trial directory per grid point, each with its own
                       checkpoints/ and trajectories/ (the layout of `unmask train`)
  trials.md, .json     one row per trial: grid values, status, last training metrics, the error if it failed
  pareto.md, .json, .png   heuristics and the finished policies, accuracy vs mean NFE
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cluster.train import TrainConfig, absolute_paths, algorithm_config, check_train, connect_ray
from envs.files import write_atomic, write_json

SWEEPABLE = ("grpo.", "rollout.")
NOT_SWEEPABLE = ("grpo.policy.", "grpo.grad_clip", "rollout.env.gen_length")  # they shape the module/spaces


@dataclass
class SweepConfig(TrainConfig):
    run_dir: str = "runs/sweep"
    # grid.<train key>=[values]: one trial per combination. A key given on the command line adds an axis
    # (or replaces that key's values); the default axis is the reward trade-off alpha.
    grid: dict[str, Any] = field(default_factory=lambda: {"grpo": {"alpha": [0.5, 1.0, 2.0]}})
    max_concurrent_trials: int = 1  # trials running at once; each takes 1 CPU + its env runners' resources
    report_block_lengths: list[int] = field(default_factory=lambda: [8])  # + full diffusion + trained BLs
    report_grid: str = "small"  # heuristic grid of the report: small | default


def grid_axes(grid: dict) -> dict[str, list]:
    """{"grpo": {"alpha": [..]}} -> {"grpo.alpha": [..]}, with every key checked."""
    axes: dict[str, list] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, path + ".")
            elif not isinstance(value, list) or not value:
                raise ValueError(f"grid.{path} must be a non-empty list of values, got {value!r}")
            elif not path.startswith(SWEEPABLE) or path.startswith(NOT_SWEEPABLE):
                raise ValueError(f"grid.{path}: a sweep varies grpo.* and rollout.* keys (not grpo.policy.*, "
                                 "grpo.grad_clip or rollout.env.gen_length)")
            else:
                axes[path] = value

    walk(grid, "")
    if not axes:
        raise ValueError("the sweep grid is empty: give grid.<key>=[values], e.g. grid.grpo.alpha=[0.5,1,2]")
    return axes


def trial_configs(cfg: SweepConfig, axes: dict[str, list]) -> list[TrainConfig]:
    """Every grid point as a checked TrainConfig: a bad value fails here, before any trial starts."""
    base = OmegaConf.structured(TrainConfig(**{k: getattr(cfg, k) for k in TrainConfig.__dataclass_fields__}))
    OmegaConf.set_struct(base, True)
    out = []
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values))
        try:
            merged = OmegaConf.merge(base, OmegaConf.from_dotlist([f"{k}={v}" for k, v in point.items()]))
            train_cfg = OmegaConf.to_object(merged)
        except OmegaConfBaseException as err:
            raise ValueError(f"grid point {point}: {str(err).splitlines()[0]}") from None
        try:
            check_train(train_cfg)
        except ValueError as err:
            raise ValueError(f"grid point {point}: {err}") from None
        out.append(train_cfg)
    return out


def param_space(cfg: SweepConfig, axes: dict[str, list]):
    """The AlgorithmConfig of the base run with a `tune.grid_search` at each swept key."""
    from ray import tune

    algo = algorithm_config(cfg)
    algo.run_dir = ""  # each trial writes into its own Tune trial directory
    for path, values in axes.items():
        section, *keys = path.split(".")
        node = algo.learner_config_dict if section == "grpo" else algo.env_config["rollout"]
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = tune.grid_search(values)
    return algo


def comparable(config_yaml: str) -> dict:
    """A saved or current config as plain data, without `resume` (through YAML: tuples become lists)."""
    data = OmegaConf.to_container(OmegaConf.create(config_yaml), resolve=True)
    data.pop("resume", None)
    return data


def sweep(cfg: SweepConfig) -> dict:
    """Run (or resume) the grid, then write trials.* and pareto.*; returns {"trials": rows, "pareto": rows}."""
    from ray import tune

    from cluster.algorithm import UnmaskGRPO
    from cluster.configs import to_yaml
    from cluster.train import ProgressPrinter, tune_run_config

    if cfg.eval_examples < 1 or cfg.max_concurrent_trials < 1:
        raise ValueError("a sweep needs eval_examples >= 1 (its report) and max_concurrent_trials >= 1")
    axes = grid_axes(cfg.grid)
    trial_configs(cfg, axes)
    if cfg.resume:
        cfg = dataclasses.replace(cfg, run_dir=cfg.resume)
    cfg = absolute_paths(cfg)
    run_dir = Path(cfg.run_dir)
    saved = run_dir / "config.yaml"
    if cfg.resume:
        if not (run_dir / "tune").is_dir() or not saved.is_file():
            raise ValueError(f"resume={cfg.resume}: {run_dir} holds no sweep to resume")
        if comparable(saved.read_text()) != comparable(to_yaml(cfg)):
            raise ValueError(f"{run_dir} holds a sweep with another config: resume it with the same keys")
    elif saved.exists():
        raise ValueError(f"run_dir {run_dir} already holds a sweep: pass resume={run_dir} or choose a new run_dir")

    connect_ray(cfg, concurrent_runs=cfg.max_concurrent_trials)
    if not cfg.resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(saved, to_yaml(cfg))

    printer = ProgressPrinter()
    printer.label_trials = True
    if cfg.resume:
        tuner = tune.Tuner.restore(str(run_dir / "tune"), trainable=UnmaskGRPO, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
    else:
        tuner = tune.Tuner(UnmaskGRPO, param_space=param_space(cfg, axes), run_config=tune_run_config(cfg, printer),
                           tune_config=tune.TuneConfig(max_concurrent_trials=cfg.max_concurrent_trials))
    results = tuner.fit()
    # the config each trial was given, also for trials that died before reporting one (Tune keeps it on the
    # Trial objects of the experiment analysis)
    analysis = getattr(results, "_experiment_analysis", None)
    given = {Path(t.path).name: t.config for t in getattr(analysis, "trials", None) or []}
    trials = [trial_row(result, axes, given) for result in results]
    trials.sort(key=lambda r: [str(r[k]) for k in axes])
    write_json(run_dir / "trials.json", {"trials": trials})
    from cluster.report import markdown_table

    columns = ["trial", *axes, "status", "iterations", "reward_mean", "accuracy", "nfe_mean", "error"]
    write_atomic(run_dir / "trials.md", markdown_table(trials, columns))
    pareto = report(cfg, axes, [Path(r["policy"]) for r in trials if r["status"] == "finished"])
    return {"trials": trials, "pareto": pareto}


def trial_row(result, axes: dict[str, list], given: dict[str, dict]) -> dict:
    """One trial: its grid values (read back from the trial's own config), status and last metrics."""
    config = result.config or given.get(Path(result.path).name, {})  # a trial that died in setup reports none
    row: dict[str, Any] = {"trial": Path(result.path).name}
    for path in axes:
        section, *keys = path.split(".")
        node = config.get("learner_config_dict", {}) if section == "grpo" else config.get("env_config", {}).get(
            "rollout", {})
        for key in keys:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        row[path] = node
    metrics = result.metrics or {}
    row.update({k: metrics.get("unmask", {}).get(k) for k in ("reward_mean", "accuracy", "nfe_mean")})
    row["iterations"] = metrics.get("training_iteration", 0)
    policy = Path(result.path) / "checkpoints" / "final"
    row["policy"] = str(policy)
    if result.error is not None:
        lines = [line.strip() for line in str(result.error).splitlines() if line.strip()] or ["?"]
        named = [line for line in lines if "Error:" in line]  # the innermost exception's own line
        row["status"], row["error"] = "failed", (named or lines)[-1][:200]
    elif not (policy / "policy.json").is_file():
        row["status"], row["error"] = "failed", "no final policy was saved"
    else:
        row["status"], row["error"] = "finished", ""
    return row


def report(cfg: SweepConfig, axes: dict[str, list], policies: list[Path]) -> list[dict]:
    """Heuristics and policies on the test split; writes pareto.md/.json/.png into run_dir."""
    from cluster.report import write_pareto
    from rollout.pareto import ParetoConfig, run_pareto

    trained = {int(v) for v in axes.get("rollout.env.block_length", [cfg.rollout.env.block_length])}
    block_lengths = sorted(set(cfg.report_block_lengths) | trained)
    pareto_cfg = ParetoConfig(model=cfg.rollout.model, task=cfg.rollout.task, env=cfg.rollout.env,
                              block_lengths=block_lengths, grid=cfg.report_grid,
                              policies=[str(p) for p in policies], num_examples=cfg.eval_examples,
                              seed=cfg.rollout.seed, out_dir=cfg.run_dir, progress=False,
                              trust_remote_code=cfg.rollout.trust_remote_code)
    rows = run_pareto(pareto_cfg)
    write_pareto(rows, Path(cfg.run_dir), pareto_cfg, title=f"sweep {Path(cfg.run_dir).name}: heuristics and policies")
    return rows
