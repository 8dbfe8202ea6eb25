"""teachers=[auto]: `unmask imitate` chooses its teacher from the task, the heuristic with the best reward at the
trade-off asked for (auto_alpha) on held-out training prompts (rollout.pareto.choose_teacher)."""

import json

import pytest

from unmask.cli.main import main
from unmask.envs.config import EnvConfig, SamplerConfig, sampler_spec
from unmask.envs.dllm import load_dllm
from unmask.envs.tasks.cycles import CycleTask
from unmask.learner.policy import policy_info
from unmask.rollout.config import ImitateConfig, check_imitate
from unmask.rollout.pareto import choose_teacher, spec_of


def test_a_spec_rebuilds_its_settings():
    for cfg in (SamplerConfig(name="left_run", threshold=0.9, run_threshold=0.4), SamplerConfig(name="top_k", steps=6),
                SamplerConfig(name="eb", gamma=0.5)):
        assert sampler_spec(spec_of(cfg)) == cfg


def test_the_teacher_is_the_best_reward_at_alpha(monkeypatch):
    """Three candidates on 16 prompts: the best mean reward at alpha teaches; at alpha = 0 the most accurate."""
    import unmask.rollout.pareto as pareto

    grid = [SamplerConfig(name="top_k", steps=24), SamplerConfig(name="fast_dllm", threshold=0.5),
            SamplerConfig(name="left_run", threshold=0.9, run_threshold=0.4)]
    monkeypatch.setattr(pareto, "default_grid", lambda *args: grid)
    dllm = load_dllm("builtin")
    examples = CycleTask().examples("train", 16, seed=3)
    spec, rows = choose_teacher(dllm, CycleTask(), examples, EnvConfig(block_length=8), alpha=3.0)
    assert spec == "left_run:threshold=0.9;run_threshold=0.4" == rows[0]["teacher"]
    assert [r["reward"] for r in rows] == sorted((r["reward"] for r in rows), reverse=True)
    slow = {r["teacher"]: r for r in rows}["top_k:steps=24"]
    assert slow["mean_nfe"] == 24 and slow["reward"] == pytest.approx(slow["accuracy"] * (1 / 24) ** 3)
    careful, rows0 = choose_teacher(dllm, CycleTask(), examples, EnvConfig(block_length=8), alpha=0.0)
    assert rows0[0]["accuracy"] == max(r["accuracy"] for r in rows0)  # alpha 0: accuracy alone, then fewer NFE
    # the candidates decode together (run_together): each one's episodes as alone
    from unmask.rollout.evaluate import run_episodes, summarize
    from unmask.rollout.samplers import make_sampler

    for cfg in grid:
        alone = summarize(run_episodes(dllm, CycleTask(), examples, make_sampler(cfg), EnvConfig(block_length=8)), 24)
        row = {r["teacher"]: r for r in rows}[spec_of(cfg)]
        assert (row["accuracy"], row["mean_nfe"]) == (alone["accuracy"], alone["mean_nfe"]), spec_of(cfg)


def test_auto_is_one_teacher_alone():
    with pytest.raises(ValueError, match=r"teachers=\[auto\] chooses one teacher"):
        check_imitate(ImitateConfig(teachers=["auto", "fast_dllm"], teacher_alphas=[1.0, 3.0]))
    with pytest.raises(ValueError, match="auto_alpha must be >= 0"):
        check_imitate(ImitateConfig(teachers=["auto"], auto_alpha=-1.0))


@pytest.mark.slow
def test_imitate_with_an_auto_teacher_records_its_choice(tiny_model_dir, tmp_path):
    out = tmp_path / "clone"
    args = ["imitate", f"model={tiny_model_dir}", "task.num_symbols=7", "env.gen_length=16", "env.block_length=8",
            "teachers=[auto]", "auto_prompts=12", "auto_alpha=1", "prompts=20", "dagger_rounds=0",
            "steps_per_round=20", "batch_steps=32", "eval.num_examples=10", f"out_dir={out}", "progress=false"]
    assert main(args) == 0
    summary = json.loads((out / "imitate.json").read_text())
    auto = summary["auto"]
    assert auto["alpha"] == 1 and auto["prompts"] == 12 and auto["teacher"] == auto["candidates"][0]["teacher"]
    assert summary["eval"][0]["teacher"] == auto["teacher"]  # the clone is evaluated beside the teacher it had
    assert policy_info(out)["teacher"] == summary["teachers"][0]
