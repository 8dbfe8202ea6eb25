"""Configs of the commands that run on Ray (`unmask train`, `unmask sweep`) and the command-line parser.

Every config is an OmegaConf structured dataclass, overridden by `key=value` (dotlist) arguments:
- unknown keys and values of the wrong type are errors (struct mode);
- `sampler=NAME` / `task=NAME` are shorthands for `sampler.name=NAME` / `task.name=NAME`;
- a `sampler.<param>` that the chosen sampler does not read is an error, so a typo cannot be ignored;
- a key a command does not use (its schema's `unused_keys`) is an error;
- `config=<file.yaml>` starts from a saved config (every run saves its own), the other keys apply on top.
No heavy imports: a command checks its whole configuration before it loads torch, transformers or Ray.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from envs.config import SAMPLER_PARAMS, check_finite
from envs.files import check_writable
from learner.config import GRPOConfig, check_grpo
from rollout.config import RolloutConfig, check_rollout

NAMED_NODES = ("sampler", "task")


class ConfigError(ValueError):
    """A bad command line; the message is one line."""


# ---- the configs --------------------------------------------------------------------------------------
@dataclass
class AlgorithmSettings:
    """What the UnmaskGRPO algorithm reads besides the rollout and GRPO configs: the typed attributes of
    UnmaskGRPOConfig and the top-level keys of `unmask train` (one definition of the defaults for both)."""

    groups_per_update: int = 8  # prompts (x group_size rollouts) per GRPO update
    max_policy_lag: int = 1  # 0 = on-policy (runners sample after each update); else asynchronous runners
    staleness: str = "pace"  # asynchronous runners: pace (admission pacing + TIS) | drop (groups older than lag)
    pace_ahead: int = 1  # pace: updates' worth of groups the runners may have buffered or in flight beyond the next
    sample_wait_s: float = 1.0  # how long one gather waits for runners before it looks again
    checkpoint_every: int = 10  # iterations between checkpoints (Tune's and the policy's)
    best_window: int = 10  # iterations in the moving average of training reward that picks checkpoints/best; 0 = off
    stop_after_skipped: int = 50  # stop when this many updates in a row were skipped (every advantage 0); 0 = never
    dump_trajectories: bool = True  # Parquet dumps under run_dir/trajectories


def check_algorithm_settings(cfg: Any) -> None:
    if cfg.groups_per_update < 1:
        raise ValueError(f"groups_per_update must be >= 1, got {cfg.groups_per_update}")
    if min(cfg.max_policy_lag, cfg.checkpoint_every, cfg.best_window, cfg.stop_after_skipped) < 0:
        raise ValueError("max_policy_lag, checkpoint_every, best_window and stop_after_skipped must be >= 0")
    if cfg.staleness not in ("pace", "drop"):
        raise ValueError(f"unknown staleness {cfg.staleness!r}: use pace or drop")
    if cfg.pace_ahead < 0:
        raise ValueError(f"pace_ahead must be >= 0, got {cfg.pace_ahead}")
    if not cfg.sample_wait_s > 0 or cfg.sample_wait_s == float("inf"):
        raise ValueError(f"sample_wait_s must be a finite number > 0, got {cfg.sample_wait_s}")


@dataclass
class FinalEvalConfig:
    """The final policy on the task's test split, written to run_dir/eval.json."""

    num_examples: int = 500  # 0 = skip
    policy_temperature: float = 1.0  # tau_pi at evaluation (paper: 0.5 semi-AR, 1.0 full diffusion)


@dataclass
class TrainConfig(AlgorithmSettings):
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    run_dir: str = "runs/train"
    max_iterations: int = 200  # one iteration = one GRPO update
    max_minutes: float = 30.0  # wall-clock budget of the training loop
    ray_address: str = ""  # "" = start a local Ray; "auto" or host:port = join a cluster
    num_env_runners: int = 1  # 0 = sample in the learner's process
    num_cpus_per_env_runner: float = 1.0
    num_gpus_per_env_runner: float = 0.0  # > 0: the runner's dLLM lives on that GPU
    custom_resources_per_env_runner: dict[str, float] = field(default_factory=dict)  # e.g. {a100: 1}
    num_gpus_per_learner: float = 0.0
    eval: FinalEvalConfig = field(default_factory=FinalEvalConfig)
    resume: str = ""  # a run directory: continue that run from its last checkpoint, with its saved config
    resume_unverified: bool = False  # resume a run dir whose pickled state does not match its seal (trust it!)


def check_train(cfg: TrainConfig) -> None:
    check_finite(cfg)
    check_rollout(cfg.rollout)
    check_grpo(cfg.grpo)
    check_algorithm_settings(cfg)
    if cfg.max_iterations < 1 or cfg.max_minutes <= 0:
        raise ValueError("max_iterations must be >= 1 and max_minutes > 0")
    if cfg.num_env_runners < 0 or cfg.eval.num_examples < 0:
        raise ValueError("num_env_runners and eval.num_examples must be >= 0")
    if cfg.eval.policy_temperature <= 0:
        raise ValueError(f"eval.policy_temperature must be > 0, got {cfg.eval.policy_temperature}")
    check_writable(cfg.resume or cfg.run_dir, "run_dir", directory=True)


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


def check_sweep(cfg: SweepConfig) -> None:
    check_train(cfg)
    if cfg.eval.num_examples < 1 or cfg.max_concurrent_trials < 1:
        raise ValueError("a sweep needs eval.num_examples >= 1 (its report) and max_concurrent_trials >= 1")
    if cfg.report_grid not in ("small", "default"):
        raise ValueError(f"unknown report_grid {cfg.report_grid!r}: use small or default")


README_MARKERS = ("<!-- findings:start -->", "<!-- findings:end -->")  # `unmask reproduce readme=` writes there


@dataclass
class ReproduceConfig:
    """`unmask reproduce`: the paper's findings in miniature (cluster.reproduce). The default budget: about an hour
    on a 2-core CPU (8 trainings of `train_minutes`, the second dLLM, ~130 evaluations); `preset=quick` is a smoke
    run of a few minutes."""

    out_dir: str = "runs/reproduce"
    preset: str = "default"  # default | quick: a smoke run (a few iterations, a few prompts; what the tests use)
    train_minutes: float = 5.0  # wall budget of each training run
    max_iterations: int = 100_000  # of each training run (quick: 3)
    pretrain_minutes: float = 5.0  # the second dLLM (cycles + the out-of-domain `map` family)
    num_examples: int = 500  # test prompts per evaluation (quick: 12)
    train_seeds: list[int] = field(default_factory=lambda: [0, 1])
    test_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    alpha: float = 1.0  # every policy's trade-off (the paper's additive-reward ablation is at 1)
    lr: float = 2e-4
    block_length: int = 8  # semi-AR
    gen_length: int = 24
    long_gen_length: int = 32  # finding 5: the second dLLM's canvas, longer than the policies were trained at
    readme: str = ""  # a README holding the findings markers: findings.md is written between them
    progress: bool = True


QUICK_REPRODUCE = {"train_minutes": 1.0, "max_iterations": 3, "pretrain_minutes": 0.05, "num_examples": 12,
                   "test_seeds": [0, 1]}


def check_reproduce(cfg: ReproduceConfig) -> None:
    if cfg.preset not in ("default", "quick"):
        raise ValueError(f"unknown preset {cfg.preset!r}: use default or quick")
    if min(cfg.train_minutes, cfg.pretrain_minutes) <= 0 or cfg.num_examples < 1 or cfg.max_iterations < 1:
        raise ValueError("train_minutes and pretrain_minutes must be > 0, num_examples and max_iterations >= 1")
    if not cfg.train_seeds or not cfg.test_seeds:
        raise ValueError("train_seeds and test_seeds must each hold at least one seed")
    if cfg.gen_length % cfg.block_length or cfg.long_gen_length <= cfg.gen_length:
        raise ValueError(f"block_length must divide gen_length ({cfg.gen_length}) and long_gen_length must exceed it")
    readme = Path(cfg.readme)
    if cfg.readme and not (readme.is_file() and all(m in readme.read_text() for m in README_MARKERS)):
        raise ValueError(f"readme={cfg.readme} is not a file holding the markers {' and '.join(README_MARKERS)}")


def resolved(cfg: ReproduceConfig) -> ReproduceConfig:
    """The preset's budgets under the keys given (quick changes only what the command line left at its default)."""
    if cfg.preset != "quick":
        return cfg
    defaults = ReproduceConfig()
    return dataclasses.replace(cfg, **{k: v for k, v in QUICK_REPRODUCE.items()
                                       if getattr(cfg, k) == getattr(defaults, k)})


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


def grid_points(cfg: SweepConfig, axes: dict[str, list]) -> list[TrainConfig]:
    """Every grid point as a checked TrainConfig: a bad value fails here, before any trial starts."""
    import itertools

    base = train_part(cfg)
    out = []
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values))
        try:
            out.append(parse(TrainConfig, [f"{k}={v}" for k, v in point.items()], "sweep", base=base))
            check_train(out[-1])
        except ValueError as err:
            raise ValueError(f"grid point {point}: {err}") from None
    return out


def train_part(cfg: SweepConfig) -> TrainConfig:
    """The TrainConfig every trial of the sweep starts from."""
    return TrainConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)})


# ---- parsing -----------------------------------------------------------------------------------------
def parse(schema: type, args: list[str], command: str, base: Any = None) -> Any:
    """The dataclass instance for `schema` with `args` (key=value) applied, over `base` (a saved config or
    a dataclass instance) when given."""
    dotlist = []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"expected key=value, got {arg!r} (see: unmask {command} --help)")
        key, value = arg.split("=", 1)
        if key in NAMED_NODES and dataclasses.is_dataclass(_field_default(schema, key)):
            key = f"{key}.name"
        earlier = next((d.split("=", 1)[1] for d in dotlist if d.split("=", 1)[0] == key), None)
        if earlier is not None and earlier != value:
            raise ConfigError(f"{key} is given twice ({earlier} and {value}): give it once")
        dotlist.append(f"{key}={value}")
    structured = OmegaConf.structured(schema)
    OmegaConf.set_struct(structured, True)
    for key in structured.keys():  # plain dict fields (a sweep's grid) take new keys; dataclass nodes do not
        node = structured._get_node(key)
        if isinstance(node, DictConfig) and node._metadata.object_type in (None, dict):
            OmegaConf.set_struct(node, False)
    try:
        if base is not None:
            structured = OmegaConf.merge(structured, base)
        cfg = OmegaConf.to_object(OmegaConf.merge(structured, OmegaConf.from_dotlist(dotlist)))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = str(err).splitlines()[0]
        if "not in struct" in msg or "Key" in msg and "not" in msg:
            raise ConfigError(f"unknown key {key!r} for 'unmask {command}' (see: unmask {command} --help)") from None
        raise ConfigError(f"bad value for {key!r}: {msg}") from None
    keys = [d.split("=", 1)[0] for d in dotlist]
    _check_unused_keys(schema, keys, command)
    _check_sampler_params(cfg, keys)
    return cfg


def _field_default(schema: type, name: str):
    for f in dataclasses.fields(schema):
        if f.name == name:
            return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return None


def _check_unused_keys(schema: type, keys: list[str], command: str) -> None:
    for key in keys:
        hint = getattr(schema, "unused_keys", {}).get(key)
        if hint:
            raise ConfigError(f"{key} is not used by 'unmask {command}': {hint}")


def _check_sampler_params(cfg: Any, keys: list[str]) -> None:
    sampler = getattr(cfg, "sampler", None)
    if sampler is None or not hasattr(sampler, "name"):
        return
    if sampler.name not in SAMPLER_PARAMS:
        raise ConfigError(f"unknown sampler {sampler.name!r}: choose one of {', '.join(sorted(SAMPLER_PARAMS))}")
    allowed = SAMPLER_PARAMS[sampler.name]
    for key in keys:
        if key.startswith("sampler.") and key != "sampler.name" and key.split(".", 1)[1] not in allowed:
            raise ConfigError(f"{key} does not apply to sampler {sampler.name!r} "
                              f"(its parameters: {', '.join(allowed) or 'none'})")


def flatten_defaults(schema: type) -> list[tuple[str, Any]]:
    """Every key of `schema` with its default, for --help (a plain dict field is one key, shown whole)."""
    def walk(node: DictConfig, prefix: str):
        for key in node.keys():
            value = node._get_node(key)
            if isinstance(value, DictConfig) and value._metadata.object_type not in (None, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", OmegaConf.to_container(node, resolve=True)[key]
    return list(walk(OmegaConf.structured(schema), ""))


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def load_yaml(path: str | Path, what: str) -> DictConfig:
    """A saved config file; a missing or unreadable one is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what}: no config file at {path}")
    try:
        return OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - any unreadable YAML is the same one-line error
        raise ConfigError(f"{what}: {path} is unreadable ({str(err).splitlines()[0]})") from None


# ---- resuming ----------------------------------------------------------------------------------------
def resume_config(schema: type, args: list[str], command: str) -> Any:
    """`resume=<run dir>` [key=value ...]: the config saved in that directory with the keys applied on top;
    `cluster.rundir.claim_run_dir` then checks that they agree with it."""
    cfg = parse(schema, args, command)
    run_dir = Path(cfg.resume).resolve()
    saved = load_yaml(run_dir / "config.yaml", f"resume={cfg.resume}: no run to resume there (config.yaml)")
    others = [a for a in args if not a.startswith("resume=")]
    resumed = parse(schema, others, command, base=saved)
    resumed.resume, resumed.run_dir = str(run_dir), str(run_dir)
    return resumed
