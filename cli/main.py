"""`unmask <command> key=value ...`: the project's entry point.

Only the configs are imported up front, so `--help`, `--print-config` and a bad key answer at once; each command
imports what it runs (torch, transformers, Ray) itself, and `eval`, `pareto` and `pretrain` never import Ray.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unmask.cli.parse import ConfigError, keys_help, merged_files, parse, resume_config
from unmask.cluster.config import SweepConfig, TrainConfig, check_sweep, check_train, grid_axes, grid_points
from unmask.envs.config import SAMPLER_PARAMS, DLLMSettings
from unmask.envs.files import Interrupted, sigterm_as_interrupt
from unmask.envs.pretrain.config import PretrainConfig, check_pretrain
from unmask.envs.structured import to_yaml
from unmask.experiments.config import (
    FrontierConfig,
    LimitConfig,
    OwnTasksConfig,
    ProbeConfig,
    ReproduceConfig,
    check_frontier,
    check_limit,
    check_own_tasks,
    check_probe,
    check_reproduce,
)
from unmask.rollout.config import EvalConfig, ImitateConfig, ParetoConfig, check_eval, check_imitate, check_pareto

FLAGS = {"--help": "every key with its default and description", "--print-config": "resolve and check the whole "
         "config, print it as YAML and exit without work", "--plan": "the memory plan of the config (weights, rows per "
         "forward) without loading weights or starting Ray", "--debug": "full tracebacks instead of one-line errors"}


@dataclass
class Command:
    schema: type
    check: Callable  # every setting, before the command imports anything heavy
    run: Callable
    summary: str
    experiment: bool = False  # listed apart: the experiments behind docs/results


def cmd_eval(cfg: EvalConfig) -> int:
    from unmask.rollout.evaluate import evaluate, write_eval
    from unmask.rollout.report import markdown_table

    result = write_eval(cfg, evaluate(cfg))
    rows = [{"metric": k, "value": result[k]} for k in
            ("accuracy", "mean_nfe", "tokens_per_step", "shorter_than_reference", "still_masked", "wall_seconds",
             "num_examples", "fallback_share") if k in result]  # fallback_share: a policy's
    print(f"{result['sampler']}  (L={cfg.env.gen_length}, BL={cfg.env.block_length})")
    print(markdown_table(rows, ["metric", "value"]), end="")
    if cfg.group_by:
        columns = [cfg.group_by, "num_examples", "accuracy", "mean_nfe", "shorter_than_reference"]
        print(markdown_table(result["groups"], columns), end="")
    print(f"wrote {Path(cfg.out_dir) / 'eval.json'} and eval.examples.jsonl beside it")
    return 0


def cmd_pareto(cfg: ParetoConfig) -> int:
    from unmask.envs.files import write_atomic
    from unmask.rollout.pareto import run_pareto
    from unmask.rollout.report import write_pareto

    rows = run_pareto(cfg)
    out = Path(cfg.out_dir)
    table = write_pareto(rows, out, cfg, title=f"{cfg.task.name}, L={cfg.env.gen_length}, {cfg.model}")
    write_atomic(out / "config.yaml", to_yaml(cfg))
    print(table, end="")
    print(f"wrote {out}/pareto.json, pareto.md, pareto.png")
    return 0


def cmd_pretrain(cfg: PretrainConfig) -> int:
    from unmask.envs.pretrain.train import pretrain

    summary = pretrain(cfg)
    print(f"saved {cfg.out_dir} after {summary['steps']} steps ({summary['seconds']} s), "
          f"loss {summary['final_loss_ema']:.4f}")
    return 0


def cmd_imitate(cfg: ImitateConfig) -> int:
    from unmask.rollout.imitation import imitate
    from unmask.rollout.report import markdown_table

    summary = imitate(cfg)
    print(f"saved {cfg.out_dir} ({summary['rounds'][-1]['total_states']} states, {len(summary['rounds'])} rounds, "
          f"{summary['seconds']} s)")
    if summary.get("eval"):
        print(markdown_table(summary["eval"], ["who", "sampler", "accuracy", "mean_nfe"]), end="")
    return 0


def say_from_policy(cfg: TrainConfig, command: str) -> None:
    """A run from a saved policy takes its own defaults for a few keys (cluster.config.FROM_POLICY): say which."""
    if cfg.init_from and not cfg.resume:
        print(f"unmask {command}: from a saved policy: {cfg.from_policy_keys()} (FROM_POLICY's defaults for the keys "
              f"not given)", file=sys.stderr, flush=True)


def cmd_train(cfg: TrainConfig) -> int:
    from unmask.cluster.train import train

    say_from_policy(cfg, "train")
    result = train(cfg)
    if cfg.eval.num_examples > 0:  # else the result is the last iteration's metrics
        print(f"final policy: accuracy {result['accuracy']:.3f} at mean NFE {result['mean_nfe']:.2f} "
              f"({result['num_examples']} test prompts; the argmax fallback decided "
              f"{result['fallback_share']:.0%} of the steps)")
    print(f"wrote {cfg.resume or cfg.out_dir}")
    return 0


def cmd_sweep(cfg: SweepConfig) -> int:
    from unmask.cluster.sweep import sweep

    say_from_policy(cfg, "sweep")
    result = sweep(cfg)
    trials = result["trials"]
    failed = [t for t in trials if t["status"] != "finished"]
    run_dir = Path(cfg.resume or cfg.out_dir)
    print(f"{len(trials) - len(failed)} of {len(trials)} trials finished")
    for t in failed:
        print(f"FAILED {t['trial']}: {t['error']}" + (f" (traceback: {t['traceback']})" if t.get("traceback") else ""))
    print((run_dir / "pareto.md").read_text(), end="")
    print(f"wrote {run_dir}/trials.md, pareto.md, pareto.png")
    return 1 if failed else 0


def cmd_reproduce(cfg: ReproduceConfig) -> int:
    from unmask.experiments.reproduce import reproduce

    report = reproduce(cfg)
    out = Path(cfg.out_dir)
    print((out / "findings.md").read_text(), end="")
    held = sum(bool(f["holds"]) for f in report["findings"])
    also = f", and {cfg.readme}" if cfg.readme else ""
    print(f"{held} of {len(report['findings'])} findings hold here; wrote {out}/findings.md, .json, plots{also}")
    return 0


def cmd_frontier(cfg: FrontierConfig) -> int:
    from unmask.experiments.frontier import frontier

    frontier(cfg)
    return 0


def cmd_limit(cfg: LimitConfig) -> int:
    from unmask.experiments.limit import limit

    limit(cfg)
    return 0


def cmd_probe(cfg: ProbeConfig) -> int:
    from unmask.experiments.finality_probe import probe

    probe(cfg)
    print(f"wrote {Path(cfg.out_dir) / 'probe.json'}")
    return 0


def cmd_own_tasks(cfg: OwnTasksConfig) -> int:
    from unmask.experiments.own_tasks import write

    for path in write(cfg.family, cfg.out_dir, cfg.train_examples, cfg.test_examples, cfg.seed):
        print(f"wrote {path}")
    return 0


def check_sweep_grid(cfg: SweepConfig) -> None:
    check_sweep(cfg)
    grid_points(cfg, grid_axes(cfg.grid))


COMMANDS: dict[str, Command] = {
    "eval": Command(EvalConfig, check_eval, cmd_eval, "evaluate one sampler on a task; writes JSON"),
    "pareto": Command(ParetoConfig, check_pareto, cmd_pareto,
                      "heuristic grid, semi-AR and full diffusion: table + PNG"),
    "pretrain": Command(PretrainConfig, check_pretrain, cmd_pretrain,
                        "train a small dLLM on a task (masked diffusion)"),
    "imitate": Command(ImitateConfig, check_imitate, cmd_imitate,
                       "clone a heuristic's decisions into a policy (a start for GRPO: train init_from=)"),
    "train": Command(TrainConfig, check_train, cmd_train, "train the unmasking policy with GRPO on Ray (Tune)"),
    "sweep": Command(SweepConfig, check_sweep_grid, cmd_sweep,
                     "Tune grid of GRPO runs (default: over alpha) + Pareto report"),
    "reproduce": Command(ReproduceConfig, check_reproduce, cmd_reproduce,
                         "the paper's findings in miniature, resumably: findings.md, .json and plots", experiment=True),
    "frontier": Command(FrontierConfig, check_frontier, cmd_frontier,
                        "the learned policies' frontier on the built-in model (docs/results/frontier.*)",
                        experiment=True),
    "own-tasks": Command(OwnTasksConfig, check_own_tasks, cmd_own_tasks,
                         "write a task family of our own as JSONL (the outside-task check)", experiment=True),
    "limit": Command(LimitConfig, check_limit, cmd_limit,
                     "toward the oracle: hidden-state clones, the oracle as teacher, teachers=[auto], GRPO from each",
                     experiment=True),
    "finality-probe": Command(ProbeConfig, check_probe, cmd_probe,
                              "how well each policy input tells a prediction is already final (the oracle's rule)",
                              experiment=True),
}


def usage() -> str:
    lines = ["usage: unmask <command> [config=FILE.yaml ...] [key=value ...] [--help | --print-config | --plan] "
             "[--debug]", "",
             "commands:"]
    lines += [f"  {name:<15} {c.summary}" for name, c in COMMANDS.items() if not c.experiment]
    lines += ["", "experiments (what docs/results was made with):"]
    lines += [f"  {name:<15} {c.summary}" for name, c in COMMANDS.items() if c.experiment]
    lines += ["", "flags:"] + [f"  {flag:<15} {text}" for flag, text in FLAGS.items()]
    lines += ["", "unmask <command> --help lists every key with its default and what it does."]
    return "\n".join(lines)


def command_help(name: str) -> str:
    schema = COMMANDS[name].schema
    flags = "[--print-config] [--plan] [--debug]" if issubclass(schema, DLLMSettings) else "[--print-config] [--debug]"
    lines = [f"usage: unmask {name} [config=FILE.yaml ...] [key=value ...] {flags}", "",
             COMMANDS[name].summary, "",
             "config=FILE.yaml starts from a saved config (a run's config.yaml; several are merged in order); keys",
             "given beside it apply on top.", "", "keys (as typed: key=default, then what it does):"]
    lines += keys_help(schema)
    if hasattr(schema, "start_defaults"):
        from unmask.cluster.config import FROM_POLICY

        lines += ["", "from a saved policy (init_from), the keys not given instead: "
                  + " ".join(f"{k}={v!r}" for k, v in FROM_POLICY.items())]
    if any(f.name == "sampler" for f in schema.__dataclass_fields__.values()):
        lines += ["", "samplers (sampler=NAME) and the sampler.<param> keys each one reads:"]
        lines += [f"  {s:<17} {', '.join(params) or '-'}" for s, params in sorted(SAMPLER_PARAMS.items())]
    renamed = getattr(schema, "renamed", {})
    if renamed:
        lines += ["", "deprecated spellings (still accepted, with a notice): " + ", ".join(
            f"{old} -> {new if isinstance(new, str) else new[0]}" for old, new in renamed.items())]
    return "\n".join(lines)


def quiet_libraries() -> None:
    """Our own progress bars and tables are the output; transformers' weight-loading bars and warnings are
    noise. Set through the environment, so nothing is imported for it and Ray's workers inherit it."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # already imported (a command run in-process): tell it directly
        transformers = sys.modules["transformers"]
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()


def load_config(name: str, args: list[str]):
    """The command's config from its arguments: `resume=<run dir>`, `config=<file>` (several: merged in order) or
    neither, then keys."""
    schema = COMMANDS[name].schema
    given = {arg.split("=", 1)[0] for arg in args if "=" in arg}
    if "resume" in given and any(a.startswith("resume=") and a != "resume=" for a in args):
        if "config" in given:
            raise ConfigError("give resume=<run dir> or config=<file>, not both (a resumed run keeps its config)")
        return resume_config(schema, args, name)
    files = [arg.split("=", 1)[1] for arg in args if arg.startswith("config=")]
    others = [arg for arg in args if not arg.startswith("config=")]
    return parse(schema, others, name, base=merged_files(files))


def one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--debug" not in argv:
        return run_command(argv)
    before = os.environ.get("UNMASK_DEBUG")
    os.environ["UNMASK_DEBUG"] = "1"  # what the command starts (Ray's workers, Tune's trials) inherits it
    try:
        return run_command([a for a in argv if a != "--debug"])
    finally:  # main() called in a process that goes on (a test, a notebook): as it was
        if before is None:
            os.environ.pop("UNMASK_DEBUG", None)
        else:
            os.environ["UNMASK_DEBUG"] = before


def run_command(argv: list[str]) -> int:
    debug = os.environ.get("UNMASK_DEBUG", "") not in ("", "0")
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
    print_config, plan = "--print-config" in args, "--plan" in args
    args = [a for a in args if a not in ("--print-config", "--plan")]
    try:
        cfg = load_config(name, args)
        COMMANDS[name].check(cfg)
        if print_config:
            print(to_yaml(cfg), end="")
            return 0
        if plan:
            if not isinstance(cfg, DLLMSettings):
                raise ConfigError(f"--plan is for the commands that run a dLLM, not {name}")
            from unmask.cli.plan import plan_text

            print(plan_text(cfg))
            return 0
        quiet_libraries()
        with sigterm_as_interrupt():  # every command: SIGTERM stops it as Ctrl-C does, saving what it can
            return COMMANDS[name].run(cfg)
    except Interrupted as stop:  # the command saved what it had and says where
        print(f"unmask {name}: {stop}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"unmask {name}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as err:
        if debug:
            raise
        print(f"unmask {name}: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
