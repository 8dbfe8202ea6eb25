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
import logging
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
from pathlib import Path

from unmask.cluster.config import TrainConfig, check_train
from unmask.cluster.rundir import RESERVE_BYTES, claim_run_dir, damage, forget_run, release, reserve, seal
from unmask.envs.files import Interrupted, is_local_path, sigterm_as_interrupt, write_atomic
from unmask.envs.structured import to_yaml
from unmask.learner.config import trained_network


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


def resources_needed(cfg: TrainConfig, concurrent_runs: int = 1) -> dict[str, float]:
    """Everything a run asks of Ray: per run one CPU for the trial (the learner's process, its GPUs), and the env
    runners' CPUs, GPUs and custom resources; concurrent runs (a sweep's trials) each as much."""
    need = {"CPU": 1 + cfg.num_env_runners * cfg.num_cpus_per_env_runner,
            "GPU": cfg.num_env_runners * cfg.num_gpus_per_env_runner + cfg.num_gpus_per_learner}
    for name, amount in cfg.custom_resources_per_env_runner.items():
        need[name] = need.get(name, 0.0) + cfg.num_env_runners * amount
    return {name: amount * concurrent_runs for name, amount in need.items() if amount}


def check_resources(cfg: TrainConfig, concurrent_runs: int, have: dict[str, float], nodes: list[dict[str, float]],
                    where: str) -> None:
    """The run's resources against a Ray instance's (its total, and a node that can hold one runner, one learner):
    a request that cannot be met would wait PENDING for ever. One line naming what is missing."""
    need = resources_needed(cfg, concurrent_runs)
    short = [f"{amount:g} {name} (it has {have.get(name, 0):g})" for name, amount in need.items()
             if have.get(name, 0) + 1e-9 < amount]
    if short:
        raise ValueError(f"{where} cannot hold the run: it needs {', '.join(short)}; {describe_request(cfg)} "
                         "(wait_for_resources=true starts anyway, for a cluster that autoscales)")
    runner = {"CPU": cfg.num_cpus_per_env_runner, "GPU": cfg.num_gpus_per_env_runner,
              **cfg.custom_resources_per_env_runner} if cfg.num_env_runners else {}
    for what, request in (("an env runner", runner), ("the learner", {"CPU": 1, "GPU": cfg.num_gpus_per_learner})):
        request = {k: v for k, v in request.items() if v}
        if request and not any(all(node.get(k, 0) + 1e-9 >= v for k, v in request.items()) for node in nodes):
            asked = ", ".join(f"{v:g} {k}" for k, v in request.items())
            raise ValueError(f"no node of {where} can hold {what} ({asked}): one actor's resources must fit on one "
                             "node")


def describe_request(cfg: TrainConfig) -> str:
    return (f"{cfg.num_env_runners} env runner(s) x ({cfg.num_cpus_per_env_runner:g} CPU, "
            f"{cfg.num_gpus_per_env_runner:g} GPU"
            + "".join(f", {v:g} {k}" for k, v in cfg.custom_resources_per_env_runner.items())
            + f") + learner (1 CPU, {cfg.num_gpus_per_learner:g} GPU)")


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


# what Ray, Tune and RLlib say on the driver's console that a user of `unmask train` cannot act on (the progress lines
# and the run's own messages are the output): logger -> the start of the message
# (a failed trial's traceback is kept in out_dir/error.txt and summed up in one line; --debug prints it)
NOISE = {"ray._private.authentication.authentication_token_setup": ("Token authentication is enabled",),
         "ray.rllib.algorithms.algorithm_config": ("You are running UnmaskGRPO on the new API stack",),
         "ray.tune.utils.util": ("Install gputil",),
         "ray.tune.tune": ("Wrote the latest version", "Trials did not complete"),
         "ray._private.worker": ("Started a local Ray instance",),
         "ray.tune.execution.tune_controller": ("Trial task failed",),
         "ray.tune.analysis.experiment_analysis": ("Failed to fetch metrics",),
         "ray.tune.execution.experiment_state": ("Saving experiment state", "Experiment state snapshotting")}


class Quiet(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def quiet_ray() -> None:
    """The driver's console without the noise (NOISE; Tune's status boxes: our ProgressPrinter is the output);
    --debug keeps all of it."""
    if os.environ.get("UNMASK_DEBUG", "") not in ("", "0"):
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for name, starts in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, Quiet) for f in logger.filters):
            logger.addFilter(Quiet(starts))


def connect_ray(cfg: TrainConfig, concurrent_runs: int) -> None:
    """Join the cluster named by `ray_address` (or by RAY_ADDRESS, as inside `ray job submit`), else start a local Ray
    with enough logical CPUs; then the run's resources are checked against it (check_resources), joined or local."""
    import ray

    quiet_ray()
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS", "")
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
        else:
            start_local_ray(resources_needed(cfg, concurrent_runs)["CPU"])
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    where = f"the Ray cluster at {address}" if address else "this machine's Ray"
    if not cfg.wait_for_resources:
        check_resources(cfg, concurrent_runs, ray.cluster_resources(), nodes, where)
    have = ray.cluster_resources()
    say(f"{where}: {have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs on {len(nodes)} node(s); the run takes "
        + ", ".join(f"{v:g} {k}" for k, v in resources_needed(cfg, concurrent_runs).items()))


def private_temp_dir() -> Path:
    """Where this user's local Ray keeps its sessions (sockets, logs): inside a folder only this user may enter. Ray
    makes its temp and session folders world-writable (0777, no sticky bit); inside a 0700 parent no other local user
    reaches them."""
    folder = Path(tempfile.gettempdir()) / f"unmask-ray-{os.getuid()}"  # short: Ray's socket paths must stay < 108
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.lstat()
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid():
        raise RuntimeError(f"{folder} is not this user's own folder: remove it, or set TMPDIR to a private folder")
    if info.st_mode & 0o077:
        folder.chmod(0o700)
    return folder / "ray"  # Ray opens its own temp folder to everyone (0777): the private one is its parent


def start_local_ray(cpus: float) -> None:
    import ray

    on_loopback_only()
    private = os.umask(0o077)  # what the local Ray writes for authentication (~/.ray/auth_token): this user's
    try:
        # address="local": a new instance even where `ray start` left one on this machine (which a bare ray.init would
        # join, and refuse num_cpus for)
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(cpus + 0.999)), include_dashboard=False,
                 log_to_driver=False, _temp_dir=str(private_temp_dir()))
    finally:
        os.umask(private)
    token = Path.home() / ".ray" / "auth_token"
    if token.is_file() and token.stat().st_uid == os.getuid() and token.stat().st_mode & 0o077:
        token.chmod(0o600)  # made by an earlier Ray with a looser umask


def tune_run_config(cfg: TrainConfig, label_trials: bool = False, final_eval: bool = False):
    """Where Tune keeps a run (out_dir/tune), when it stops, how often it checkpoints, what it prints; with
    `final_eval` (one run, `unmask train`), its final eval on a live env runner as it ends."""
    from ray import tune

    from unmask.cluster.progress import ProgressPrinter
    from unmask.cluster.remote import FinalEvalOnRunner

    stop = {"training_iteration": cfg.max_iterations}
    if cfg.max_minutes:  # 0: no time budget
        stop["time_total_s"] = cfg.max_minutes * 60
    return tune.RunConfig(
        storage_path=cfg.out_dir, name="tune", verbose=0, stop=stop,
        callbacks=[ProgressPrinter(label_trials), *([FinalEvalOnRunner(cfg)] if final_eval else []),
                   *tracking_callbacks(cfg)],
        checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=cfg.checkpoint_every, checkpoint_at_end=True,
                                                num_to_keep=2),
    )


def tracking_callbacks(cfg: TrainConfig) -> list:
    """Tune's W&B and MLflow loggers for `tracking` (each trial's every result, under tracking_project)."""
    callbacks = []
    if "wandb" in cfg.tracking:
        from ray.air.integrations.wandb import WandbLoggerCallback

        callbacks.append(WandbLoggerCallback(project=cfg.tracking_project, group=Path(cfg.out_dir).name,
                                             log_config=True, upload_checkpoints=False))
    if "mlflow" in cfg.tracking:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # no server given: a file store in the run directory (MLflow 3 asks to be told that is wanted)
            uri = (Path(cfg.out_dir) / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        callbacks.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name=cfg.tracking_project,
                                              save_artifact=False))
    return callbacks


def train(cfg: TrainConfig) -> dict:
    """Run GRPO with Tune in `out_dir`; returns the final eval (or the last metrics when eval is off)."""
    check_train(cfg)
    cfg = absolute_paths(cfg)
    run_dir = claim_run_dir(cfg, TrainConfig)
    from unmask.rollout.preflight import preflight

    preflight(cfg, cfg.rollout.train_pool, cfg.validate_examples if cfg.validate_every else 0)
    if not cfg.resume:  # the network as it will be trained (alpha-conditioned for a range, init_from's shape)
        cfg = dataclasses.replace(cfg, policy=trained_network(cfg.policy, cfg.init_from, cfg.grpo.alpha_range))
    from ray import tune

    connect_ray(cfg, concurrent_runs=1)
    from unmask.cluster.algorithm import UnmaskGRPO
    from unmask.cluster.algorithm_config import UnmaskGRPOConfig

    say(f"starting the run: its learner and {cfg.num_env_runners or 'no'} env runner(s) load the dLLM; it runs until "
        f"{until(cfg)}")

    if cfg.resume:  # Tune restores the trial from its last checkpoint: weights, optimizer, RNGs, data cursor
        tuner = tune.Tuner.restore(str(run_dir / "tune"), trainable=UnmaskGRPO, resume_unfinished=True,
                                   resume_errored=True)
    else:
        new_dir = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "config.yaml", to_yaml(cfg))
        tuner = tune.Tuner(UnmaskGRPO, param_space=UnmaskGRPOConfig.from_train_config(cfg),
                           run_config=tune_run_config(cfg, final_eval=cfg.eval.num_examples > 0))
    reserve(run_dir)
    tune_failed = None
    try:
        with sigterm_as_interrupt():
            results = tuner.fit()
    except Exception as err:  # noqa: BLE001 - Tune's own failure, e.g. a trial's error it cannot read back
        tune_failed = err
    finally:
        release(run_dir)  # the room the seal and the error report need, should the disk be full
        seal(run_dir)  # whatever stopped it: what a resume will unpickle is recorded as this user's
    if tune_failed is not None:
        cause = disk_full_cause(run_dir, str(tune_failed)) or f"{type(tune_failed).__name__}: {tune_failed}"
        if not cfg.resume and not any(p.stat().st_size for p in (run_dir / "tune").glob("*/progress.csv")):
            forget_run(run_dir, new_dir)  # it never ran an iteration: nothing to resume, the out_dir is free again
            raise RuntimeError(f"training failed before its first iteration (nothing kept): {cause.splitlines()[0]}")
        raise RuntimeError(f"training failed: {cause.splitlines()[0]} ({next_step(run_dir)})")
    if results.errors:
        cause, trace = trial_failure(results[0], results.errors[0], run_dir)
        if not cfg.resume and int((results[0].metrics or {}).get("training_iteration", 0)) == 0:
            forget_run(run_dir, new_dir)  # nothing to resume: the corrected re-run may use the same out_dir
            raise RuntimeError(f"training failed before its first iteration (nothing kept but the traceback, {trace}):"
                               f" {cause}")
        raise RuntimeError(f"training failed: {cause} (full traceback: {trace}; {next_step(run_dir)})")
    metrics = results[0].metrics
    iteration = int(metrics.get("training_iteration", 0))
    collapsed = bool(metrics.get("unmask", {}).get("collapsed", 0))  # stop_after_skipped stopped it
    if iteration < cfg.max_iterations and not reached_time_budget(metrics, cfg) and not collapsed:
        raise Interrupted(f"interrupted at iteration {iteration}; continue with: unmask train resume={run_dir}")
    from unmask.cluster.remote import evaluated_policy, final_eval_result

    policy = evaluated_policy(cfg, collapsed)
    if collapsed:
        from unmask.cluster.metrics import stalled_why

        print(f"unmask train: stopped at iteration {iteration}: {stalled_why(metrics['unmask'])}; the policy "
              f"stopped learning, the final eval is of {policy}", file=sys.stderr, flush=True)
    else:
        why = (f"max_iterations={cfg.max_iterations}" if iteration >= cfg.max_iterations else
               f"max_minutes={cfg.max_minutes:g} ({float(metrics.get('time_total_s', 0)) / 60:.1f} minutes)")
        print(f"unmask train: stopped after iteration {iteration}: it reached {why}", file=sys.stderr, flush=True)
    if cfg.eval.num_examples <= 0:
        return metrics.get("unmask", {})
    result = final_eval_result(cfg, metrics, policy)
    response = result.get("alpha_response")
    if response and not response["responds"]:
        (low, high), (nfe_low, nfe_high) = response["alpha"], response["mean_nfe"]
        print(f"unmask train: WARNING: the policy ignores alpha: mean NFE {nfe_low:.2f} at alpha={low:g} and "
              f"{nfe_high:.2f} at alpha={high:g} (it should fall as alpha grows)", file=sys.stderr, flush=True)
    return result


def until(cfg: TrainConfig) -> str:
    """When a run ends, as the start says it (no wall-clock budget unless one is given)."""
    budget = f", or after max_minutes={cfg.max_minutes:g}" if cfg.max_minutes else " (no max_minutes: no time budget)"
    rule = f", or when {cfg.stop_after_skipped} updates in a row stall" if cfg.stop_after_skipped else ""
    return f"iteration max_iterations={cfg.max_iterations}{budget}{rule}, or Ctrl-C / SIGTERM (resumable)"


def next_step(run_dir: Path) -> str:
    """How a failed run goes on: resume, or (where Tune's own state was damaged) start again."""
    damaged = damage(run_dir)
    if damaged:
        return f"it cannot be resumed: {damaged}"
    return f"continue with: unmask train resume={run_dir}"


def disk_full_cause(run_dir: Path, text: str) -> str:
    """The one line for a run stopped by a full disk ("" if it was not): Tune then fails in its own words (an error file
    it wrote empty, an experiment state it could not save)."""
    free = shutil.disk_usage(run_dir).free
    if not any(sign in text for sign in ("No space left", "Errno 28", "DiskFull")) and free > 2 * RESERVE_BYTES:
        return ""
    return (f"the disk of {run_dir} is full ({free / 2**20:.1f} MiB free): the checkpoints and dumps written before "
            "are kept and sealed; free some space and resume")


def trial_failure(result, error: BaseException, run_dir: Path) -> tuple[str, Path]:
    """A failed trial's cause in one line (the innermost error's own line), and where its whole traceback is kept:
    run_dir/error.txt, copied from Tune's trial directory (whose error.txt a failed first iteration takes with it).
    With --debug the traceback is printed too."""
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(error).__name__]
    named = [line for line in lines if "Error:" in line or "Error(" in line or "DiskFull:" in line]
    cause = disk_full_cause(run_dir, text) or (named or lines)[-1]
    trial_error = Path(result.path) / "error.txt" if getattr(result, "path", None) else None
    trace = run_dir / "error.txt"
    body = trial_error.read_text() if trial_error is not None and trial_error.is_file() else ""
    try:
        write_atomic(trace, body or text)
    except OSError:
        trace = trial_error if body else Path("(not written: the disk is full)")
    if os.environ.get("UNMASK_DEBUG", "") not in ("", "0"):
        print(body or text, file=sys.stderr, flush=True)
        for named_file in re.findall(r"traceback: (\S+?)\)", cause):  # a runner's own, kept in out_dir/errors
            if Path(named_file).is_file():
                print(Path(named_file).read_text(), file=sys.stderr, flush=True)
    return cause, trace


def reached_time_budget(metrics: dict, cfg: TrainConfig) -> bool:
    return bool(cfg.max_minutes) and float(metrics.get("time_total_s", 0.0)) >= cfg.max_minutes * 60
