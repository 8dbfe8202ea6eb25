"""The `unmask` command line, run as a user runs it (a real subprocess)."""

import json
import subprocess
import sys

import pytest

from cluster.cli import main


def unmask(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_eval_writes_json_with_the_resolved_config(tiny_model_dir, tmp_path):
    out = tmp_path / "e.json"
    res = unmask("eval", f"model={tiny_model_dir}", "num_examples=12", "env.batch_size=5",
                 "sampler=top_k", "sampler.steps=16", "env.gen_length=16", "env.block_length=4", f"out={out}")
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    for key in ("accuracy", "mean_nfe", "tokens_per_step", "wall_seconds", "num_examples", "config"):
        assert key in data
    assert data["num_examples"] == 12 and data["mean_nfe"] == 16 and data["tokens_per_step"] == 1.0
    assert data["config"]["sampler"]["name"] == "top_k" and data["config"]["env"]["block_length"] == 4
    assert "accuracy" in res.stdout


def test_help_lists_every_key_with_defaults():
    res = unmask("eval", "--help")
    assert res.returncode == 0
    for key in ("model = 'builtin'", "sampler.threshold = 0.9", "env.gen_length = 32", "num_examples = 500",
                "fast_dllm_factor", "seed = 0", "out ="):
        assert key in res.stdout
    assert "pretrain" in unmask("--help").stdout


@pytest.mark.parametrize("args, message", [
    (["eval", "nonsense=1"], "unknown key 'nonsense'"),
    (["eval", "env.gen_length=30", "env.block_length=8"], "not divisible"),
    (["eval", "model=/does/not/exist"], "does not exist"),
    (["eval", "sampler=nope"], "unknown sampler 'nope'"),
    (["eval", "task=nope"], "unknown task 'nope'"),
    (["eval", "sampler=top_k", "sampler.threshold=0.5"], "does not apply to sampler 'top_k'"),
    (["eval", "env.gen_length=many"], "bad value for 'env.gen_length'"),
    (["eval", "positional"], "expected key=value"),
    (["frobnicate"], "unknown command"),
])
def test_bad_input_is_one_line_and_nonzero(args, message, capsys):
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) <= 3  # the error line (+ usage for a bad command)


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


def test_failed_eval_keeps_the_previous_result_file(tiny_model_dir, tmp_path):
    out = tmp_path / "e.json"
    out.write_text('{"previous": true}\n')
    res = unmask("eval", f"model={tiny_model_dir}", "env.gen_length=30", f"out={out}")
    assert res.returncode != 0 and json.loads(out.read_text()) == {"previous": True}
