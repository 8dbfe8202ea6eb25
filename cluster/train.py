"""`unmask train`: GRPO training of the unmasking policy on Ray, through Tune (for its loggers,
checkpoints and, later, sweeps).

run_dir/
  config.yaml                     the resolved TrainConfig
  tune/                           Tune's trial directory: progress.csv, result.json, TensorBoard events,
                                  algorithm checkpoints
  trajectories/iter_*/runner_*.parquet   Arrow dumps (rollout.trajectories.TRAJECTORY_SCHEMA)
  checkpoints/policy_*/, checkpoints/final/   policy weights (safetensors) + policy.json
  eval.json                       the final policy on `eval_examples` test prompts
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from envs.config import SamplerConfig
from envs.dllm import is_local_path
from envs.files import write_atomic, write_json
from envs.mdp import check_lengths
from learner.config import GRPOConfig, check_grpo
from rollout.config import RolloutConfig, check_rollout


@dataclass
class TrainConfig:
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    run_dir: str = "runs/train"
    max_iterations: int = 200  # one iteration = one GRPO update
    max_minutes: float = 30.0  # wall-clock budget of the training loop
    ray_address: str = ""  # "" = start a local Ray; "auto" or host:port = join a cluster
    num_env_runners: int = 1  # 0 = sample in the learner's process
    num_cpus_per_env_runner: float = 1.0
    num_gpus_per_env_runner: float = 0.0  # > 0: the runner's dLLM lives on that GPU
    custom_resources_per_env_runner: dict[str, float] = field(default_factory=dict)  # e.g. {"a100": 1}
    num_gpus_per_learner: float = 0.0
    max_policy_lag: int = 1  # drop groups older than this many updates; 0 = on-policy
    groups_per_update: int = 8  # prompts (x group_size rollouts) per GRPO update
    checkpoint_every: int = 10  # iterations between checkpoints
    dump_trajectories: bool = True
    eval_examples: int = 500  # test prompts for the final eval.json (0 = skip)
    eval_policy_temperature: float = 1.0
    resume: str = ""  # a run directory: continue that run from its last checkpoint, with its saved config


def check_train(cfg: TrainConfig) -> None:
    check_rollout(cfg.rollout)
    check_grpo(cfg.grpo)
    check_lengths(cfg.rollout.env.gen_length, cfg.rollout.env.block_length)
    if cfg.max_iterations < 1 or cfg.max_minutes <= 0 or cfg.groups_per_update < 1:
        raise ValueError("max_iterations and groups_per_update must be >= 1 and max_minutes > 0")
    if cfg.max_policy_lag < 0 or cfg.num_env_runners < 0 or cfg.checkpoint_every < 0:
        raise ValueError("max_policy_lag, num_env_runners and checkpoint_every must be >= 0")


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Tune runs trials in their own working directory: every local path must be absolute."""
    rollout = cfg.rollout
    if rollout.model != "builtin" and is_local_path(rollout.model):
        rollout = dataclasses.replace(rollout, model=str(Path(rollout.model).resolve()))
    if rollout.task.path:
        rollout = dataclasses.replace(rollout, task=dataclasses.replace(rollout.task,
                                                                        path=str(Path(rollout.task.path).resolve())))
    return dataclasses.replace(cfg, rollout=rollout, run_dir=str(Path(cfg.run_dir).resolve()))


def algorithm_config(cfg: TrainConfig, run_id: str = ""):
    """The RLlib AlgorithmConfig of one training run."""
    from cluster.algorithm import UnmaskGRPOConfig, policy_spaces
    from cluster.configs import to_dict

    grpo = to_dict(cfg.grpo)
    obs_space, action_space = policy_spaces(cfg.rollout.env.gen_length)
    algo = (
        UnmaskGRPOConfig()
        .environment(observation_space=obs_space, action_space=action_space,
                     env_config={"rollout": to_dict(cfg.rollout)})
        .env_runners(num_env_runners=cfg.num_env_runners, num_cpus_per_env_runner=cfg.num_cpus_per_env_runner,
                     num_gpus_per_env_runner=cfg.num_gpus_per_env_runner,
                     custom_resources_per_env_runner=dict(cfg.custom_resources_per_env_runner))
        .learners(num_learners=0, num_gpus_per_learner=cfg.num_gpus_per_learner, learner_config_dict=grpo)
        .rl_module(model_config=grpo["policy"])
        .training(grad_clip=cfg.grpo.grad_clip, grad_clip_by="global_norm")
        .debugging(seed=cfg.rollout.seed)
        # a crashed env runner is restarted by Ray and resumed by UnmaskGRPO.restore_env_runners
        .fault_tolerance(restart_failed_env_runners=True, delay_between_env_runner_restarts_s=1.0)
    )
    algo.max_policy_lag = cfg.max_policy_lag
    algo.groups_per_update = cfg.groups_per_update
    algo.run_dir, algo.run_id = cfg.run_dir, run_id
    algo.checkpoint_every = cfg.checkpoint_every
    algo.dump_trajectories = cfg.dump_trajectories
    return algo


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
        if address:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise RuntimeError(f"cannot reach the Ray cluster at {address!r}: "
                                   f"{str(err).strip().splitlines()[0]}") from None
            return  # a cluster may autoscale: no resource check
        ray.init(num_cpus=max(os.cpu_count() or 1, int(needed_cpus + 0.999)), include_dashboard=False,
                 log_to_driver=False)
    have = ray.cluster_resources()
    if have.get("CPU", 0) < needed_cpus or have.get("GPU", 0) < needed_gpus:
        raise ValueError(f"this Ray instance has {have.get('CPU', 0):g} CPUs / {have.get('GPU', 0):g} GPUs; the run "
                         f"needs {needed_cpus:g} CPUs and {needed_gpus:g} GPUs")


def tune_run_config(cfg: TrainConfig, printer: object):
    """Where Tune keeps a run (run_dir/tune), when it stops, and how often it checkpoints."""
    from ray import tune

    return tune.RunConfig(
        storage_path=cfg.run_dir, name="tune", verbose=0, callbacks=[printer],
        stop={"training_iteration": cfg.max_iterations, "time_total_s": cfg.max_minutes * 60},
        checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=cfg.checkpoint_every, checkpoint_at_end=True,
                                                num_to_keep=2),
    )


def train(cfg: TrainConfig) -> dict:
    """Run GRPO with Tune in `run_dir`; returns the final eval (or the last metrics when eval is off)."""
    from ray import tune

    from cluster.configs import to_yaml

    check_train(cfg)
    if cfg.resume:
        cfg = dataclasses.replace(cfg, run_dir=cfg.resume)
    cfg = absolute_paths(cfg)
    run_dir = Path(cfg.run_dir)
    if cfg.resume and not (run_dir / "tune").is_dir():
        raise ValueError(f"resume={cfg.resume}: no run to resume there")
    if not cfg.resume and (run_dir / "config.yaml").exists():
        raise ValueError(f"run_dir {run_dir} already holds a run: choose a new run_dir (or resume={run_dir})")

    connect_ray(cfg, concurrent_runs=1)
    run_id = run_dir.name
    from cluster.algorithm import UnmaskGRPO

    if cfg.resume:  # Tune restores the trial from its last checkpoint: weights, optimizer, RNGs, data cursor
        tuner = tune.Tuner.restore(str(run_dir / "tune"), trainable=UnmaskGRPO, resume_unfinished=True,
                                   resume_errored=True)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "config.yaml", to_yaml(cfg))
        tuner = tune.Tuner(UnmaskGRPO, param_space=algorithm_config(cfg, run_id),
                           run_config=tune_run_config(cfg, ProgressPrinter()))
    with sigterm_as_interrupt():
        results = tuner.fit()
    if results.errors:
        raise RuntimeError(f"training failed: {str(results.errors[0]).strip().splitlines()[-1]}")
    if int(results[0].metrics.get("training_iteration", 0)) < cfg.max_iterations and not reached_time_budget(
            results[0].metrics, cfg):
        raise Interrupted(f"interrupted at iteration {results[0].metrics.get('training_iteration', 0)}; "
                          f"continue with: unmask train resume={run_dir}")
    last = results[0].metrics.get("unmask", {})
    if cfg.eval_examples <= 0:
        return last
    return final_eval(cfg, run_dir / "checkpoints" / "final")


class Interrupted(RuntimeError):
    """The run stopped early (SIGINT/SIGTERM, `ray job stop`); its directory can be resumed."""


def reached_time_budget(metrics: dict, cfg: TrainConfig) -> bool:
    return float(metrics.get("time_total_s", 0.0)) >= cfg.max_minutes * 60


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (what `ray job stop` and schedulers send) is handled like Ctrl-C: Tune stops the trial, which
    saves its final policy, and writes the experiment state, so the run can be resumed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def final_eval(cfg: TrainConfig, policy_dir: Path) -> dict:
    from cluster.configs import to_dict
    from rollout.evaluate import EvalConfig, evaluate

    sampler = SamplerConfig(name="policy", checkpoint=str(policy_dir), policy_temperature=cfg.eval_policy_temperature)
    eval_cfg = EvalConfig(model=cfg.rollout.model, task=cfg.rollout.task, sampler=sampler, env=cfg.rollout.env,
                          num_examples=cfg.eval_examples, seed=cfg.rollout.seed, progress=False,
                          out=str(Path(cfg.run_dir) / "eval.json"), trust_remote_code=cfg.rollout.trust_remote_code)
    result = evaluate(eval_cfg)
    result["config"] = to_dict(eval_cfg)
    write_json(Path(eval_cfg.out), result)
    return result


class _Printer:
    """A one-line summary per iteration instead of Tune's wide status table."""

    label_trials = False  # sweeps: prefix each line with the trial

    def on_trial_result(self, iteration, trials, trial, result, **info):
        m = result.get("unmask", {})
        if m:
            prefix = f"{trial}  " if self.label_trials else ""
            print(f"{prefix}iter {result['training_iteration']:4d}  reward {m['reward_mean']:.3f}  "
                  f"acc {m['accuracy']:.3f}  "
                  f"nfe {m['nfe_mean']:.2f}  traj/s {m['trajectories_per_s']:.1f}  "
                  f"busy {m['env_runner_busy_fraction']:.2f}  lag {m['staleness_mean']:.2f}  "
                  f"v{int(m['policy_version'])}  {result['time_total_s']:.0f}s", flush=True)


def ProgressPrinter():  # noqa: N802 - a Tune Callback built lazily so importing this module needs no Ray
    from ray.tune import Callback

    return type("ProgressPrinter", (_Printer, Callback), {})()
