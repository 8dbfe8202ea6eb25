"""`unmask <command> key=value ...`: the project's entry point."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cluster.configs import ConfigError, flatten_defaults, parse, resume_config, to_dict, to_yaml
from cluster.report import markdown_table, write_pareto
from cluster.sweep import SweepConfig
from cluster.train import TrainConfig
from envs.config import PretrainConfig
from envs.dllm import ModelLoadError
from envs.files import write_atomic, write_json
from envs.samplers import SAMPLERS
from learner import sampler as _policy_sampler  # noqa: F401  registers sampler=policy
from rollout.evaluate import EvalConfig, evaluate
from rollout.pareto import ParetoConfig, run_pareto


@dataclass
class Command:
    schema: type
    run: Callable
    summary: str


def cmd_eval(cfg: EvalConfig) -> int:
    result = evaluate(cfg)
    result["config"] = to_dict(cfg)
    write_json(Path(cfg.out), result)
    rows = [{"metric": k, "value": result[k]} for k in
            ("accuracy", "mean_nfe", "tokens_per_step", "shorter_than_reference", "still_masked", "wall_seconds",
             "num_examples")]
    print(f"{result['sampler']}  (L={cfg.env.gen_length}, BL={cfg.env.block_length})")
    print(markdown_table(rows, ["metric", "value"]), end="")
    print(f"wrote {cfg.out}")
    return 0


def cmd_pareto(cfg: ParetoConfig) -> int:
    rows = run_pareto(cfg)
    out = Path(cfg.out_dir)
    table = write_pareto(rows, out, cfg, title=f"{cfg.task.name}, L={cfg.env.gen_length}, {cfg.model}")
    write_atomic(out / "config.yaml", to_yaml(cfg))
    print(table, end="")
    print(f"wrote {out}/pareto.json, pareto.md, pareto.png")
    return 0


def cmd_pretrain(cfg: PretrainConfig) -> int:
    from envs.pretrain import pretrain

    summary = pretrain(cfg)
    print(f"saved {cfg.out} after {summary['steps']} steps ({summary['seconds']} s), "
          f"loss {summary['final_loss_ema']:.4f}")
    return 0


def cmd_train(cfg: TrainConfig) -> int:
    from cluster.train import Interrupted, train

    try:
        result = train(cfg)
    except Interrupted as stop:
        print(f"unmask train: {stop}", file=sys.stderr)
        return 130
    if "accuracy" in result:
        print(f"final policy: accuracy {result['accuracy']:.3f} at mean NFE {result['mean_nfe']:.2f} "
              f"({result['num_examples']} test prompts)")
    print(f"wrote {cfg.run_dir}")
    return 0


def cmd_sweep(cfg: SweepConfig) -> int:
    from cluster.sweep import sweep

    result = sweep(cfg)
    trials = result["trials"]
    failed = [t for t in trials if t["status"] != "finished"]
    print(f"{len(trials) - len(failed)} of {len(trials)} trials finished")
    for t in failed:
        print(f"FAILED {t['trial']}: {t['error']}")
    print((Path(cfg.run_dir) / "pareto.md").read_text(), end="")
    print(f"wrote {cfg.run_dir}/trials.md, pareto.md, pareto.png")
    return 1 if failed else 0


COMMANDS: dict[str, Command] = {
    "eval": Command(EvalConfig, cmd_eval, "evaluate one sampler on a task; writes JSON"),
    "pareto": Command(ParetoConfig, cmd_pareto, "heuristic grid, semi-AR and full diffusion: table + PNG"),
    "pretrain": Command(PretrainConfig, cmd_pretrain, "train a small dLLM on a task (masked diffusion)"),
    "train": Command(TrainConfig, cmd_train, "train the unmasking policy with GRPO on Ray (Tune)"),
    "sweep": Command(SweepConfig, cmd_sweep, "Tune grid of GRPO runs (default: over alpha) + Pareto report"),
}


def usage() -> str:
    lines = ["usage: unmask <command> [key=value ...]", "", "commands:"]
    lines += [f"  {name:<10} {c.summary}" for name, c in COMMANDS.items()]
    lines += ["", "unmask <command> --help lists every key with its default."]
    return "\n".join(lines)


def command_help(name: str) -> str:
    lines = [f"usage: unmask {name} [key=value ...]", "", COMMANDS[name].summary, "", "keys (default):"]
    lines += [f"  {key} = {value!r}" for key, value in flatten_defaults(COMMANDS[name].schema)]
    if any(k.startswith("sampler.") for k, _ in flatten_defaults(COMMANDS[name].schema)):
        lines += ["", "samplers (sampler=NAME) and the sampler.<param> keys each one reads:"]
        lines += [f"  {s:<17} {', '.join(cls.params) or '-'}" for s, cls in sorted(SAMPLERS.items())]
    return "\n".join(lines)


def quiet_libraries() -> None:
    """Our own progress bars and tables are the output; transformers' weight-loading bars are noise."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, args = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unmask: error: unknown command {name!r} (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    if "-h" in args or "--help" in args:
        print(command_help(name))
        return 0
    quiet_libraries()
    try:
        if any(arg.startswith("resume=") and arg != "resume=" for arg in args):
            cfg = resume_config(COMMANDS[name].schema, args, name)
        else:
            cfg = parse(COMMANDS[name].schema, args, name)
        return COMMANDS[name].run(cfg)
    except KeyboardInterrupt:
        print(f"unmask {name}: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, ModelLoadError, ValueError, OSError, RuntimeError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"unmask {name}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
