"""`unmask imitate`: the imitation loss against hand-computed likelihoods, and cloning a teacher end to end on a tiny
dLLM (states, DAgger, the saved checkpoint every command reads)."""

import json
import math

import pytest
import torch

from unmask.cli.main import main
from unmask.learner.imitation import imitation_logp
from unmask.learner.policy import load_policy, policy_info


def test_the_imitation_likelihood_is_evaluation_s_rule_with_a_soft_argmax():
    """Three valid positions with p = sigmoid(b). A decision of two positions can only be drawn; a single position can
    also be the fallback's choice when nothing is drawn, with the softmax of the logits standing in for the argmax."""
    b = torch.tensor([[0.0, 1.0, -1.0, 5.0]])
    valid = torch.tensor([[True, True, True, False]])
    p = torch.sigmoid(b[0, :3]).tolist()
    two = torch.tensor([[True, True, False, False]])
    assert imitation_logp(b, two, valid).item() == pytest.approx(math.log(p[0] * p[1] * (1 - p[2])), rel=1e-6)
    one = torch.tensor([[False, True, False, True]])  # the invalid position 3 is not part of any decision
    softmax = math.exp(1.0) / (math.exp(0.0) + math.exp(1.0) + math.exp(-1.0))
    drawn = (1 - p[0]) * p[1] * (1 - p[2])
    nothing = (1 - p[0]) * (1 - p[1]) * (1 - p[2])
    assert imitation_logp(b, one, valid).item() == pytest.approx(math.log(drawn + nothing * softmax), rel=1e-6)
    # keep_weight w: each "keep masked" factor counts w times (a weighted likelihood, the student's caution)
    w = 4.0
    assert imitation_logp(b, two, valid, keep_weight=w).item() == pytest.approx(
        math.log(p[0] * p[1] * (1 - p[2]) ** w), rel=1e-6)
    drawn_w = (1 - p[0]) ** w * p[1] * (1 - p[2]) ** w
    nothing_w = ((1 - p[0]) * (1 - p[1]) * (1 - p[2])) ** w
    assert imitation_logp(b, one, valid, keep_weight=w).item() == pytest.approx(
        math.log(drawn_w + nothing_w * softmax), rel=1e-6)


def test_a_clone_of_fast_dllm_decodes_as_it_does_and_records_how_it_was_made(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "clone"
    args = ["imitate", f"model={tiny_model_dir}", "task.num_symbols=7", "env.gen_length=16", "env.block_length=8",
            "teachers=[fast_dllm:threshold=0.5]", "prompts=40", "dagger_prompts=20", "steps_per_round=60",
            "batch_steps=64", "eval.num_examples=30", f"out_dir={out}", "progress=false"]
    assert main(args) == 0
    summary = json.loads((out / "imitate.json").read_text())
    assert [r["states"] > 0 for r in summary["rounds"]] == [True, True]  # the teacher's states, then DAgger's
    assert summary["rounds"][1]["total_states"] == sum(r["states"] for r in summary["rounds"])
    teacher, clone = summary["eval"]
    assert teacher["who"] == "teacher" and clone["who"] == "policy"
    assert abs(clone["accuracy"] - teacher["accuracy"]) <= 0.2 and abs(clone["mean_nfe"] - teacher["mean_nfe"]) < 2
    info = policy_info(out)
    assert info["teacher"] == "fast_dllm threshold=0.5" and info["gen_length"] == 16 and info["block_length"] == 8
    assert info["imitation"]["dagger_rounds"] == 1 and not info["imitation"]["interrupted"]
    assert load_policy(out).config.inputs == ["confidence"]
    assert "| policy |" in capsys.readouterr().out
    assert main(args) == 2 and "is not empty" in capsys.readouterr().err  # a second run never overwrites it


def test_the_default_teacher_is_left_run_and_its_student_reads_what_it_reads(tiny_model_dir, tmp_path):
    """No teacher given: the frontier's rule (left_run 0.9/0.4); policy.inputs left empty: the confidence and the
    `repeat` input left_run decides on, so `unmask train init_from=` takes the clone as it is."""
    out = tmp_path / "default"
    assert main(["imitate", f"model={tiny_model_dir}", "task.num_symbols=7", "env.gen_length=16",
                 "env.block_length=8", "prompts=20", "dagger_rounds=0", "steps_per_round=10", "batch_steps=32",
                 "eval.num_examples=0", f"out_dir={out}", "progress=false"]) == 0
    assert policy_info(out)["teacher"] == "left_run threshold=0.9 run_threshold=0.4"
    assert load_policy(out).config.inputs == ["confidence", "repeat"]


def test_several_teachers_make_one_alpha_conditioned_policy(tiny_model_dir, tmp_path):
    out = tmp_path / "family"
    assert main(["imitate", f"model={tiny_model_dir}", "task.num_symbols=7", "env.gen_length=16",
                 "env.block_length=16", "teacher_block_length=8",
                 "teachers=[fast_dllm:threshold=0.9,fast_dllm:threshold=0.5]", "teacher_alphas=[0.3,3]",
                 "prompts=20", "dagger_rounds=0", "steps_per_round=20", "batch_steps=32", "eval.num_examples=10",
                 f"out_dir={out}", "progress=false"]) == 0
    policy, info = load_policy(out), policy_info(out)
    assert policy.config.alpha_conditioned and info["alpha_range"] == [0.3, 3.0]
    assert info["teacher"] == "fast_dllm threshold=0.9 in blocks of 8 / fast_dllm threshold=0.5 in blocks of 8"
    rows = json.loads((out / "imitate.json").read_text())["eval"]
    assert [(r["who"], r["alpha"]) for r in rows] == [("teacher", 0.3), ("policy", 0.3), ("teacher", 3.0),
                                                      ("policy", 3.0)]
    response = json.loads((out / "imitate.json").read_text())["alpha_response"]
    assert response["responds"] == (not response["why"])  # said on stderr too when it does not


def test_a_clone_that_ignores_alpha_is_named():
    from unmask.rollout.imitation import alpha_response

    def rows(policy_nfe):
        return [r for alpha, teacher, mine in zip((0.3, 1.0, 3.0), (11.3, 11.0, 10.4), policy_nfe)
                for r in ({"who": "teacher", "alpha": alpha, "mean_nfe": teacher},
                          {"who": "policy", "alpha": alpha, "mean_nfe": mine})]

    assert alpha_response(rows([11.2, 11.0, 10.8]))["responds"]  # 0.4 NFE: more than a third of the teachers' 0.9
    flat = alpha_response(rows([11.2, 11.2, 11.1]))
    assert not flat["responds"] and "a spread of 0.10, under a third of its teachers' (0.90)" in flat["why"]
    rising = alpha_response(rows([10.0, 11.0, 9.0]))
    assert not rising["responds"] and "not falling as alpha grows" in rising["why"]


def test_every_rule_of_the_sampler_table_can_teach_the_frechet_rule_and_the_oracle_included():
    from unmask.rollout.config import ImitateConfig, check_imitate
    from unmask.rollout.imitation import teachers_of

    cfg = ImitateConfig(teachers=["frechet:delta=0.25", "oracle:reference=top_k", "eb:gamma=0.5"],
                        teacher_alphas=[0.3, 1.0, 3.0], teacher_block_length=8)
    check_imitate(cfg)
    assert [t.describe() for t in teachers_of(cfg)] == [
        "frechet delta=0.25 in blocks of 8", "oracle of top_k steps=0 in blocks of 8", "eb gamma=0.5 in blocks of 8"]
