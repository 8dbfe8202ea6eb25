"""Work that needs the dLLM after training (the final evaluation, a sweep's report) runs where a runner's dLLM is, never
in the driver: on a cluster the driver is the head node's CPU, and a second copy of an 8B model on a GPU a runner holds
would not fit.

The final eval of `unmask train` runs on a live env runner, with the model it has loaded: when Tune has decided that
the run ends (its last result is `done`) and before it stops the trial, the driver asks the algorithm for it
(FinalEvalOnRunner). Where that cannot be (the runners are gone), and for a sweep's report, the work runs in a Ray task
with one env runner's resources: once the trials have ended, their runners' resources are free."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from unmask.cluster.config import TrainConfig
from unmask.envs.config import SamplerConfig
from unmask.rollout.config import EvalConfig


def runner_resources(cfg: TrainConfig) -> dict[str, Any]:
    """Ray options of one env runner (or of the learner's process, which samples itself with num_env_runners=0)."""
    if cfg.num_env_runners:
        return {"num_cpus": cfg.num_cpus_per_env_runner, "num_gpus": cfg.num_gpus_per_env_runner,
                "resources": dict(cfg.custom_resources_per_env_runner)}
    return {"num_cpus": 1, "num_gpus": cfg.num_gpus_per_learner, "resources": {}}


def _call_here(fn: Callable, args: tuple) -> tuple[Any, dict]:
    from unmask.rollout.evaluate import placement

    return fn(*args), placement()


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


def final_eval_config(cfg: TrainConfig, policy_dir: Path) -> EvalConfig:
    """The final eval of a run: its policy `policy_dir` on `eval.num_examples` test prompts, on the run's canvas."""
    sampler = SamplerConfig(name="policy", checkpoint=str(policy_dir), policy_temperature=cfg.eval.policy_temperature)
    return EvalConfig(model=cfg.model, task=cfg.task, sampler=sampler, env=cfg.env, num_examples=cfg.eval.num_examples,
                      seed=cfg.seed, progress=False, out_dir=cfg.out_dir, trust_remote_code=cfg.trust_remote_code)


def evaluated_policy(cfg: TrainConfig, collapsed: bool) -> Path:
    """The policy a run hands over: checkpoints/final, or checkpoints/best when a stalled run stopped (its last
    policy stopped learning)."""
    checkpoints = Path(cfg.out_dir) / "checkpoints"
    return checkpoints / "best" if collapsed and (checkpoints / "best").is_dir() else checkpoints / "final"


class FinalEvalOnRunner(Callback):
    """The final eval as the run ends, on one of its live env runners (the learner's own process when it samples
    itself). It writes out_dir/eval.json and eval.examples.jsonl, and puts `final_eval` into the last result: the
    summary, or the error that leaves the eval to `unmask train`'s Ray task."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def on_trial_result(self, iteration, trials, trial, result, **info):
        actor = getattr(getattr(trial, "temporary_state", None), "ray_actor", None)
        if not result.get("done") or self.cfg.eval.num_examples <= 0 or actor is None:
            return
        import ray

        from unmask.rollout.evaluate import write_eval

        collapsed = bool(result.get("unmask", {}).get("collapsed", 0))
        eval_cfg = final_eval_config(self.cfg, evaluated_policy(self.cfg, collapsed))
        runner = "the learner's own env runner" if not self.cfg.num_env_runners else "an env runner"
        print(f"unmask: the run ends after iteration {result['training_iteration']}: evaluating "
              f"{Path(eval_cfg.sampler.checkpoint).name} on {eval_cfg.num_examples} test prompts on {runner}, with "
              "the dLLM it has loaded ...", file=sys.stderr, flush=True)
        try:
            evaluated = ray.get(actor.evaluate_final.remote(eval_cfg, self.cfg.grpo.alpha,
                                                            list(self.cfg.grpo.alpha_range)))
        except Exception as err:  # noqa: BLE001 - the runner could not: unmask train evaluates in a Ray task instead
            lines = str(err).strip().splitlines() or [type(err).__name__]
            result["final_eval"] = {"error": lines[-1]}
            return
        summary = write_eval(eval_cfg, evaluated)
        result["final_eval"] = {"policy": Path(eval_cfg.sampler.checkpoint).name,
                                **{k: summary[k] for k in ("accuracy", "mean_nfe", "num_examples")}}


def final_eval_result(cfg: TrainConfig, metrics: dict, policy: Path) -> dict:
    """The final eval's summary: as FinalEvalOnRunner wrote it, or else (no runner could) from a Ray task with one
    runner's resources, written here."""
    import json

    from unmask.rollout.evaluate import final_eval, write_eval

    done = metrics.get("final_eval", {})
    if done and "error" not in done:
        return json.loads((Path(cfg.out_dir) / "eval.json").read_text())
    if done:
        print(f"unmask train: the final eval on an env runner failed ({done['error']}); evaluating in a Ray task with "
              "one env runner's resources", file=sys.stderr, flush=True)
    else:
        print(f"unmask: evaluating {policy.name} on {cfg.eval.num_examples} test prompts, in a Ray task with one env "
              "runner's resources ...", file=sys.stderr, flush=True)
    eval_cfg = final_eval_config(cfg, policy)
    result, where = on_runner_resources(cfg, final_eval, eval_cfg, cfg.grpo.alpha, list(cfg.grpo.alpha_range))
    result["evaluated_on"] = where
    return write_eval(eval_cfg, result)
