"""Work that loads the dLLM after training (the final evaluation, a sweep's report) runs in Ray with one env runner's
resources, never in the driver: on a cluster the driver is the head node's CPU, and a second copy of an 8B model on a
GPU a runner holds would not fit. When the trials have ended their runners are gone, so the resources are free."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from unmask.cluster.config import TrainConfig


def runner_resources(cfg: TrainConfig) -> dict[str, Any]:
    """Ray options of one env runner (or of the learner's process, which samples itself with num_env_runners=0)."""
    if cfg.num_env_runners:
        return {"num_cpus": cfg.num_cpus_per_env_runner, "num_gpus": cfg.num_gpus_per_env_runner,
                "resources": dict(cfg.custom_resources_per_env_runner)}
    return {"num_cpus": 1, "num_gpus": cfg.num_gpus_per_learner, "resources": {}}


def _call_here(fn: Callable, args: tuple) -> tuple[Any, dict]:
    import ray

    context = ray.get_runtime_context()
    where = {"node": context.get_node_id(), "resources": dict(context.get_assigned_resources())}
    return fn(*args), where


def on_runner_resources(cfg: TrainConfig, fn: Callable, *args) -> tuple[Any, dict]:
    """`fn(*args)` in a Ray task with one env runner's resources; its result, and where it ran (node, resources). An
    error inside is raised here as it was (the task is not retried: a deterministic failure would only repeat)."""
    import ray

    task = ray.remote(max_retries=0, **runner_resources(cfg))(_call_here)
    try:
        return ray.get(task.remote(fn, args))
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        raise (cause if isinstance(cause, Exception) else RuntimeError(str(err).strip().splitlines()[-1])) from None
