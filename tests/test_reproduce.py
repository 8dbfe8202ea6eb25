"""`unmask reproduce preset=quick` end to end on a real local Ray: every part runs once, the findings table and
plots are written, the README block is generated from findings.md, and a second run skips what is done."""

import json

import pytest

from cli.main import main
from envs.tasks.map import MapTask
from experiments.config import README_MARKERS


@pytest.mark.slow
def test_reproduce_quick_writes_every_finding_and_resumes(local_ray, tmp_path, capsys, monkeypatch):
    import envs.dllm

    loads, load = [], envs.dllm.load_env_dllm
    monkeypatch.setattr(envs.dllm, "load_env_dllm", lambda model, *a, **k: loads.append(model) or load(model, *a, **k))
    out, readme = tmp_path / "repro", tmp_path / "README.md"
    start, end = README_MARKERS
    readme.write_text(f"# title\n\nbefore\n{start}\nstale table\n{end}\nafter\n")
    args = ["reproduce", f"out_dir={out}", "preset=quick", f"readme={readme}", "train_seeds=[0]"]
    assert main(args) == 0
    captured = capsys.readouterr()
    report = json.loads((out / "findings.json").read_text())
    findings = report["findings"]
    assert [f["finding"] for f in findings] == list(range(1, 8))
    assert all(f["claim"] and f["paper"] and f["ours"] and isinstance(f["holds"], bool) for f in findings)
    assert not findings[6]["holds"]  # one training seed and two test seeds: finding 7 cannot hold, and says so
    solved = max(p["accuracy"] for label, p in report["points"]["dllm2-map"].items() if not label.startswith("policy"))
    # a family the second dLLM cannot do (after the quick preset's seconds of pretraining) is no test of the policy
    assert ("not a test of the policy" in findings[5]["ours"]) == (solved < 0.05)
    assert not findings[5]["holds"] or solved >= 0.05
    assert report["config"]["max_iterations"] == 3 and report["config"]["test_seeds"] == [0, 1]  # the quick preset
    recipe = report["dllm2"]["recipe"]  # the second dLLM's recipe is recorded, and its data is on disk
    assert recipe["gen_length"] == 32 and recipe["init_from"].endswith("builtin_model")
    families = [json.loads(line)["family"] for line in open(recipe["task"]["path"])]
    assert families.count("map") == families.count("cycles") == 2000
    test_prompts = {ex.prompt for ex in MapTask().examples("test", 1000)}
    assert not test_prompts & {json.loads(line)["prompt"] for line in open(recipe["task"]["path"])}  # held out
    assert loads == ["builtin", recipe["out"]]  # each dLLM loaded once for all of its evaluations
    markdown = (out / "findings.md").read_text()
    assert markdown.count("\n| ") == 1 + 7 and "| 1 | heuristics collapse in full diffusion |" in markdown
    text = readme.read_text()
    assert f"{start}\n{markdown}{end}" in text and "stale table" not in text  # generated, not copied by hand
    assert text.startswith("# title\n\nbefore\n") and text.endswith("after\n")
    for setting in ("semiar", "full", "dllm2", "dllm2-long", "dllm2-map"):
        assert (out / setting / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    points = report["points"]
    assert points["dllm2-long"]["policy dllm2"]["runs"] == 2  # 1 training seed x 2 test seeds
    assert set(points["full"]) >= {"policy full", "policy additive", "top_k steps=0", "fast_dllm threshold=0.5"}
    assert set(points["dllm2-map"]) == {h for h in points["full"] if not h.startswith("policy")} | {"policy dllm2"}
    assert "findings hold here" in captured.out and markdown in captured.out

    (out / "done" / "eval__dllm2-map__policy_dllm2-s0-t1.json").unlink()  # one part lost: only it runs again
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "eval/dllm2-map/policy_dllm2-s0-t1 ..." in err and "train/full-s0: done before, skipped" in err
    ran = [line for line in err.splitlines() if line.startswith("unmask reproduce:") and line.endswith(" ...")]
    assert ran == ["unmask reproduce: eval/dllm2-map/policy_dllm2-s0-t1 ..."]
    assert (out / "findings.md").read_text() == markdown


@pytest.mark.parametrize("args, message", [
    (["preset=bogus"], "unknown preset 'bogus'"),
    (["long_gen_length=24"], "long_gen_length must exceed"),
    (["test_seeds=[]"], "at least one seed"),
])
def test_bad_reproduce_input_is_one_line(args, message, tmp_path, capsys):
    assert main(["reproduce", f"out_dir={tmp_path / 'r'}", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_readme_without_the_markers_is_refused_before_any_work(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert main(["reproduce", f"out_dir={tmp_path / 'r'}", f"readme={readme}"]) == 2
    assert "findings:start" in capsys.readouterr().err and not (tmp_path / "r").exists()


def results(accuracy: float, nfe: float, runs: int = 2) -> list[dict]:
    return [{"accuracy": accuracy, "mean_nfe": nfe}] * runs


def judged(long_heuristic: float) -> dict:
    """Findings over hand-made points where the policy holds at the longer canvas (0.60 -> 0.60)."""
    from experiments.config import ReproduceConfig
    from experiments.reproduce import HEURISTICS, heuristic_label, judge

    def table(heuristic: float, **policies: float) -> dict:
        rows = {heuristic_label(h): results(heuristic - 0.01 * i, 24.0 - 3 * i) for i, h in enumerate(HEURISTICS)}
        return rows | {f"policy {kind}": results(acc, 6.0) for kind, acc in policies.items()}

    points = {"semiar": table(0.99, semiar=0.9), "full": table(0.7, full=0.8, additive=0.5),
              "dllm2": table(0.7, full=0.6, dllm2=0.6), "dllm2-long": table(long_heuristic, dllm2=0.6),
              "dllm2-map": table(0.5, dllm2=0.3)}
    return {f["finding"]: f for f in judge(points, ReproduceConfig())}


def test_the_longer_canvas_finding_needs_both_halves_of_the_claim():
    steady, degraded = judged(long_heuristic=0.7), judged(long_heuristic=0.55)[5]
    assert not steady[5]["holds"] and "the policy holds (+0.000), the heuristics do not degrade further" in steady[5][
        "ours"]
    assert degraded["holds"] and "the heuristics degrade further (-0.150)" in degraded["ours"]
    ood = steady[6]  # on map the policy trails where it led on cycles: the finding holds
    assert ood["holds"] and "`map`" in ood["claim"]
