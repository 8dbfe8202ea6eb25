"""`unmask pareto`: a grid of samplers in semi-AR and full diffusion, with a table and a PNG."""

import json
from pathlib import Path

import pytest

from unmask.cli.main import main
from unmask.rollout.report import pareto_front


def test_pareto_front_keeps_only_undominated_points():
    pts = [(10, 0.5), (20, 0.4), (8, 0.2), (30, 0.9), (30, 0.7)]
    assert pareto_front(pts) == [(8, 0.2), (10, 0.5), (30, 0.9)]


def test_each_policy_point_is_set_against_the_best_heuristic_at_no_more_nfe():
    from unmask.rollout.report import against_heuristics

    def row(sampler, setting, bl, acc, nfe):
        return {"sampler": sampler, "setting": setting, "block_length": bl, "accuracy": acc, "mean_nfe": nfe}

    rows = [row("fast_dllm", "fast 0.9", 8, 0.99, 11.3), row("eb", "eb 0.5", 8, 0.94, 8.4),
            row("eb", "eb 1.0", 8, 0.30, 6.0), row("fast_dllm", "fast 0.9 full", 24, 0.75, 11.0),
            row("policy", "p", 8, 0.90, 9.0), row("policy (alpha-conditioned)", "q", 8, 0.5, 5.0),
            row("policy", "p", 24, 0.8, 8.9)]
    versus = against_heuristics(rows)
    assert [(v["policy"], v["best heuristic at <= NFE"]) for v in versus] == [
        ("p", "eb 0.5: 0.940 @ 8.4"), ("q", "none"), ("p", "none")]
    assert versus[0]["difference"] == pytest.approx(-0.04) and versus[1]["difference"] is None


def test_the_gap_to_the_limit_line_is_read_at_equal_accuracy():
    from unmask.rollout.report import against_limit, limit_nfe

    def row(sampler, bl, acc, nfe, setting="s"):
        return {"sampler": sampler, "setting": setting, "block_length": bl, "accuracy": acc, "mean_nfe": nfe}

    line = [row("oracle", 8, 0.5, 4.0), row("oracle", 8, 0.9, 6.0), row("oracle", 8, 0.7, 7.0)]  # 0.7 @ 7 dominated
    assert limit_nfe(line, 0.7) == (pytest.approx(5.0), "=") and limit_nfe(line, 0.9) == (pytest.approx(6.0), "=")
    assert limit_nfe(line, 0.95) == (None, "above") and limit_nfe(line, 0.3) == (4.0, "<=")  # at most 4 there
    gaps = against_limit([*line, row("eb", 8, 0.7, 8.4, "eb"), row("eb", 24, 0.7, 8.4, "no line at 24"),
                          row("top_k", 8, 0.2, 6.0, "slow"), row("top_k", 8, 0.99, 24.0, "best")])
    assert gaps == [{"block_length": 8, "setting": "eb", "point": "0.700 @ 8.4", "limit NFE": "5.00",
                     "NFE gap": "+3.40", "x limit": "1.68"},
                    {"block_length": 8, "setting": "slow", "point": "0.200 @ 6.0", "limit NFE": "<= 4.00",
                     "NFE gap": ">= +2.00", "x limit": ">= 1.50"},
                    {"block_length": 8, "setting": "best", "point": "0.990 @ 24.0", "limit NFE": "above the line",
                     "NFE gap": "", "x limit": ""}]


def test_pareto_command_writes_table_plot_and_config(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "p"
    code = main(["pareto", f"model={tiny_model_dir}", "heuristic_grid=small", "num_examples=6", "env.gen_length=16",
                 "block_lengths=[4,16]", f"out_dir={out}", "progress=false"])
    assert code == 0
    rows = json.loads((out / "pareto.json").read_text())["rows"]
    assert {r["mode"] for r in rows} == {"semi-AR", "full diffusion"}
    assert {r["sampler"] for r in rows} == {"top_k", "fast_dllm", "left_threshold", "left_run", "frechet", "oracle"}
    limit = [r["setting"] for r in rows if r["sampler"] == "oracle"]
    assert "oracle of top_k steps=0" in limit and "oracle of top_k steps=0 in blocks of 4" in limit  # BL 4 and 16
    top1 = [r for r in rows if r["setting"] == "top_k steps=16"]
    assert all(r["mean_nfe"] == 16 for r in top1)  # one token per step = L forwards
    png = (out / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    table = (out / "pareto.md").read_text()
    assert "| mode |" in table and "the limit: the oracle" in table and "| x limit |" in table
    assert "oracle" not in table.split("the limit")[0]  # apart from the samplers one can deploy
    assert "block_lengths" in (out / "config.yaml").read_text()
    assert "wrote" in capsys.readouterr().out


def test_pareto_always_adds_full_diffusion_and_checks_block_lengths(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["pareto", f"model={tiny_model_dir}", "heuristic_grid=small", "num_examples=3", "env.gen_length=8",
                 f"out_dir={out}", "progress=false"]) == 0
    rows = json.loads((out / "pareto.json").read_text())["rows"]
    assert {r["block_length"] for r in rows} == {4, 8}  # default [4, 8] semi-AR, L=8 is full diffusion
    assert main(["pareto", f"model={tiny_model_dir}", "env.gen_length=12", "block_lengths=[5]",
                 f"out_dir={out}", "progress=false"]) == 2
    assert "block_lengths entry 5" in capsys.readouterr().err


def test_the_frontier_report_ships_the_policies_on_each_mode_s_front(tmp_path):
    """experiments.frontier.publish: policy points are the mean over seeds beside every heuristic; the per-seed
    points on each mode's front are copied into the results with the eval keys that reproduce them, and a policy
    shipped before that no longer makes a front is removed."""
    from unmask.experiments.frontier import publish

    def checkpoint(name: str) -> str:
        path = tmp_path / "runs" / name
        path.mkdir(parents=True)
        (path / "config.json").write_text("{}")
        (path / "model.safetensors").write_bytes(b"weights of " + name.encode())
        return str(path)

    def point(name, bl, seed, acc, nfe, ckpt, alpha=None):
        return {"name": name, "block_length": bl, "seed": seed, "accuracy": acc, "mean_nfe": nfe,
                "checkpoint": ckpt, "minutes": 2.0, "alpha": alpha}

    clone0, clone1, family = checkpoint("imitate-0"), checkpoint("imitate-1"), checkpoint("family")
    rows = [point("imitation", 8, 0, 0.99, 11.0, clone0), point("imitation", 8, 1, 0.97, 11.5, clone1),
            point("alpha-conditioned imitation, alpha=3", 8, 0, 0.90, 9.0, family, alpha=3.0)]
    heuristics = [{"mode": "semi-AR", "block_length": 8, "sampler": "eb", "setting": "eb gamma=0.5",
                   "accuracy": 0.94, "mean_nfe": 8.4},
                  {"mode": "semi-AR", "block_length": 8, "sampler": "oracle", "setting": "oracle", "accuracy": 0.97,
                   "mean_nfe": 5.9},
                  {"mode": "semi-AR", "block_length": 4, "sampler": "eb", "setting": "eb gamma=0.5",
                   "accuracy": 0.93, "mean_nfe": 10.1}]
    out = tmp_path / "results"
    (out / "policies" / "bl8-paper-s0").mkdir(parents=True)  # shipped by an earlier publish, no longer on a front
    table = publish(rows, heuristics, out)
    assert sorted(p.name for p in (out / "policies").iterdir()) == ["bl8-family-s0", "bl8-imitate-0-s0"]
    report = json.loads((out / "frontier.json").read_text())
    shipped = {p["checkpoint"]: p for p in report["points"]}
    assert sorted(Path(c).name for c in shipped) == ["bl8-family-s0", "bl8-imitate-0-s0"]  # seed 1 is dominated
    assert all((Path(c) / "model.safetensors").is_file() for c in shipped)
    family_point = next(p for p in report["points"] if "family" in p["checkpoint"])
    assert family_point["eval"] == {"sampler.alpha": 3.0} and family_point["mean_nfe"] == 9.0
    imitation = next(s for s in report["summary"] if s["name"] == "imitation")
    assert imitation["accuracy"] == pytest.approx(0.98) and imitation["mean_nfe"] == pytest.approx(11.25)
    assert {r["block_length"] for r in report["rows"]} == {8}  # BL = 4 is not one of the frontier's modes
    assert report["runs"] == rows  # every seed's row, for a later run to add a point to
    assert {r["sampler"] for r in report["rows"] if r["sampler"].startswith("policy")} == {
        "policy: imitation", "policy: alpha-conditioned"}
    from unmask.experiments.frontier import series

    assert series("imitation + GRPO alpha=3") == "policy: imitation + GRPO" and series("imitation") == (
        "policy: imitation")
    assert series("imitation of left_run + GRPO alpha=10") == "policy: imitation + GRPO"
    assert series("imitation of left_run 0.9/0.4") == "policy: imitation"
    assert "imitation (2 seeds: 0.970-0.990, 2.0 min) | 0.980 @ 11.2 | eb gamma=0.5: 0.940 @ 8.4 | 0.040" in table
    assert (out / "frontier.png").stat().st_size > 0 and (out / "frontier.md").read_text() == table


def test_every_shipped_frontier_point_is_a_policy_of_its_mode():
    """docs/results/frontier.json: each point names a shipped policy that loads, was made for that point's block
    length on the built-in canvas, and reads what the table says; the folder holds exactly the points."""
    from unmask.learner.policy import load_policy, policy_info

    results = Path(__file__).resolve().parents[1] / "docs" / "results"
    report = json.loads((results / "frontier.json").read_text())
    shipped = {p.name for p in (results / "policies").iterdir() if p.is_dir()}
    assert {Path(p["checkpoint"]).name for p in report["points"]} == shipped
    names = {(s["block_length"], s["name"]) for s in report["summary"]}
    for point in report["points"]:
        folder = results.parent.parent / point["checkpoint"]
        policy, info = load_policy(folder), policy_info(folder)
        assert (point["block_length"], point["name"]) in names
        assert info["block_length"] == point["block_length"] and info["gen_length"] == 24, point["checkpoint"]
        assert policy.config.alpha_conditioned == ("sampler.alpha" in point["eval"])
        assert ("repeat" in policy.config.inputs) == ("left_run" in point["name"]), point["checkpoint"]


def test_samplers_run_together_decode_exactly_as_each_alone(tiny_dllm, cycles):
    """run_together: every (sampler, prompt) a row of one batched env, the rows of a prompt side by side: the same
    canvases and NFE as each sampler's own run_episodes, with what they share forwarded once."""
    from unmask.envs.config import EnvConfig, SamplerConfig
    from unmask.rollout.evaluate import run_episodes, run_together, together
    from unmask.rollout.samplers import make_sampler

    examples = cycles.examples("test", 12, seed=3)
    env = EnvConfig(gen_length=16, block_length=8, batch_size=5)  # batches of 5 rows: several per run
    settings = [SamplerConfig(name="top_k", steps=16), SamplerConfig(name="fast_dllm", threshold=0.5),
                SamplerConfig(name="left_run", threshold=0.6, run_threshold=0.3), SamplerConfig(name="eb", gamma=1.0)]
    samplers = [make_sampler(s) for s in settings]
    assert together(samplers, env)
    joint = run_together(tiny_dllm, cycles, examples, samplers, env)
    for sampler, episodes in zip(samplers, joint, strict=True):
        alone = run_episodes(tiny_dllm, cycles, examples, sampler, env)
        assert [(e.generation.tokens, e.generation.nfe, e.correct) for e in episodes] == [
            (e.generation.tokens, e.generation.nfe, e.correct) for e in alone], sampler.describe()
    assert not together([make_sampler(SamplerConfig(name="random", k=2))], env)
    oracles = [make_sampler(SamplerConfig(name="oracle", reference=r, block_length=b))
               for r, b in (("top_k", 0), ("fast_dllm:threshold=0.5", 4))]
    assert together(oracles, env)  # their references first, then the oracles, each as alone
    for oracle, episodes in zip(oracles, run_together(tiny_dllm, cycles, examples, oracles, env), strict=True):
        alone = run_episodes(tiny_dllm, cycles, examples, oracle, env)
        assert [(e.generation.tokens, e.generation.nfe) for e in episodes] == [
            (e.generation.tokens, e.generation.nfe) for e in alone], oracle.describe()
    assert not together([make_sampler(SamplerConfig(name="oracle", reference="random:k=2"))], env)
    assert not together(samplers, EnvConfig(gen_length=16, block_length=8, temperature=1.0))
