"""`unmask train`: GRPO training of the unmasking policy on Ray, through Tune (for its loggers,
checkpoints and, later, sweeps).

out_dir/
  config.yaml                     the resolved TrainConfig
  tune/                           Tune's trial directory: progress.csv, result.json, TensorBoard events,
                                  algorithm checkpoints
  trajectories/iter_*/runner_*.parquet   Arrow dumps (rollout.trajectories.TRAJECTORY_SCHEMA)
  checkpoints/policy_<version>_iter_<k>/, best/, final/   the policy as a Hugging Face checkpoint: model.safetensors +
                                  config.json (its shape and how it was trained) + README.md
  eval.json                       the final policy on `eval.num_examples` test prompts
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from pathlib import Path

from unmask.cluster.config import TrainConfig, check_train
from unmask.cluster.rundir import claim_run_dir, forget_run, seal
from unmask.envs.config import SamplerConfig
from unmask.envs.files import Interrupted, is_local_path, sigterm_as_interrupt, write_atomic
from unmask.envs.structured import to_yaml
from unmask.learner.config import trained_network
from unmask.rollout.config import EvalConfig


def say(step: str) -> None:
    """Start-up progress on stderr: minutes can pass before the first iteration on a loaded machine."""
    print(f"unmask: {step} ...", file=sys.stderr, flush=True)


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Tune runs trials in their own working directory: every local path must be absolute."""
    model = cfg.model
    if model != "builtin" and is_local_path(model):
        model = str(Path(model).expanduser().resolve())
    task = cfg.task
    for key in ("path", "test_path"):
        if getattr(task, key):
            task = dataclasses.replace(task, **{key: str(Path(getattr(task, key)).resolve())})
    init_from = cfg.init_from
    if init_from and is_local_path(init_from):
        init_from = str(Path(init_from).expanduser().resolve())
    return dataclasses.replace(cfg, model=model, task=task, init_from=init_from,
                               out_dir=str(Path(cfg.resume or cfg.out_dir).resolve()))


def logical_cpus_needed(cfg: TrainConfig) -> float:
    return 1 + cfg.num_env_runners * cfg.num_cpus_per_env_runner


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A `host:port` that nothing answers on fails here in seconds (ray.init would wait minutes)."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except (OSError, ValueError):
        raise RuntimeError(f"cannot reach the Ray cluster at {address!r}: nothing answers there") from None


def on_loopback_only() -> None:
    """A local Ray (this machine only, started by this command) listens on loopback alone: Ray's one-machine
    mode, the one it uses on macOS and Windows, through its own switch (by default on Linux its GCS, raylet,
    workers and metrics endpoints listen on every interface). Set for this process and its children."""
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def connect_ray(cfg: TrainConfig, concurrent_runs: int) -> None:
    """Join the cluster named by `ray_address` (or by RAY_ADDRESS, as inside `ray job submit`), else start
    a local Ray with enough logical CPUs; a local instance too small for the run is an error up front."""
    import ray

    address = cfg.ray_address or os.environ.get("RAY_ADDRESS", "")
    needed_cpus = logical_cpus_needed(cfg) * concurrent_runs
    needed_gpus = cfg.num_env_runners * cfg.num_gpus_per_env_runner * concurrent_runs
    if address:
        check_reachable(address)
    if not ray.is_initialized():
        say(f"joining the Ray cluster at {address}" if address else "starting Ray")
        if address:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise RuntimeError(f"cannot reach the Ray cluster at {address!r}: "
                                   f"{str(err).strip().splitlines()[0]}") from None
            return  # a cluster may autoscale: no resource check
        on_loopback_only()
        private = os.umask(0o077)  # what the local Ray writes for authentication (~/.ray/auth_token): this user's
        try:
            # address="local": a new instance even where `ray start` left one on this machine (which a bare
            # ray.init would join, and refuse num_cpus for)
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(needed_cpus + 0.999)),
                     include_dashboard=False, log_to_driver=False)
        finally:
            os.umask(private)
        token = Path.home() / ".ray" / "auth_token"
        if token.is_file() and token.stat().st_uid == os.getuid() and token.stat().st_mode & 0o077:
            token.chmod(0o600)  # made by an earlier Ray with a looser umask
    have = ray.cluster_resources()
    if have.get("CPU", 0) < needed_cpus or have.get("GPU", 0) < needed_gpus:
        raise ValueError(f"this Ray instance has {have.get('CPU', 0):g} CPUs / {have.get('GPU', 0):g} GPUs; the run "
                         f"needs {needed_cpus:g} CPUs and {needed_gpus:g} GPUs")


def tune_run_config(cfg: TrainConfig, label_trials: bool = False):
    """Where Tune keeps a run (out_dir/tune), when it stops, how often it checkpoints, what it prints."""
    from ray import tune

    from unmask.cluster.progress import ProgressPrinter

    stop = {"training_iteration": cfg.max_iterations}
    if cfg.max_minutes:  # 0: no time budget
        stop["time_total_s"] = cfg.max_minutes * 60
    return tune.RunConfig(
        storage_path=cfg.out_dir, name="tune", verbose=0, callbacks=[ProgressPrinter(label_trials)], stop=stop,
        checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=cfg.checkpoint_every, checkpoint_at_end=True,
                                                num_to_keep=2),
    )


def train(cfg: TrainConfig) -> dict:
    """Run GRPO with Tune in `out_dir`; returns the final eval (or the last metrics when eval is off)."""
    check_train(cfg)
    cfg = absolute_paths(cfg)
    run_dir = claim_run_dir(cfg, TrainConfig)
    from unmask.rollout.preflight import preflight

    preflight(cfg, cfg.rollout.train_pool)
    if not cfg.resume:  # the network as it will be trained (alpha-conditioned for a range, init_from's shape)
        cfg = dataclasses.replace(cfg, policy=trained_network(cfg.policy, cfg.init_from, cfg.grpo.alpha_range))
    from ray import tune

    connect_ray(cfg, concurrent_runs=1)
    from unmask.cluster.algorithm import UnmaskGRPO
    from unmask.cluster.algorithm_config import UnmaskGRPOConfig

    say(f"starting the run: its learner and {cfg.num_env_runners or 'no'} env runner(s) load the dLLM; iteration 1 "
        "follows (max_minutes counts from there)")

    if cfg.resume:  # Tune restores the trial from its last checkpoint: weights, optimizer, RNGs, data cursor
        tuner = tune.Tuner.restore(str(run_dir / "tune"), trainable=UnmaskGRPO, resume_unfinished=True,
                                   resume_errored=True)
    else:
        new_dir = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "config.yaml", to_yaml(cfg))
        tuner = tune.Tuner(UnmaskGRPO, param_space=UnmaskGRPOConfig.from_train_config(cfg),
                           run_config=tune_run_config(cfg))
    try:
        with sigterm_as_interrupt():
            results = tuner.fit()
    finally:
        seal(run_dir)  # whatever stopped it: what a resume will unpickle is recorded as this user's
    if results.errors:
        error = str(results.errors[0]).strip().splitlines()[-1]
        if not cfg.resume and int((results[0].metrics or {}).get("training_iteration", 0)) == 0:
            forget_run(run_dir, new_dir)  # nothing to resume: the corrected re-run may use the same out_dir
            raise RuntimeError(f"training failed before its first iteration (nothing kept): {error}")
        raise RuntimeError(f"training failed: {error}")
    metrics = results[0].metrics
    iteration = int(metrics.get("training_iteration", 0))
    collapsed = bool(metrics.get("unmask", {}).get("collapsed", 0))  # stop_after_skipped stopped it
    if iteration < cfg.max_iterations and not reached_time_budget(metrics, cfg) and not collapsed:
        raise Interrupted(f"interrupted at iteration {iteration}; continue with: unmask train resume={run_dir}")
    policy = run_dir / "checkpoints" / "final"
    if collapsed:
        best = run_dir / "checkpoints" / "best"
        policy = best if best.is_dir() else policy
        from unmask.cluster.metrics import stalled_why

        print(f"unmask train: stopped at iteration {iteration}: {stalled_why(metrics['unmask'])}; the policy "
              f"stopped learning, the final eval is of {policy}", file=sys.stderr, flush=True)
    if cfg.eval.num_examples <= 0:
        return metrics.get("unmask", {})
    return final_eval(cfg, policy)


def reached_time_budget(metrics: dict, cfg: TrainConfig) -> bool:
    return bool(cfg.max_minutes) and float(metrics.get("time_total_s", 0.0)) >= cfg.max_minutes * 60


def final_eval(cfg: TrainConfig, policy_dir: Path) -> dict:
    from unmask.rollout.evaluate import evaluate, write_eval

    sampler = SamplerConfig(name="policy", checkpoint=str(policy_dir), policy_temperature=cfg.eval.policy_temperature)
    eval_cfg = EvalConfig(model=cfg.model, task=cfg.task, sampler=sampler, env=cfg.env,
                          num_examples=cfg.eval.num_examples, seed=cfg.seed, progress=False,
                          out_dir=cfg.out_dir, trust_remote_code=cfg.trust_remote_code)
    result = evaluate(eval_cfg)
    if cfg.grpo.alpha_range:  # one policy for every trade-off: does it answer to alpha? (its ends, same prompts)
        ends = [min(cfg.grpo.alpha_range), max(cfg.grpo.alpha_range)]
        nfe = [result["mean_nfe"] if a == cfg.grpo.alpha else evaluate(dataclasses.replace(
            eval_cfg, sampler=dataclasses.replace(sampler, alpha=a)))["mean_nfe"] for a in ends]  # the run's: done
        result["alpha_response"] = {"alpha": ends, "mean_nfe": nfe, "responds": nfe[1] < nfe[0] - 0.05}
        if not result["alpha_response"]["responds"]:
            print(f"unmask train: WARNING: the policy ignores alpha: mean NFE {nfe[0]:.2f} at alpha={ends[0]:g} and "
                  f"{nfe[1]:.2f} at alpha={ends[1]:g} (it should fall as alpha grows)", file=sys.stderr, flush=True)
    return write_eval(eval_cfg, result)
