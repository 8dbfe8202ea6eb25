"""One key vocabulary across commands: the same concept has the same key everywhere, old spellings keep working with a
one-line notice, a mistyped key gets a "did you mean", --help describes every key as it is typed, config files merge
in order, and --print-config resolves and checks a whole config without doing any work."""

import runpy
import sys

import pytest
import yaml

from unmask.cli.main import COMMANDS, load_config, main
from unmask.cli.parse import describe_keys
from unmask.envs.structured import renamed_key

DECODING = ("eval", "pareto", "imitate", "train", "sweep")  # the commands that run a dLLM on a task


def keys_of(command: str) -> set[str]:
    return {key for key, _, _ in describe_keys(COMMANDS[command].schema)}


def test_every_key_of_every_command_has_a_description():
    undescribed = [(name, key) for name, c in COMMANDS.items() for key, _, text in describe_keys(c.schema) if not text]
    assert not undescribed


def test_one_key_per_concept():
    """The vocabulary: the model, the task, the canvas, the output directory, the seed, the time budget, the policy's
    shape, the rows per forward; and none of the spellings that once meant the same."""
    for command in DECODING:
        assert {"model", "task.name", "env.gen_length", "env.batch_size", "seed", "out_dir"} <= keys_of(command)
    for command in ("pretrain", "reproduce"):
        assert {"env.gen_length", "out_dir"} <= keys_of(command)
    assert {"task.name", "seed", "max_minutes", "init_from"} <= keys_of("pretrain")
    for command in ("train", "sweep"):
        assert {"max_minutes", "init_from", "policy.inputs", "policy.hidden_size"} <= keys_of(command)
    assert {"policy.inputs", "policy.hidden_size", "eval.num_examples"} <= keys_of("imitate")
    assert {"heuristic_grid", "block_lengths"} <= keys_of("pareto") & keys_of("sweep")
    assert {"out_dir", "train_seeds"} <= keys_of("frontier") & keys_of("reproduce")
    old = ("out", "run_dir", "minutes", "gen_length", "batch_size", "grid", "eval_examples", "report_grid",
           "report_block_lengths", "seeds")
    for name in COMMANDS:
        keys = keys_of(name)
        gone = ("rollout.model", "rollout.task", "rollout.env", "rollout.seed", "grpo.policy", "grpo.init_policy")
        assert not any(k == g or k.startswith(g + ".") for k in keys for g in gone), name
        allowed = {"pretrain": {"batch_size"}, "sweep": {"grid"}}.get(name, set())  # other concepts there
        assert not (set(old) - allowed) & keys, name


def test_every_deprecated_spelling_names_a_key_that_exists():
    for name, command in COMMANDS.items():
        keys = keys_of(name)
        for old in getattr(command.schema, "renamed", {}):
            new = renamed_key(command.schema.renamed, old)[0]
            assert new in keys or any(k.startswith(new + ".") for k in keys), (name, old, new)
            assert old not in keys, (name, old)


@pytest.mark.parametrize("command, args, check", [
    ("eval", ["out=runs/x/e.json", "batch_size=7"], lambda c: c.out_dir == "runs/x" and c.env.batch_size == 7),
    ("pareto", ["grid=small"], lambda c: c.heuristic_grid == "small"),
    ("pretrain", ["out=m", "minutes=3", "gen_length=12"],
     lambda c: (c.out_dir, c.max_minutes, c.env.gen_length) == ("m", 3.0, 12)),
    ("imitate", ["out=i", "eval_examples=0", "batch_size=9"],
     lambda c: (c.out_dir, c.eval.num_examples, c.env.batch_size) == ("i", 0, 9)),
    ("train", ["run_dir=r", "rollout.env.block_length=24", "rollout.seed=3", "rollout.batch_rows=5",
               "grpo.policy.hidden_size=64", "rollout.task=map", "rollout.group_size=4"],
     lambda c: (c.out_dir, c.env.block_length, c.seed, c.env.batch_size, c.policy.hidden_size, c.task.name,
                c.rollout.group_size) == ("r", 24, 3, 5, 64, "map", 4)),
    ("sweep", ["report_grid=default", "report_block_lengths=[4]"],
     lambda c: c.heuristic_grid == "default" and c.block_lengths == [4]),
    ("frontier", ["seeds=0,1,2"], lambda c: c.train_seeds == [0, 1, 2]),
    ("reproduce", ["block_length=4", "gen_length=16"], lambda c: (c.env.block_length, c.env.gen_length) == (4, 16)),
])
def test_old_spellings_work_for_a_release_with_one_notice_each(command, args, check, capsys):
    cfg = load_config(command, args)
    assert check(cfg)
    notices = capsys.readouterr().err.strip().splitlines()
    renamed = [a.split("=", 1)[0] for a in args if renamed_key(COMMANDS[command].schema.renamed, a.split("=")[0])]
    assert len(notices) == len(renamed) and all(
        n.startswith(f"unmask {command}: {old} is deprecated, use ") and "until unmask 0.3" in n
        for n, old in zip(notices, renamed))


def test_a_config_file_with_old_keys_is_read_and_says_which(tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text("run_dir: r\nrollout:\n  seed: 3\n  group_size: 4\n  env:\n    block_length: 24\n")
    cfg = load_config("train", [f"config={old}"])
    assert (cfg.out_dir, cfg.seed, cfg.rollout.group_size, cfg.env.block_length) == ("r", 3, 4, 24)
    err = capsys.readouterr().err
    assert "the config file's rollout.seed is deprecated, use seed" in err
    assert "the config file's rollout.env.block_length is deprecated, use env.block_length" in err


@pytest.mark.parametrize("command, args, message", [
    ("eval", ["env.blocklength=4"], "unknown key 'env.blocklength' for 'unmask eval'; did you mean env.block_length?"),
    ("train", ["block_length=4"], "did you mean env.block_length?"),
    ("train", ["grpo.alpah=1"], "did you mean grpo.alpha?"),
    ("pareto", ["grids=small"], "did you mean heuristic_grid?"),
    ("sweep", ["grid=small"], "grid=small: grid is a section of keys (grid.<key>=...), not one value; did you mean "
                              "heuristic_grid=small?"),
    ("eval", ["env.gen_length=lots"], "env.gen_length=lots: env.gen_length takes an integer"),
    ("eval", ["env.temperature=warm"], "env.temperature=warm: env.temperature takes a number"),
    ("pareto", ["block_lengths=4"], "block_lengths=4: block_lengths takes a list, e.g. block_lengths=[4]"),
    ("frontier", ["train_seeds=[0,0]"], "train_seeds must hold at least one seed, none twice"),
    ("frontier", ["grpo_minutes=-1"], "grpo_minutes, paper_minutes and past_minutes must be > 0"),
    ("frontier", ["seed=1"], "unknown key 'seed' for 'unmask frontier'"),
    ("own-tasks", ["family=filter", "family=sort"], "family is given twice (filter and sort): give it once"),
    ("limit", ["routes=[lr,fast]"], "routes must name one or more of lr, lrh, orh, auto, got ['lr', 'fast']"),
    ("limit", ["block_lengths=[5]"], "every block length must divide the task's L = 24, got [5]"),
    ("limit", ["task=commas", "publish=docs/results"], "publish= is for task=cycles"),
    ("limit", ["seeds=0,1"], "unknown key 'seeds' for 'unmask limit'; did you mean train_seeds?"),
    ("finality-probe", ["prompts=2"], "prompts must be >= 5 (a fifth is held out), got 2"),
    ("finality-probe", ["env.block_length=5"], "env.block_length must divide the built-in canvas L = 24, got 5"),
    ("finality-probe", ["env.gen_length=32"], "the probe reads env.block_length only (L = 24)"),
])
def test_a_wrong_key_or_value_is_one_line_with_a_hint(command, args, message, tmp_path, capsys):
    assert main([command, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_config_files_merge_in_order_and_keys_beside_them_win(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("max_iterations: 7\ngrpo:\n  alpha: 0.3\n  lr: 0.001\n")
    second.write_text("max_iterations: 9\ngrpo:\n  alpha: 3.0\n")
    cfg = load_config("train", [f"config={first}", f"config={second}", "grpo.lr=0.002"])
    assert (cfg.max_iterations, cfg.grpo.alpha, cfg.grpo.lr) == (9, 3.0, 0.002)  # b over a, the key over both
    cfg = load_config("train", [f"config={second}", f"config={first}"])
    assert (cfg.max_iterations, cfg.grpo.alpha, cfg.grpo.lr) == (7, 0.3, 0.001)


def test_print_config_resolves_checks_and_does_no_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", f"out_dir={out}", "grpo.alpha=3", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["grpo"]["alpha"] == 3.0 and printed["out_dir"] == str(out) and printed["env"]["block_length"] == 8
    assert not out.exists()
    assert main(["train", f"out_dir={out}", "env.block_length=5", "--print-config"]) == 2  # checked, not just echoed
    assert "not divisible" in capsys.readouterr().err
    clone = "docs/results/policies/bl8-imitate-lr-s0"  # from a saved policy: its resolved defaults are printed
    assert main(["train", f"init_from={clone}", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["grpo"]["lr"], printed["validate_every"]) == (1e-4, 10)


def test_help_shows_every_key_as_it_is_typed_with_its_description(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "grpo.adam_betas=[0.9,0.99]" in out and "sampler" not in out.split("keys")[1].split("from a saved")[0]
    assert 'init_from=""' in out and "max_minutes=0.0" in out and "0 = none" in out
    assert "rollout.env -> env" in out  # the deprecated spellings are listed
    assert main(["eval", "--help"]) == 0
    out = capsys.readouterr().out
    assert "sampler.alpha=null" in out and "samplers (sampler=NAME)" in out
    assert main(["pretrain", "--help"]) == 0
    out = capsys.readouterr().out
    assert "env.gen_length=24" in out and "env.block_length" not in out  # keys a command does not read are hidden


def run_module(module: str, *args: str) -> int:
    """`python -m module args...`, in this process (its `__main__` block, as the interpreter runs it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [module, *args])
        patch.delitem(sys.modules, module, raising=False)  # as a fresh interpreter has it: not imported yet
        with pytest.raises(SystemExit) as exit_:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    return exit_.value.code


def test_the_experiments_entry_points_take_the_one_parser(capsys):
    for module in ("unmask.experiments.frontier", "unmask.experiments.own_tasks", "unmask.experiments.limit",
                   "unmask.experiments.finality_probe"):
        assert run_module(module, "positional") == 2
        err = capsys.readouterr().err
        assert "expected key=value" in err and "Traceback" not in err
    assert run_module("unmask.experiments.limit", "--help") == 0
    shown = capsys.readouterr().out
    assert "keys (as typed" in shown and "routes=[lrh,orh,auto]" in shown
