"""Configs of the commands that run on Ray (`unmask train`, `unmask sweep`): plain dataclasses, no heavy imports (the
command line checks them before it loads torch or Ray). UnmaskGRPOConfig (cluster.algorithm_config) carries a run's
config whole, as typed sub-configs: `dllm` (DLLMSettings: model, task, env, seed), `rollout`, `grpo`, `policy`,
`updates` (UpdateSettings) and `run_outputs` (OutputSettings)."""

from __future__ import annotations

import importlib.util
import itertools
from dataclasses import dataclass, field
from typing import Any, ClassVar

from omegaconf import OmegaConf

from unmask.envs.config import DLLMSettings, check_dllm_settings, check_finite
from unmask.envs.files import check_writable
from unmask.envs.structured import narrow, typed
from unmask.learner.config import GRPOConfig, PolicySettings, check_grpo, check_init_from, check_policy
from unmask.rollout.config import RolloutConfig, check_heuristic_grid, check_rollout


@dataclass
class UpdateSettings:
    """How the algorithm feeds and paces its updates, and when it gives up on a run."""

    groups_per_update: int = 8  # prompts (x group_size rollouts) per GRPO update
    max_policy_lag: int = 1  # 0 = on-policy (runners sample after each update); else asynchronous runners
    staleness: str = "pace"  # asynchronous runners: pace (admission pacing + TIS) | drop (groups older than lag)
    pace_ahead: int = 1  # pace: updates' worth of groups the runners may have buffered or in flight beyond the next
    sample_wait_s: float = 1.0  # how long one gather waits for runners before it looks again
    stop_after_skipped: int = 50  # stop when this many updates in a row were skipped (every advantage 0); 0 = never


def check_updates(cfg: UpdateSettings) -> None:
    if cfg.groups_per_update < 1:
        raise ValueError(f"groups_per_update must be >= 1, got {cfg.groups_per_update}")
    if min(cfg.max_policy_lag, cfg.stop_after_skipped) < 0:
        raise ValueError("max_policy_lag and stop_after_skipped must be >= 0")
    if cfg.staleness not in ("pace", "drop"):
        raise ValueError(f"unknown staleness {cfg.staleness!r}: use pace or drop")
    if cfg.pace_ahead < 0:
        raise ValueError(f"pace_ahead must be >= 0, got {cfg.pace_ahead}")
    if not cfg.sample_wait_s > 0 or cfg.sample_wait_s == float("inf"):
        raise ValueError(f"sample_wait_s must be a finite number > 0, got {cfg.sample_wait_s}")


@dataclass
class OutputSettings:
    """What a run writes into its directory."""

    out_dir: str = ""  # trajectory dumps and policy checkpoints; "" = the Tune trial directory, else nowhere
    run_id: str = ""  # the dumps' run_id; "" = the run directory's name
    checkpoint_every: int = 10  # iterations between checkpoints (Tune's and the policy's)
    best_window: int = 10  # iterations in the moving average of training reward that picks checkpoints/best; 0 = off
    validate_every: int = 0  # iterations between validations: then checkpoints/best is the policy with the best
    #                          held-out validation reward at the run's alpha, not the best training average
    validate_examples: int = 200  # training prompts held out of every runner's pool for validation
    dump_trajectories: bool = True  # Parquet dumps under out_dir/trajectories
    # [wandb], [mlflow] or both: each iteration's metrics logged there too, through Tune's own callbacks (W&B: its
    # project tracking_project, offline with WANDB_MODE=offline; MLflow: MLFLOW_TRACKING_URI, else out_dir/mlruns)
    tracking: list[str] = field(default_factory=list)
    tracking_project: str = "unmask"  # the W&B project / MLflow experiment the runs are logged under


TRACKERS = {"wandb": "wandb", "mlflow": "mlflow"}  # tracking name -> the module it needs (pip install 'unmask[...]')


def check_outputs(cfg: OutputSettings) -> None:
    if min(cfg.checkpoint_every, cfg.best_window, cfg.validate_every) < 0 or cfg.validate_examples < 1:
        raise ValueError("checkpoint_every, best_window and validate_every must be >= 0, validate_examples >= 1")
    for name in cfg.tracking:
        if name not in TRACKERS:
            raise ValueError(f"unknown tracking {name!r}: use {' or '.join(TRACKERS)} (a list: "
                             "tracking=[wandb,mlflow])")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ValueError(f"tracking={name} needs the {TRACKERS[name]} package: pip install 'unmask[{name}]'")
    if len(set(cfg.tracking)) != len(cfg.tracking) or not cfg.tracking_project:
        raise ValueError("tracking names each tracker once, and tracking_project must not be empty")


@dataclass
class FinalEvalConfig:
    """The final policy on the task's test split, written to out_dir/eval.json (by an env runner, on its device)."""

    num_examples: int = 500  # 0 = skip
    policy_temperature: float = 1.0  # tau_pi at evaluation (paper: 0.5 semi-AR, 1.0 full diffusion)


# GRPO from a saved policy (init_from, e.g. `unmask imitate`'s) by default: the keys of the recipe measured in
# docs/results/frontier.md, for those a command line or config file leaves unset. A clone starts on the heuristics'
# frontier and is deterministic: without a bound on its training draws every group decodes identically (no gradient);
# the paper's lr (3e-5, for its initialisation) leaves it where it is in minutes; 16 prompts per update (the paper's
# 8 GPUs x 16 rollouts) average out one advantage per trajectory; held-out validation picks the policy a run hands
# over. From the paper's initialisation every key keeps the paper's value.
FROM_POLICY = {"grpo.lr": 1e-4, "grpo.logit_bound": 3.0, "groups_per_update": 16, "validate_every": 10}

# deprecated spellings of train and sweep (cli.parse maps them, with a one-line notice naming the new key)
TRAIN_RENAMED = {"rollout.model": "model", "rollout.task": "task", "rollout.env": "env", "rollout.seed": "seed",
                 "rollout.trust_remote_code": "trust_remote_code", "rollout.batch_rows": "env.batch_size",
                 "grpo.policy": "policy", "grpo.init_policy": "init_from", "run_dir": "out_dir"}


@dataclass
class TrainConfig(OutputSettings, UpdateSettings, PolicySettings, DLLMSettings):
    """`unmask train`: the dLLM, task and canvas (DLLMSettings), the policy (PolicySettings), and UpdateSettings' and
    OutputSettings' keys at the top level, beside these."""

    renamed: ClassVar[dict[str, str]] = TRAIN_RENAMED

    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    out_dir: str = "runs/train"  # config.yaml, tune/, trajectories/, checkpoints/, eval.json (cluster.train)
    max_iterations: int = 200  # one iteration = one GRPO update
    max_minutes: float = 0.0  # wall-clock budget of the training loop (Tune's time_total_s, start-up not counted);
    #                           0 = none: the run ends at max_iterations, a stop rule, or when you stop it
    ray_address: str = ""  # "" = start a local Ray; "auto" or host:port = join a cluster
    num_env_runners: int = 1  # 0 = sample in the learner's process
    num_cpus_per_env_runner: float = 1.0  # Ray CPUs each env runner reserves
    num_gpus_per_env_runner: float = 0.0  # > 0: the runner's dLLM lives on that GPU
    custom_resources_per_env_runner: dict[str, float] = field(default_factory=dict)  # e.g. {a100: 1}
    num_gpus_per_learner: float = 0.0  # > 0: the learner (the ~300K-parameter policy) trains on a GPU
    max_runner_restarts: int = 3  # an env runner's failure (a crash, an error in its sample) is retried this many
    #                               times; the next stops the run with its cause
    wait_for_resources: bool = False  # start even when Ray has fewer resources than the run needs (an autoscaling
    #                                   cluster); false: that is a one-line error before the run starts
    eval: FinalEvalConfig = field(default_factory=FinalEvalConfig)
    resume: str = ""  # a run directory: continue that run from its last checkpoint, with its saved config
    resume_unverified: bool = False  # resume a run dir whose pickled state does not match its seal (trust it!)

    def start_defaults(self, given: set[str]) -> None:
        """From a saved policy, FROM_POLICY's value for each of its keys not in `given` (the keys set by hand), and a
        `policy.*` key given that contradicts the saved policy refused. The command line calls it; a config built in
        Python may too."""
        if not self.init_from:
            return
        for key, value in FROM_POLICY.items():
            if key not in given:
                owner, name = self._owner(key)
                setattr(owner, name, type(getattr(owner, name))(value))
        check_init_from(self.init_from, self.policy, self.grpo.alpha_range, self.env.gen_length, self.env.kv_cache,
                        given={k for k in given if k.startswith("policy.")})

    def from_policy_keys(self) -> str:
        """FROM_POLICY's keys as this run has them (said at the start of a run from a saved policy)."""
        return " ".join(f"{key}={getattr(*self._owner(key)):g}" for key in FROM_POLICY)

    def _owner(self, key: str) -> tuple[Any, str]:
        """The config holding a dotted key of FROM_POLICY (`grpo.lr`: self.grpo) and the field's name there."""
        section, _, name = key.rpartition(".")
        return (getattr(self, section) if section else self), name


def check_train(cfg: TrainConfig) -> None:
    check_finite(cfg)
    check_dllm_settings(cfg)
    check_rollout(cfg.rollout, cfg.env.gen_length)
    check_policy(cfg.policy)
    check_grpo(cfg.grpo)
    check_updates(cfg)
    check_outputs(cfg)
    if cfg.max_iterations < 1 or cfg.max_minutes < 0:
        raise ValueError("max_iterations must be >= 1 and max_minutes >= 0 (0 = no time budget)")
    if cfg.num_env_runners < 0 or cfg.eval.num_examples < 0 or cfg.max_runner_restarts < 0:
        raise ValueError("num_env_runners, eval.num_examples and max_runner_restarts must be >= 0")
    if cfg.eval.policy_temperature <= 0:
        raise ValueError(f"eval.policy_temperature must be > 0, got {cfg.eval.policy_temperature}")
    if cfg.grpo.anchor_coef and not cfg.init_from:
        raise ValueError("grpo.anchor_coef anchors to init_from: give one")
    check_init_from(cfg.init_from, cfg.policy, cfg.grpo.alpha_range, cfg.env.gen_length, cfg.env.kv_cache)
    check_placement(cfg)
    check_writable(cfg.resume or cfg.out_dir, "out_dir", directory=True)


def check_placement(cfg: TrainConfig) -> None:
    """Where the dLLM can run: a GPU only where Ray gives the process holding it one (each env runner, or the
    learner's process when it samples itself)."""
    gpus, who = ((cfg.num_gpus_per_env_runner, "num_gpus_per_env_runner") if cfg.num_env_runners else
                 (cfg.num_gpus_per_learner, "num_gpus_per_learner (num_env_runners=0: the learner's process samples)"))
    if cfg.env.device.startswith("cuda") and not gpus:
        raise ValueError(f"env.device={cfg.env.device} needs {who} > 0: Ray gives a process its GPU")
    if cfg.env.device == "cpu" and gpus and not cfg.env.emulate_gpu:
        raise ValueError(f"env.device=cpu with {who}={gpus:g}: the GPU would sit idle (env.device=auto uses it)")


SWEEPABLE = ("grpo.", "rollout.", "env.", "task.", "seed", "model")
NOT_SWEEPABLE = ("grpo.grad_clip", "env.gen_length")  # they shape the module and its spaces


@dataclass
class SweepConfig(TrainConfig):
    """`unmask sweep`: a Tune grid of train runs, then a Pareto report of every trained policy beside the heuristics."""

    renamed: ClassVar[dict[str, str]] = {**TRAIN_RENAMED, "report_grid": "heuristic_grid",
                                         "report_block_lengths": "block_lengths"}

    out_dir: str = "runs/sweep"  # config.yaml, tune/ (a trial directory per grid point), trials.*, pareto.*
    # grid.<train key>=[values]: one trial per combination. A key given on the command line adds an axis
    # (or replaces that key's values); the default axis is the reward trade-off alpha.
    grid: dict[str, Any] = field(default_factory=lambda: {"grpo": {"alpha": [0.5, 1.0, 2.0]}})
    max_concurrent_trials: int = 1  # trials running at once; each takes 1 CPU + its env runners' resources
    block_lengths: list[int] = field(default_factory=lambda: [8])  # the report's semi-AR panels (+ full diffusion and
    #                                                                the trained block lengths)
    heuristic_grid: str = "small"  # the report's heuristics: small | default (rollout.pareto.default_grid)


def check_sweep(cfg: SweepConfig) -> None:
    check_train(cfg)
    if cfg.eval.num_examples < 1 or cfg.max_concurrent_trials < 1:
        raise ValueError("a sweep needs eval.num_examples >= 1 (its report) and max_concurrent_trials >= 1")
    check_heuristic_grid(cfg.heuristic_grid)
    if any(bl < 1 or cfg.env.gen_length % bl for bl in cfg.block_lengths):
        raise ValueError(f"block_lengths {list(cfg.block_lengths)} must each divide env.gen_length="
                         f"{cfg.env.gen_length}")


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
                raise ValueError(f"grid.{path}: a sweep varies grpo.*, rollout.*, env.*, task.*, seed and model (not "
                                 "grpo.grad_clip or env.gen_length, which shape the policy)")
            else:
                axes[path] = value

    walk(grid, "")
    if not axes:
        raise ValueError("the sweep grid is empty: give grid.<key>=[values], e.g. grid.grpo.alpha=[0.5,1,2]")
    return axes


def grid_points(cfg: SweepConfig, axes: dict[str, list]) -> list[TrainConfig]:
    """Every grid point as a checked TrainConfig: a bad key or value fails here, before any trial starts."""
    base = narrow(cfg, TrainConfig)
    out = []
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values))
        try:
            data = OmegaConf.structured(base)
            OmegaConf.set_struct(data, True)
            for key, value in point.items():
                OmegaConf.update(data, key, value, merge=True)
            out.append(typed(TrainConfig, data))
            check_train(out[-1])
        except Exception as err:  # noqa: BLE001 - any bad point is the same one-line error, naming the point
            raise ValueError(f"grid point {point}: {str(err).splitlines()[0]}") from None
    return out
