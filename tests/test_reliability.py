"""Reliability, fourth round: nothing of the user's is deleted, SIGTERM always saves, a full disk is one line that
loses nothing, and every entry point checks its input before any work (one test or more per item of the round)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from unmask.cli.main import load_config, main
from unmask.learner.config import PolicyConfig
from unmask.learner.policy import UnmaskingPolicy, load_policy, save_policy

TINY_IMITATE = ["task.num_symbols=7", "env.gen_length=16", "env.block_length=8", "prompts=8", "dagger_rounds=0",
                "steps_per_round=3", "batch_steps=16", "eval.num_examples=0", "progress=false"]
TINY_PRETRAIN = ["size.hidden_size=32", "size.num_layers=1", "size.num_heads=2", "size.ffn_size=64", "max_steps=2",
                 "progress=false", "save_every_minutes=0"]


def one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err and "Traceback" not in "\n".join(err), err
    return err[-1]


# ---- 1. and 14. imitate's out_dir --------------------------------------------------------------------------------
def test_imitate_overwrite_replaces_its_policy_and_keeps_the_user_s_files(tiny_model_dir, tmp_path):
    out = tmp_path / "mine"
    (out / "notes").mkdir(parents=True)
    (out / "NOTES.txt").write_text("keep me")
    (out / "notes" / "more.txt").write_text("and me")
    assert main(["imitate", f"model={tiny_model_dir}", f"out_dir={out}", "overwrite=true", *TINY_IMITATE]) == 0
    assert (out / "NOTES.txt").read_text() == "keep me" and (out / "notes" / "more.txt").read_text() == "and me"
    load_policy(out)  # and the policy is there, whole
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.old"))


def test_imitate_into_the_current_directory(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "NOTES.txt").write_text("keep me")
    assert main(["imitate", f"model={tiny_model_dir}", "out_dir=.", "overwrite=true", *TINY_IMITATE]) == 0
    load_policy(tmp_path)
    assert (tmp_path / "NOTES.txt").read_text() == "keep me"


# ---- 2. SIGTERM where SIGINT is ignored (every `cmd &` of a script) ----------------------------------------------
def started_with_sigint_ignored(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "unmask.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))


@pytest.mark.slow
def test_sigterm_saves_pretrain_and_imitate_even_with_sigint_ignored(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    proc = started_with_sigint_ignored(["pretrain", f"out_dir={model}", "max_minutes=5", "batch_size=16",
                                        "log_every=1", "save_every_minutes=0", "progress=false",
                                        *TINY_PRETRAIN[:4]])
    for line in proc.stdout:  # training
        if line.startswith("step 3 "):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and f"saved the model so far to {model}" in err, err[-2000:]
    assert json.loads((model / "pretrain.json").read_text())["interrupted"]

    clone = tmp_path / "clone"
    proc = started_with_sigint_ignored(["imitate", f"model={tiny_model_dir}", f"out_dir={clone}", "task.num_symbols=7",
                                        "env.gen_length=16", "env.block_length=8", "prompts=200", "dagger_rounds=0",
                                        "steps_per_round=100000", "eval.num_examples=0", "progress=true"])
    seen = ""
    while ", loss " not in seen and proc.poll() is None:  # the progress bar's loss: 50 steps into the fit (not a
        seen = seen[-200:] + proc.stderr.read(1)  # sleep, which a loaded machine outlasts before the fit starts)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and f"saved the policy so far to {clone}" in err, err[-2000:]
    load_policy(clone)


# ---- 3. a full disk -----------------------------------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path):
    """tmpfs(size): a tmpfs of that size the test can fill (root can mount one; elsewhere the test skips, saying
    why)."""
    mounted = []

    def mount(size: str) -> Path:
        target = tmp_path / f"disk{len(mounted)}"
        target.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
                                               capture_output=True).returncode != 0:
            pytest.skip("mounting a small tmpfs needs root (the full-disk cases run where the tests can mount one)")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", str(target)], capture_output=True)


def test_a_full_disk_is_one_line_for_imitate_and_pretrain_and_leaves_no_temporary(tmpfs, tiny_model_dir, capsys):
    small_disk = tmpfs("2m")
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (2 * 2**20 - 24 * 1024))  # leave less room than a model's or a policy's files take
    code = main(["imitate", f"model={tiny_model_dir}", f"out_dir={small_disk / 'clone'}", *TINY_IMITATE])
    line = one_line_error(capsys, code)
    assert "no space left to write" in line and ("MiB" in line or "KiB" in line), line
    code = main(["pretrain", f"out_dir={small_disk / 'model'}", *TINY_PRETRAIN])
    line = one_line_error(capsys, code)
    assert "no space left to write" in line, line
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no .tmp, no half model


@pytest.mark.slow
def test_train_stops_before_the_disk_is_full_and_resumes_once_there_is_room(tmpfs, tiny_model_dir, capsys, local_ray):
    from unmask.cluster.rundir import verify_seal

    roomy_disk = tmpfs("100m")
    filler = roomy_disk / "filler"
    filler.write_bytes(b"\0" * (32 * 2**20))  # 68 MiB left: a few iterations above the 64 MiB kept in hand
    run = roomy_disk / "run"
    args = ["train", f"out_dir={run}", f"model={tiny_model_dir}", "task.num_symbols=7", "env.gen_length=16",
            "env.block_length=8", "rollout.group_size=4", "rollout.prompts_per_sample=2", "rollout.train_pool=64",
            "groups_per_update=2", "num_env_runners=0",
            "max_iterations=10", "checkpoint_every=1", "eval.num_examples=0"]
    line = one_line_error(capsys, main(args))
    assert f"the disk of {run} is full" in line or "MiB a run keeps in hand" in line, line
    assert "continue with: unmask train resume=" in line, line
    verify_seal(run)  # sealed whole: resumable without resume_unverified
    assert not list(run.rglob("*.tmp*"))
    filler.unlink()
    assert main(["train", f"resume={run}"]) == 0
    assert (run / "checkpoints" / "final" / "config.json").is_file()


# ---- 4. a policy that names an input this version does not have -------------------------------------------------
@pytest.fixture(scope="module")
def odd_policy(tmp_path_factory):
    path = tmp_path_factory.mktemp("odd") / "policy"
    save_policy(UnmaskingPolicy(PolicyConfig(hidden_size=16, num_heads=2, ffn_size=32, time_embed_size=16,
                                             inputs=["confidence"])), path, {"gen_length": 24, "kv_cache": "none"})
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "inputs": ["confidence", "telepathy"]}))
    return path


@pytest.mark.parametrize("command", [
    ["eval", "sampler=policy", "sampler.checkpoint={policy}", "num_examples=2"],
    ["pareto", "policies=[{policy}]", "heuristic_grid=small", "num_examples=2", "out_dir={tmp}/p"],
    ["train", "init_from={policy}", "out_dir={tmp}/r"],
])
def test_a_policy_naming_an_unknown_input_is_one_line(command, odd_policy, tmp_path, capsys, no_ray):
    argv = [a.format(policy=odd_policy, tmp=tmp_path) for a in command]
    line = one_line_error(capsys, main(argv))
    assert "is not a policy this version can run" in line and "telepathy" in line, line


# ---- 5. and 6. the experiments' entry points ----------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["frontier", "publish={tmp}/a_file"], "publish=", ),
    (["frontier", "num_examples=-3"], "num_examples >= 1"),
    (["own-tasks", "out_dir={tmp}/a_file"], "is a file, not a directory"),
    (["own-tasks", "out_dir={tmp}/a_file/below"], "cannot be created"),
    (["own-tasks", "out_dir={tmp}/locked/x"], "cannot be written"),
])
def test_the_experiments_check_their_input_first(args, message, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked").chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.geteuid() == 0 and "locked" in " ".join(args):
            args = [a.replace("{tmp}/locked/x", "/proc/unmask-own") for a in args]  # root writes anywhere but here
        line = one_line_error(capsys, main([a.format(tmp=tmp_path) for a in args]))
        assert message in line, line
    finally:
        (tmp_path / "locked").chmod(stat.S_IRWXU)


# ---- 7. paths that pass permission bits but cannot be written ------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["eval", "out_dir=/proc/unmask-eval"], ["pareto", "out_dir=/proc/unmask-pareto"],
    ["pretrain", "out_dir=/proc/unmask-model"], ["train", "out_dir=/proc/unmask-run"],
    ["imitate", "out_dir=/proc/unmask-clone"],
])
def test_an_output_under_proc_is_refused_before_any_work(args, capsys, no_ray):
    line = one_line_error(capsys, main(args))
    assert "cannot be written: /proc refuses a new file" in line, line
    assert not ray.is_initialized()


# ---- 8. a hub id with no hub -------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, what", [
    (["eval", "model=nobody/no-such-dllm", "num_examples=2"], "model 'nobody/no-such-dllm'"),
    (["imitate", "model=nobody/no-such-dllm", "out_dir={tmp}/c"], "model 'nobody/no-such-dllm'"),
    (["train", "init_from=nobody/no-such-policy", "out_dir={tmp}/r"], "policy 'nobody/no-such-policy'"),
])
def test_an_unreachable_hub_is_one_line_in_seconds(args, what, tmp_path, capsys, monkeypatch, no_ray):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing answers there, online or not
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    started = time.perf_counter()
    line = one_line_error(capsys, main([a.format(tmp=tmp_path) for a in args]))
    assert f"cannot reach the hub for {what} (offline?)" in line, line
    assert time.perf_counter() - started < 30


# ---- 9. a prompt far past the context ----------------------------------------------------------------------------
def test_a_prompt_of_megabytes_is_refused_before_the_tokenizer(tmp_path, capsys):
    data = tmp_path / "huge.jsonl"
    data.write_text(json.dumps({"prompt": "ab" * 5_000_000, "answer": "ba"}) + "\n"
                    + json.dumps({"prompt": "ab?", "answer": "ba"}) + "\n")
    for command in (["imitate", f"out_dir={tmp_path / 'c'}", "prompts=2"], ["eval", "num_examples=2"]):
        argv = [*command, "task=jsonl", f"task.path={data}", "task.test_fraction=0", "task.max_prompt_chars=20000000"]
        if command[0] == "eval":
            argv[argv.index("task.test_fraction=0")] = "task.test_fraction=1"
        line = one_line_error(capsys, main(argv))
        assert "a prompt of 10,000,000 characters cannot fit the model's context" in line, line


# ---- 10. and 11. what a run trains on, checked before Ray ---------------------------------------------------------
def test_too_few_training_prompts_for_validation_is_one_line_before_ray(tmp_path, capsys, no_ray):
    data = tmp_path / "small.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{a}{b}?", "answer": f"{b}{a}"}) + "\n"
                            for a in "abc" for b in "abc"))
    line = one_line_error(capsys, main(["train", f"out_dir={tmp_path / 'r'}", "task=jsonl", f"task.path={data}",
                                        "task.test_fraction=0", "validate_every=5", "validate_examples=50"]))
    assert "none is left to train on beyond the validate_examples=50" in line, line
    assert not ray.is_initialized()


def test_answers_longer_than_the_canvas_are_refused_or_counted(tmp_path, capsys, no_ray):
    from unmask.cluster.config import TrainConfig
    from unmask.envs.config import EnvConfig, TaskConfig
    from unmask.rollout.preflight import preflight

    long_ones = tmp_path / "long.jsonl"
    long_ones.write_text("".join(json.dumps({"prompt": f"{a}?", "answer": "abcabcabc"}) + "\n" for a in "abc"))
    line = one_line_error(capsys, main(["train", f"out_dir={tmp_path / 'r'}", "task=jsonl", f"task.path={long_ones}",
                                        "task.test_fraction=0", "env.gen_length=8", "env.block_length=8"]))
    assert "every training answer is longer than env.gen_length=8 tokens" in line, line
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps({"prompt": f"{a}{b}?", "answer": "abcabcabc" if a == "a" else "ab"}) + "\n"
                             for a in "abc" for b in "abc"))
    preflight(TrainConfig(task=TaskConfig(name="jsonl", path=str(mixed), test_fraction=0.0),
                          env=EnvConfig(gen_length=8, block_length=8)), train_pool=100)
    assert "33% of the training answers are longer than env.gen_length=8 tokens" in capsys.readouterr().err


# ---- 12. an explicit key is never dropped -----------------------------------------------------------------------
def test_policy_inputs_given_with_init_from_must_agree_with_the_policy(tmp_path, capsys, no_ray):
    clone = "docs/results/policies/bl8-imitate-lr-s0"  # reads [confidence, repeat]
    line = one_line_error(capsys, main(["train", f"init_from={clone}", "policy.inputs=[confidence]",
                                        f"out_dir={tmp_path / 'r'}"]))
    assert "has policy.inputs=['confidence', 'repeat'], not ['confidence']" in line, line
    assert load_config("train", [f"init_from={clone}", "policy.inputs=[confidence,repeat]"]).init_from == clone


# ---- 13. sampler specs that nest ---------------------------------------------------------------------------------
def test_an_oracle_of_a_two_parameter_reference_can_be_a_teacher():
    from unmask.envs.config import sampler_spec
    from unmask.rollout.config import check_imitate

    cfg = load_config("imitate", ["teachers=[oracle:reference=(left_run:threshold=0.9;run_threshold=0.4);"
                                  "block_length=8,fast_dllm:threshold=0.8]", "teacher_alphas=[0.3,3]",
                                  "out_dir=unused"])
    check_imitate(cfg)
    oracle, fast = (sampler_spec(t) for t in cfg.teachers)
    assert (oracle.name, oracle.block_length, fast.threshold) == ("oracle", 8, 0.8)
    reference = sampler_spec(oracle.reference)
    assert (reference.name, reference.threshold, reference.run_threshold) == ("left_run", 0.9, 0.4)
    with pytest.raises(ValueError, match="unbalanced parentheses"):
        sampler_spec("oracle:reference=(left_run:threshold=0.9")


# ---- 15. the local Ray's session is this user's alone ------------------------------------------------------------
@pytest.mark.slow
def test_the_local_ray_session_sits_in_a_folder_only_this_user_enters(no_ray):
    from unmask.cluster.train import start_local_ray

    start_local_ray(1)
    try:
        session = Path(ray._private.worker._global_node.get_session_dir_path())
        private = session.parent.parent
        assert private.name == f"unmask-ray-{os.getuid()}" and private.stat().st_uid == os.getuid()
        assert stat.S_IMODE(private.stat().st_mode) == 0o700, oct(private.stat().st_mode)
        assert (session / "sockets").is_dir()  # the sockets Ray opens to everyone are inside it
    finally:
        ray.shutdown()
