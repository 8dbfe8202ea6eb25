"""The `unmask` command line, run as a user runs it (a real subprocess)."""

import json
import subprocess
import sys

import pytest

from unmask.cli.main import main


def unmask(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "unmask.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow
def test_eval_writes_json_with_the_resolved_config(tiny_model_dir, tmp_path):
    res = unmask("eval", f"model={tiny_model_dir}", "num_examples=12", "env.batch_size=5",
                 "sampler=top_k", "sampler.steps=16", "env.gen_length=16", "env.block_length=4", f"out_dir={tmp_path}")
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "eval.json").read_text())
    for key in ("accuracy", "mean_nfe", "tokens_per_step", "wall_seconds", "num_examples", "config"):
        assert key in data
    assert data["num_examples"] == 12 and data["mean_nfe"] == 16 and data["tokens_per_step"] == 1.0
    assert data["config"]["sampler"]["name"] == "top_k" and data["config"]["env"]["block_length"] == 4
    assert "accuracy" in res.stdout


@pytest.mark.slow
def test_help_lists_every_key_with_defaults():
    res = unmask("eval", "--help")
    assert res.returncode == 0
    for key in ("model=builtin", "sampler.threshold=0.9", "env.gen_length=24", "num_examples=500",
                "fast_dllm_factor", "seed=0", "out_dir=runs/eval", 'env.device_map=""'):
        assert key in res.stdout
    # each key's description comes from its dataclass's field comment
    assert "env.block_length=8" in res.stdout and "BL: semi-AR block; BL == L is full diffusion" in res.stdout
    assert "pretrain" in unmask("--help").stdout


@pytest.mark.parametrize("args, message", [
    (["eval", "nonsense=1"], "unknown key 'nonsense'"),
    (["eval", "env.gen_length=30", "env.block_length=8"], "not divisible"),
    (["eval", "model=/does/not/exist"], "does not exist"),
    (["eval", "sampler=nope"], "unknown sampler 'nope'"),
    (["eval", "task=nope"], "unknown task 'nope'"),
    (["eval", "sampler=top_k", "sampler.threshold=0.5"], "does not apply to sampler 'top_k'"),
    (["eval", "env.gen_length=many"], "env.gen_length=many: env.gen_length takes an integer"),
    (["eval", "progress=maybe"], "progress=maybe: progress takes true or false"),
    (["pareto", "block_lengths=4"], "block_lengths=4: block_lengths takes a list, e.g. block_lengths=[4]"),
    (["eval", "positional"], "expected key=value"),
    (["frobnicate"], "unknown command"),
])
def test_bad_input_is_one_line_and_nonzero(args, message, capsys):
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_bad_input_exit_code_from_a_real_process():
    res = unmask("eval", "env.gen_length=30", "env.block_length=8")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == "unmask eval: error: env.gen_length=30 is not divisible by env.block_length=8"


def test_context_overflow_and_malformed_jsonl(tiny_model_dir, tmp_path, capsys):
    assert main(["eval", f"model={tiny_model_dir}", "env.gen_length=64", "env.block_length=64",
                 "num_examples=2", "progress=false"]) == 2
    assert "exceeds the model's context" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "b"}\n{oops\n')
    assert main(["eval", f"model={tiny_model_dir}", "task=jsonl", f"task.path={bad}", "progress=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.jsonl:2: malformed JSON" in err and len(err.splitlines()) == 1


def test_prompt_the_tokenizer_cannot_represent_is_an_error(capsys):
    # the built-in model knows the letters a-j: a 12-letter task would feed it [UNK] for every `k`, `l`
    assert main(["eval", "task.num_symbols=12", "env.gen_length=16", "num_examples=5", "progress=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot represent ([UNK])" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_failed_eval_keeps_the_previous_result_file(tiny_model_dir, tmp_path):
    out = tmp_path / "eval.json"
    out.write_text('{"previous": true}\n')
    res = unmask("eval", f"model={tiny_model_dir}", "env.gen_length=30", f"out_dir={tmp_path}")
    assert res.returncode != 0 and json.loads(out.read_text()) == {"previous": True}


def test_a_write_that_fails_late_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    import os

    from unmask.envs import files

    target = tmp_path / "r.json"
    target.write_text("old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError):
        files.write_json(target, {"new": 1})
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["r.json"]


def test_unwritable_out_is_a_one_line_error(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code = main(["eval", f"model={tiny_model_dir}", "num_examples=3", "env.gen_length=8", "env.block_length=8",
                 f"out_dir={tmp_path / 'afile' / 'e'}", "progress=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "error" in err


def test_jsonl_eval_end_to_end(tiny_model_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p, "answer": a}) for p, a in
                              [("abc?", "cba"), ("bca?", "acb"), ("cab?", "bac"), ("aab?", "baa")] * 3) + "\n")
    assert main(["eval", f"model={tiny_model_dir}", "task=jsonl", f"task.path={data}", "task.test_fraction=1.0",
                 "num_examples=-1", "env.gen_length=8", "env.block_length=4", "sampler=top_k", "sampler.steps=4",
                 f"out_dir={tmp_path}", "progress=false"]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    # two blocks of 4, two steps each (LLaDA's schedule): exactly 4 forwards of 2 tokens, whatever the model
    assert result["num_examples"] == 12 and 0 <= result["accuracy"] <= 1
    assert result["mean_nfe"] == 4 and result["tokens_per_step"] == 2 and result["still_masked"] == 0


def test_empty_split_and_bad_sampler_values_are_errors(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "abc?", "answer": "cba"}) + "\n")
    assert main(["eval", f"model={tiny_model_dir}", "task=jsonl", f"task.path={data}", "task.test_fraction=0",
                 "progress=false"]) == 2
    assert "no examples" in capsys.readouterr().err
    assert main(["eval", f"model={tiny_model_dir}", "sampler=random", "sampler.k=0", "progress=false"]) == 2
    assert "sampler.k must be >= 1" in capsys.readouterr().err
    assert main(["eval", f"model={tiny_model_dir}", "env.device=cuda:7", "progress=false"]) == 2
    assert "not available" in capsys.readouterr().err
    assert main(["eval", "task.num_symbols=4", f"model={tiny_model_dir}", "progress=false"]) == 2
    assert "fewer than 500 distinct prompts" in capsys.readouterr().err


def test_help_lists_dict_keys_whole_and_a_saved_config_starts_a_run(tmp_path, capsys):
    from unmask.cli.main import load_config

    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "custom_resources_per_env_runner={}" in out and "eval.policy_temperature=1.0" in out
    assert "from a saved policy (init_from), the keys not given instead: grpo.lr=0.0001" in out
    assert main(["sweep", "--help"]) == 0
    assert "grid={grpo:{alpha:[0.5,1.0,2.0]}}" in capsys.readouterr().out

    saved = tmp_path / "config.yaml"
    from unmask.cluster.config import TrainConfig
    from unmask.envs.structured import to_yaml

    first = load_config("train", ["max_iterations=7", "grpo.alpha=0.3", "env.block_length=24"])
    saved.write_text(to_yaml(first))
    cfg = load_config("train", [f"config={saved}", "max_iterations=9"])
    assert isinstance(cfg, TrainConfig) and cfg.max_iterations == 9  # the key beside config= wins
    assert cfg.grpo.alpha == 0.3 and cfg.env.block_length == 24  # the rest comes from the file
    saved.write_text(saved.read_text() + "not_a_key: 1\n")
    assert main(["train", f"config={saved}"]) == 2
    assert "unknown key 'not_a_key'" in capsys.readouterr().err
    assert main(["train", f"config={tmp_path / 'missing.yaml'}"]) == 2
    assert "no config file at" in capsys.readouterr().err


def test_training_from_a_saved_policy_takes_the_frontier_recipe_s_keys_unless_given(tmp_path):
    """`unmask train init_from=<clone> grpo.alpha=3` is the recipe measured in docs/results/frontier.md (and
    on the commas task, README): keys given by hand or in a config file win; from the paper's start nothing moves."""
    from unmask.cli.main import load_config
    from unmask.cluster.config import FROM_POLICY, TrainConfig
    from unmask.envs.structured import to_yaml

    paper = load_config("train", ["grpo.alpha=3"])
    assert (paper.grpo.lr, paper.grpo.logit_bound, paper.groups_per_update, paper.validate_every) == (
        TrainConfig().grpo.lr, 0.0, 8, 0)
    clone = "docs/results/policies/bl8-imitate-lr-s0"
    recipe = load_config("train", [f"init_from={clone}", "grpo.alpha=3"])
    # the keys the frontier's and the commas task's GRPO runs were given by hand (experiments.frontier PAST_GRPO)
    assert (recipe.grpo.lr, recipe.grpo.logit_bound, recipe.groups_per_update, recipe.validate_every) == (
        1e-4, 3.0, 16, 10) == tuple(FROM_POLICY.values())
    assert recipe.from_policy_keys() == "grpo.lr=0.0001 grpo.logit_bound=3 groups_per_update=16 validate_every=10"
    mine = load_config("train", [f"init_from={clone}", "grpo.lr=3e-05", "validate_every=0"])
    assert (mine.grpo.lr, mine.grpo.logit_bound, mine.validate_every) == (3e-5, 3.0, 0)  # given: kept, even = default
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(mine))
    again = load_config("train", [f"config={saved}"])  # a saved config holds every key: none is replaced
    assert (again.grpo.lr, again.groups_per_update, again.validate_every) == (3e-5, 16, 0)
    partial = tmp_path / "partial.yaml"
    partial.write_text(f"grpo:\n  init_policy: {clone}\n  logit_bound: 0.0\n")
    some = load_config("train", [f"config={partial}"])
    assert (some.grpo.lr, some.grpo.logit_bound) == (1e-4, 0.0)


@pytest.mark.parametrize("args, message", [
    (["pareto", "env.block_length=4"], "env.block_length is not used by 'unmask pareto'"),
    (["pareto", "heuristic_grid=bogus"], "unknown heuristic_grid 'bogus'"),
    (["eval", "env.kv_cache=triple"], "unknown env.kv_cache 'triple'"),
    (["pretrain", "env.kv_cache=dual"], "env.kv_cache is not used by 'unmask pretrain'"),
    (["train", "eval_policy_temperature=0.5"], "unknown key 'eval_policy_temperature'"),
    (["sweep", "heuristic_grid=huge"], "unknown heuristic_grid 'huge'"),
])
def test_keys_that_would_be_ignored_are_errors_before_any_work(args, message, tmp_path, capsys):
    assert main([*args, f"out_dir={tmp_path / 'o'}"] if args[0] == "pareto" else args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_config_errors_come_before_heavy_imports_and_eval_never_imports_ray(tiny_model_dir, tmp_path):
    """A typo is reported before torch is even imported; a whole `unmask eval` never imports Ray."""
    probe = ("import sys; from unmask.cli.main import main; code = main(sys.argv[1:]); "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'ray'}))")
    typo = subprocess.run([sys.executable, "-c", probe, "eval", "sampler.treshold=0.5"], capture_output=True,
                          text=True)
    assert "unknown key 'sampler.treshold'" in typo.stderr and typo.stdout.strip() == "[]"
    full = subprocess.run([sys.executable, "-c", probe, "eval", f"model={tiny_model_dir}", "num_examples=3",
                           "env.gen_length=8", "env.block_length=8", f"out_dir={tmp_path}",
                           "progress=false"], capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    assert full.stdout.strip().splitlines()[-1] == "['torch', 'transformers']"
