"""Bad input, as a new user types it, across the five commands: exit code 2, one line on stderr that names the
problem (no traceback), no Ray started, and every output or run directory byte-for-byte as it was.

The cases run in this process through `cli.main.main` (a real process for each would cost seconds apiece);
`tests/test_cli.py` checks the same path from a real process, and the interrupt tests below use one."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from unmask.cli.main import main
from unmask.envs.dllm import BUILTIN_MODEL_DIR
from unmask.learner.config import PolicyConfig
from unmask.learner.policy import UnmaskingPolicy, save_policy


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir):
    """Files a user might point a command at, good and bad."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "a_file").write_text("x")
    (root / "empty_dir").mkdir()
    truncated = shutil.copytree(tiny_model_dir, root / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    no_tokenizer = root / "no_tokenizer"  # config and weights, its tokenizer files left behind
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(tiny_model_dir) / name, no_tokenizer / name)
    rows = [{"prompt": f"{w}?", "answer": w[::-1], "givens": len(w)} for w in ("abc", "bca", "cab", "acb") * 5]
    (root / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "malformed.jsonl").write_text('{"prompt": "a", "answer": "b"}\n{oops\n')
    (root / "no_keys.jsonl").write_text('{"question": "a", "answer": "b"}\n')
    (root / "latin1.jsonl").write_bytes(b'{"prompt": "a", "answer": "b"}\n{"prompt": "caf\xe9", "answer": "b"}\n')
    (root / "long.jsonl").write_text(json.dumps({"prompt": "a" * 5000, "answer": "b"}) + "\n")
    (root / "verifiers.py").write_text("def broken(completion, reference):\n    raise TypeError('boom')\n")
    sys.path.insert(0, str(root))
    policy = UnmaskingPolicy(PolicyConfig(hidden_size=16, num_heads=2, ffn_size=32, time_embed_size=16))
    save_policy(policy, root / "policy_L24", {"gen_length": 24, "block_length": 24, "kv_cache": "none"})
    run = root / "a_run"
    run.mkdir()
    (run / "config.yaml").write_text("max_iterations: 3\n")
    (root / "a_list.yaml").write_text("- 1\n- 2\n")
    (root / "not_yaml.yaml").write_text("key: [unclosed\n")
    bad_json = shutil.copytree(root / "policy_L24", root / "bad_json_policy")
    (bad_json / "config.json").write_text("{not json")
    list_config = shutil.copytree(tiny_model_dir, root / "list_config_model")
    (list_config / "config.json").write_text("[1, 2]")
    for name, edit in (("list_policy", lambda cfg: []), ("typo_policy", lambda cfg: {**cfg, "hidden_size": "big"})):
        policy_dir = shutil.copytree(root / "policy_L24", root / name)
        (policy_dir / "config.json").write_text(json.dumps(edit(json.loads((policy_dir / "config.json").read_text()))))
    cut = shutil.copytree(root / "policy_L24", root / "truncated_policy")
    (cut / "model.safetensors").write_bytes((cut / "model.safetensors").read_bytes()[:100])
    (root / "empty.yaml").write_text("")
    (root / "section_value.yaml").write_text("env: 5\n")
    (root / "not_empty").mkdir()
    (root / "not_empty" / "NOTES.txt").write_text("keep me")
    yield {"root": root, "model": tiny_model_dir}
    sys.path.remove(str(root))


# (command arguments, what the one line must say); {root} and {model} are filled from the fixture
CASES = [
    # eval: keys and values
    ("eval nonsense=1", "unknown key 'nonsense'"),
    ("eval sampler.treshold=0.5", "unknown key 'sampler.treshold'"),
    ("eval positional", "expected key=value"),
    ("eval env.gen_length=many", "env.gen_length=many: env.gen_length takes an integer"),
    ("eval env.gen_length=30 env.block_length=8", "not divisible"),
    ("eval sampler=nope", "unknown sampler 'nope'"),
    ("eval task=nope", "unknown task 'nope'"),
    ("eval sampler=top_k sampler.threshold=0.5", "does not apply to sampler 'top_k'"),
    ("eval sampler=fast_dllm sampler.name=top_k", "sampler.name is given twice (fast_dllm and top_k)"),
    ("eval sampler=eb sampler.gamma=nan", "sampler.gamma must be a finite number, got nan"),
    ("eval sampler=fast_dllm_factor sampler.factor=inf", "sampler.factor must be a finite number"),
    ("eval env.temperature=-1", "env.temperature must be >= 0"),
    ("eval env.temperature=nan", "env.temperature must be a finite number"),
    ("eval env.kv_cache=triple", "unknown env.kv_cache 'triple'"),
    ("eval env.batch_size=-1", "env.batch_size must be >= 0"),
    ("eval rollout.batch_rows=5", "unknown key 'rollout.batch_rows'"),
    ("eval env.blocklength=4", "unknown key 'env.blocklength' for 'unmask eval'; did you mean env.block_length?"),
    ("eval block_length=4", "did you mean env.block_length"),
    ("eval task.test_fraction=2", "task.test_fraction must be in [0, 1]"),
    ("eval resume={root}/a_run", "unknown key 'resume'"),
    ("eval config={root}/missing.yaml", "no config file at"),
    ("eval group_by=nofield model={model} env.gen_length=16", "group_by=nofield: example"),
    # eval: the model
    ("eval model=/does/not/exist", "does not exist"),
    ("eval model={root}/a_file", "is a file, not a model directory"),
    ("eval model={root}/empty_dir", "is not a model directory (it has no config.json)"),
    ("eval model={root}/truncated env.gen_length=16", "cannot load model"),
    ("eval model={root}/no_tokenizer env.gen_length=16", "are its tokenizer files (tokenizer.json"),
    ("eval model={model} env.dtype=int8 env.gen_length=16", "unknown env.dtype 'int8'"),
    ("eval model={model} env.device=cuda:7 env.gen_length=16", "not available"),
    ("eval model={model} env.gen_length=64 env.block_length=64", "exceeds the model's context"),
    ("eval model={model} env.kv_cache=prefix env.gen_length=16", "needs a native LLaDA or Dream model"),
    ("eval task.num_symbols=12 env.gen_length=16 num_examples=5", "cannot represent ([UNK])"),
    ("eval task.num_symbols=4 model={model} env.gen_length=16", "fewer than 500 distinct prompts"),
    # eval: the data
    ("eval task=jsonl", "task=jsonl needs task.path"),
    ("eval task=jsonl task.path={root}/empty_dir", "is a directory, not a .jsonl file"),
    ("eval task=jsonl task.path={root}/missing.jsonl", "does not exist"),
    ("eval task=jsonl task.path={root}/malformed.jsonl", "malformed.jsonl:2: malformed JSON"),
    ("eval task=jsonl task.path={root}/latin1.jsonl", "latin1.jsonl:2: not UTF-8 text"),
    ("eval task=jsonl task.path={root}/no_keys.jsonl", "needs the keys 'prompt' and 'answer'"),
    ("eval task=jsonl task.path={root}/long.jsonl task.max_prompt_chars=1000",
     "prompt of 5,000 characters exceeds task.max_prompt_chars=1,000"),
    ("eval task=jsonl task.path={root}/good.jsonl task.verifier=nomodule:fn", "cannot import verifier"),
    ("eval task=jsonl task.path={root}/good.jsonl task.verifier=verifiers:broken task.test_fraction=1 "
     "model={model} env.gen_length=8 num_examples=4", "verifier 'verifiers:broken' raised TypeError on example"),
    ("eval task=cycles task.test_path={root}/good.jsonl", "task.test_path is for task=jsonl"),
    # eval: where it writes
    ("eval out_dir={root}/a_file/e", "cannot be created"),
    ("eval out_dir={root}/a_file", "is a file, not a directory"),
    # eval: policies
    ("eval sampler=policy", "sampler.checkpoint"),
    ("eval sampler=policy sampler.checkpoint={root}/missing_policy", "no policy checkpoint"),
    ("eval sampler=policy sampler.checkpoint={root}/policy_L24 model={model} env.gen_length=16",
     "was trained with env.gen_length=24, not 16: pass sampler.allow_mismatch=true"),
    # pareto
    ("pareto heuristic_grid=bogus", "unknown heuristic_grid 'bogus'"),
    ("pareto env.block_length=4", "env.block_length is not used by 'unmask pareto'"),
    ("pareto env.gen_length=12 block_lengths=[5]", "block_lengths entry 5"),
    ("pareto out_dir={root}/a_file", "is a file, not a directory"),
    ("pareto model={model} env.gen_length=16 heuristic_grid=small num_examples=2 policies=[{root}/missing_policy]",
     "no policy checkpoint"),
    # pretrain
    ("pretrain out_dir={root}/not_empty", "is not empty"),
    ("pretrain out_dir=" + str(BUILTIN_MODEL_DIR), "is not empty"),
    ("pretrain out_dir={root}/new init_from={root}/missing", "does not exist"),
    ("pretrain out_dir={root}/new init_from={root}/truncated", "cannot load model"),
    ("pretrain out_dir={root}/new max_minutes=0", "max_minutes > 0"),
    ("pretrain out_dir={root}/new lr=nan", "lr must be a finite number"),
    ("pretrain out_dir={root}/new env.gen_length=4", "too short for answers"),
    ("pretrain out_dir={root}/new env.block_length=4", "env.block_length is not used by 'unmask pretrain'"),
    ("pretrain out_dir={root}/new task=jsonl task.path={root}/long.jsonl task.test_fraction=0 max_context=1000",
     "the longest prompt (5,000 characters) + env.gen_length needs a context of 5,024 positions, more than "
     "max_context"),
    ("pretrain out_dir={root}/new task=jsonl task.path={root}/long.jsonl task.max_prompt_chars=1000",
     "exceeds task.max_prompt_chars"),
    # train
    ("train out_dir={root}/r env.block_length=5", "not divisible"),
    ("train out_dir={root}/r rollout.group_size=1", "group_size"),
    ("train out_dir={root}/r grpo.reward=linear", "grpo.reward"),
    ("train out_dir={root}/r grpo.alpha_range=[3,1]", "grpo.alpha_range must be [lo, hi] with 0 < lo <= hi"),
    ("train out_dir={root}/r grpo.alpha_range=[0,1]", "grpo.alpha_range must be [lo, hi] with 0 < lo <= hi"),
    ("train out_dir={root}/r grpo.expert_likelihood=token", "grpo.expert_likelihood must be step or position"),
    ("train out_dir={root}/r rollout.expert.thresholds=[0.9,0.9]", "identical experts draw identical trajectories"),
    ("train out_dir={root}/r rollout.expert.thresholds=[1.5]", "rollout.expert.thresholds must be distinct"),
    ("train out_dir={root}/r rollout.expert.thresholds=[0.9] rollout.expert.block_length=5",
     "rollout.expert.block_length=5 must divide"),
    ("train out_dir={root}/r max_policy_lag=-1", "max_policy_lag"),
    ("train out_dir={root}/r grpo.alpha=nan", "grpo.alpha must be a finite number"),
    ("train out_dir={root}/r grpo.lr=inf", "grpo.lr must be a finite number"),
    ("train out_dir={root}/r grpo.clip_eps=nan", "grpo.clip_eps must be a finite number"),
    ("train out_dir={root}/r grpo.policy_temperature=nan", "grpo.policy_temperature must be a finite number"),
    ("train out_dir={root}/r eval_policy_temperature=0.5", "unknown key 'eval_policy_temperature'"),
    ("train out_dir={root}/r env.batch_size=-5", "env.batch_size must be >= 0"),
    ("train out_dir={root}/r max_minutes=-1", "max_minutes >= 0"),
    ("train out_dir={root}/r max_runner_restarts=-1", "max_runner_restarts must be >= 0"),
    ("train out_dir={root}/r model=/does/not/exist", "does not exist"),
    ("train out_dir={root}/r model={root}/empty_dir", "is not a model directory"),
    ("train out_dir={root}/r task.name=jsonl task.path={root}/malformed.jsonl", "malformed JSON"),
    ("train out_dir={root}/r model={model} env.gen_length=64 env.block_length=64",
     "exceeds the model's context"),
    ("train out_dir={root}/r model={model} env.kv_cache=prefix env.gen_length=16",
     "needs a native LLaDA or Dream model"),
    ("train out_dir={root}/a_run", "already holds a run"),
    ("train out_dir={root}/a_file", "is a file, not a directory"),
    ("train resume={root}/missing", "no run to resume there"),
    ("train resume={root}/a_run config={root}/a_run/config.yaml", "not both"),
    ("train out_dir={root}/r ray_address=127.0.0.1:9", "cannot reach the Ray cluster at '127.0.0.1:9'"),
    # sweep
    ("sweep out_dir={root}/s grid.grpo.alpha=3", "grid.grpo.alpha must be a non-empty list"),
    ("eval sampler=policy sampler.checkpoint=x sampler.alpha=-1", "sampler.alpha must be >= 0"),
    ("eval sampler=fast_dllm sampler.alpha=1", "alpha does not apply to sampler 'fast_dllm'"),
    ("eval sampler=frechet sampler.delta=-1", "sampler.delta must be >= 0, got -1"),
    ("eval sampler=frechet sampler.threshold=0.5", "threshold does not apply to sampler 'frechet'"),
    ("eval sampler=oracle sampler.reference=nope", "unknown sampler 'nope'"),
    ("eval sampler=oracle sampler.reference=top_k:threshold=0.9", "is not a parameter of top_k"),
    ("eval sampler=oracle sampler.reference=oracle", "sampler.reference cannot be an oracle"),
    ("pareto oracle_block_length=5", "oracle_block_length=5 must divide env.gen_length=24"),
    ("eval sampler=policy sampler.checkpoint={root}/policy_L24 sampler.alpha=1",
     "sampler.alpha is for an alpha-conditioned policy"),
    ("eval config={root}/a_list.yaml", "is not a config (a YAML mapping of keys to values)"),
    ("eval config={root}/empty.yaml", "is empty (a config file holds a YAML mapping"),
    ("eval config={root}/section_value.yaml", "env was given a single value (5): it is a section of keys"),
    ("eval env=5", "env was given a single value (5)"),
    ("eval model={root}/list_config_model", "config.json is not a JSON object"),
    ("eval sampler=policy sampler.checkpoint={root}/list_policy", "config.json is not a JSON object"),
    ("eval sampler=policy sampler.checkpoint={root}/typo_policy", "config.json has hidden_size='big', not a int"),
    ("train out_dir={root}/r init_from={root}/truncated_policy", "is corrupted or does not match its config"),
    ("eval config={root}/not_yaml.yaml", "is unreadable"),
    ("eval sampler=policy sampler.checkpoint={root}/bad_json_policy", "config.json is not valid JSON"),
    ("train out_dir={root}/r task=jsonl", "task=jsonl needs task.path"),
    ("train out_dir={root}/r policy.inputs=[margin]", "policy.inputs must start with confidence"),
    ("train out_dir={root}/r init_from={root}/missing_policy", "no policy checkpoint at"),
    ("train out_dir={root}/r init_from={root}/policy_L24 env.gen_length=16 model={model}",
     "was made with env.gen_length=24, not 16"),
    ("train out_dir={root}/r init_from={root}/policy_L24 grpo.alpha_range=[0.3,3]", "is not alpha-conditioned"),
    ("train out_dir={root}/r init_from={root}/policy_L24 policy.hidden_size=64",
     "has policy.hidden_size=16, not 64: a policy started from a saved one keeps its shape and inputs"),
    ("train out_dir={root}/r init_from={root}/policy_L24 policy.inputs=[confidence,margin]",
     "has policy.inputs=['confidence'], not ['confidence', 'margin']"),
    ("train out_dir={root}/r grpo.anchor_coef=0.1", "grpo.anchor_coef anchors to init_from"),
    ("train out_dir={root}/r grpo.credit=per_step", "grpo.credit must be trajectory or value, got 'per_step'"),
    ("train out_dir={root}/r grpo.credit=value grpo.value_lr=0", "grpo.value_lr must be > 0"),
    ("imitate out_dir={root}/i teachers=[]", "teachers must name at least one sampler"),
    ("imitate out_dir={root}/i teachers=[nope]", "unknown sampler 'nope'"),
    ("imitate out_dir={root}/i teachers=[policy]", "is a learned policy"),
    ("imitate out_dir={root}/i teachers=[fast_dllm,eb]", "2 teachers need as many teacher_alphas"),
    ("imitate out_dir={root}/i teacher_alphas=[1]", "teacher_alphas is for several teachers"),
    ("imitate out_dir={root}/i teacher_block_length=5", "teacher_block_length=5 must divide env.gen_length=24"),
    ("imitate out_dir={root}/i keep_weight=0.5", "keep_weight must be >= 1"),
    ("imitate out_dir={root}/i teachers=[left_run] policy.inputs=[confidence]", "reads repeat, which the student would "
     "not see: add it to policy.inputs (policy.inputs=[confidence,repeat], or policy.inputs=[] for what the teachers "
     "read)"),
    ("imitate out_dir={root}/i policy.inputs=[margin]", "policy.inputs must start with confidence"),
    ("imitate out_dir={root}/i lr=0", "lr > 0"),
    ("imitate out_dir={root}/i task.num_symbols=12 env.gen_length=16", "cannot represent ([UNK])"),
    ("imitate out_dir={root}/not_empty", "is not empty"),
    ("train out_dir={root}/r policy.inputs=[confidence,age]", "policy.inputs must start with confidence"),
    ("pareto policy_alphas=[]", "policy_alphas must be a non-empty list"),
    ("sweep out_dir={root}/s grid.policy.width=[64,128]",
     "a sweep varies grpo.*, rollout.*, env.*, task.*, seed and model"),
    ("sweep out_dir={root}/s grid=small", "grid is a section of keys (grid.<key>=...), not one value; did you mean "
     "heuristic_grid=small?"),
    ("sweep out_dir={root}/s grid.grpo.lr=[0.001,-1]", "grid point {'grpo.alpha': 0.5, 'grpo.lr': -1}"),
    ("sweep out_dir={root}/s heuristic_grid=huge", "unknown heuristic_grid 'huge'"),
    ("train task=gsm8k out_dir={root}/r task.path={root}/missing.jsonl", "does not exist"),
    ("sweep out_dir={root}/s grid.model=[/does/not/exist]", "does not exist"),
]


def snapshot(*folders: Path) -> dict:
    return {str(p): p.read_bytes() if p.is_file() else None for f in folders if f.exists()
            for p in [f, *sorted(f.rglob("*"))]}


@pytest.mark.parametrize("args, message", CASES, ids=[c[0][:60] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written_and_no_ray(args, message, inputs, no_ray, capsys):
    argv = args.format(**inputs).split()
    before = snapshot(inputs["root"], BUILTIN_MODEL_DIR)
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not ray.is_initialized()
    assert snapshot(inputs["root"], BUILTIN_MODEL_DIR) == before


def test_at_least_forty_cases_over_every_command_but_reproduce():
    assert len(CASES) >= 40  # reproduce's are in tests/test_reproduce.py
    assert {args.split()[0] for args, _ in CASES} == {"eval", "pareto", "pretrain", "train", "sweep", "imitate"}


def test_contradicting_a_policy_s_training_is_possible_when_asked(inputs, tmp_path):
    assert main(["eval", "sampler=policy", f"sampler.checkpoint={inputs['root']}/policy_L24",
                 "sampler.allow_mismatch=true", f"model={inputs['model']}", "env.gen_length=16", "num_examples=3",
                 f"out_dir={tmp_path}", "progress=false"]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["num_examples"] == 3


def test_eval_writes_every_outcome_and_groups_by_a_data_field(inputs, tmp_path, capsys):
    assert main(["eval", f"model={inputs['model']}", "task=jsonl", f"task.path={inputs['root']}/good.jsonl",
                 "task.test_fraction=1", "num_examples=-1", "env.gen_length=8", "env.block_length=4",
                 "group_by=givens", f"out_dir={tmp_path}", "progress=false"]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "eval.examples.jsonl").read_text().splitlines()]
    assert len(rows) == result["num_examples"] == 20 and all(r["givens"] == 3 for r in rows)
    assert {"id", "correct", "nfe", "completion", "answer"} <= set(rows[0])
    assert result["groups"] == [{"givens": 3, **{k: result[k] for k in result["groups"][0] if k != "givens"}}]
    assert result["groups"][0]["accuracy"] == result["accuracy"]
    assert "| givens |" in capsys.readouterr().out


def test_pretrain_overwrite_replaces_the_model_files_and_keeps_the_others(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "NOTES.txt").write_text("keep me")
    assert main(["pretrain", f"out_dir={out}", "overwrite=true", "max_steps=2", "size.hidden_size=32",
                 "size.num_layers=1", "size.num_heads=2", "size.ffn_size=64", "progress=false",
                 "save_every_minutes=0"]) == 0
    assert (out / "NOTES.txt").read_text() == "keep me"
    assert json.loads((out / "pretrain.json").read_text())["steps"] == 2 and (out / "model.safetensors").is_file()


def as_at_a_terminal() -> None:
    """SIGINT as a terminal's Ctrl-C finds it: a suite started as `cmd &` from a script runs with SIGINT ignored, and
    its children would inherit that (tests/test_reliability.py covers that case with SIGTERM)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_pretrain(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "unmask.cli", "pretrain", f"out_dir={out}", "max_minutes=5",
                             "batch_size=16", "log_every=1", "progress=false", "save_every_minutes=0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=as_at_a_terminal)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_pretraining_saves_a_complete_model_and_says_where(sig, tmp_path):
    from unmask.envs.dllm import load_dllm

    out = tmp_path / "model"
    proc = start_pretrain(out)
    for line in proc.stdout:  # wait until it is training
        if line.startswith("step 3 "):
            break
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert f"saved the model so far to {out}" in err.strip().splitlines()[-1]
    record = json.loads((out / "pretrain.json").read_text())
    assert record["interrupted"] and record["steps"] >= 3
    assert load_dllm(str(out)).max_length == 12 + 24  # complete and loadable
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
def test_interrupted_eval_keeps_the_previous_result(tmp_path):
    out = tmp_path / "eval.json"
    out.write_text('{"previous": true}\n')
    proc = subprocess.Popen([sys.executable, "-m", "unmask.cli", "eval", "num_examples=500", "env.batch_size=1",
                             "sampler=top_k", f"out_dir={tmp_path}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=as_at_a_terminal)
    progress = ""
    while not re.search(r"\b[1-9]\d*/500\b", progress):  # wait until it is decoding, one prompt at a time
        char = proc.stderr.read(1)
        assert char, f"eval ended before it decoded a prompt: {progress[-500:]}"
        progress += char
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "unmask eval: interrupted"
    assert json.loads(out.read_text()) == {"previous": True} and os.listdir(tmp_path) == ["eval.json"]
