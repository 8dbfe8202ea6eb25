import json
import random
import sys

import pytest

from unmask.envs.config import TaskConfig
from unmask.envs.tasks import make_task
from unmask.envs.tasks.base import Example
from unmask.envs.tasks.cycles import CycleTask
from unmask.envs.tasks.jsonl import JsonlTask
from unmask.envs.tasks.verifiers import math_equivalent, numeric


def test_cycle_trace_both_directions():
    task = CycleTask(num_symbols=4)
    # f: a->c, b->a, c->d, d->b ; the cycle of b: b a c d b
    ex = Example(id="x", prompt="cadb?b", answer=">bacdb")
    assert task.trace(ex.prompt, ">") == "bacdb"
    assert task.trace(ex.prompt, "<") == "bdcab"
    assert task.verify(">bacdb", ex) and task.verify("<bdcab", ex)
    assert not task.verify(">bdcab", ex)  # backward letters under a forward mark
    assert not task.verify(">bacd", ex)  # cut short (premature EOS)
    assert not task.verify("bacdb", ex) and not task.verify("", ex)


def test_cycle_fixed_point_and_lengths():
    task = CycleTask(num_symbols=3)
    ex = Example(id="x", prompt="acb?a", answer=">aa")  # f(a)=a
    assert task.verify(">aa", ex) and task.verify("<aa", ex)
    lengths = {len(e.answer) for e in CycleTask(10).examples("train", 2000, seed=1)}
    assert lengths == set(range(3, 13))  # cycle length of s is uniform on 1..n


def test_cycle_directions_and_pretraining_length_skew():
    forward = CycleTask(num_symbols=7, directions="forward")
    assert {e.answer[0] for e in forward.examples("test", 200, seed=0)} == {">"}
    assert {e.answer[0] for e in CycleTask(7).examples("test", 200, seed=0)} == {">", "<"}
    # the skew applies to pretraining draws only: P(k) ~ decay^(k-1), so with decay 0.4 and n=7
    # P(k=1) = 1 / (1 + .4 + .4^2 + ... + .4^6) = 0.60, while RL/test examples stay uniform (1/7)
    skewed = CycleTask(num_symbols=7, pretrain_length_decay=0.4)
    rng = random.Random(0)
    draws = [skewed.pretrain_example(rng) for _ in range(3000)]
    assert all(skewed.split_of(e.prompt) == "train" for e in draws)
    share_k1 = sum(len(e.answer) == 3 for e in draws) / len(draws)
    assert 0.55 < share_k1 < 0.65
    natural = [len(e.answer) == 3 for e in skewed.examples("train", 3000, seed=0)]
    assert 0.11 < sum(natural) / len(natural) < 0.18
    with pytest.raises(ValueError, match="task.directions"):
        CycleTask(directions="sideways")
    with pytest.raises(ValueError, match="pretrain_length_decay"):
        CycleTask(pretrain_length_decay=0.0)


def test_cycle_separators_are_free_phrasing_the_verifier_accepts():
    task = CycleTask(num_symbols=4, directions="forward", separator_prob=0.5)
    ex = Example(id="x", prompt="cadb?b", answer=">b,acdb")
    for ok in (">bacdb", ">b,a,c,d,b", ">ba,cd,b", "<b,dcab"):
        assert task.verify(ok, ex), ok
    for bad in (">,bacdb", ">bacdb,", ">b,,acdb", ">b,acd", ">b,a,c,d,b,"):
        assert not task.verify(bad, ex), bad
    answers = [e.answer for e in CycleTask(7, separator_prob=0.5).examples("test", 300, seed=0)]
    gaps = sum(len(a.replace(",", "")) - 2 for a in answers)  # places between two letters
    assert 0.4 < sum(a.count(",") for a in answers) / gaps < 0.6
    assert max(len(a) for a in answers) <= CycleTask(7, separator_prob=0.5).max_answer_length() == 16
    assert CycleTask(7).max_answer_length() == 9
    with pytest.raises(ValueError, match="separator_prob"):
        CycleTask(separator_prob=1.0)


def test_cycle_splits_are_disjoint_and_reproducible():
    task = CycleTask()
    test = task.examples("test", 300, seed=0)
    train = task.examples("train", 3000, seed=0)
    assert {e.prompt for e in test}.isdisjoint({e.prompt for e in train})
    assert [e.prompt for e in test] == [e.prompt for e in task.examples("test", 300, seed=0)]
    assert len({e.prompt for e in test}) == 300
    for e in test:
        assert task.verify(e.answer, e)
    with pytest.raises(ValueError, match="unknown split"):
        task.examples("dev", 1)


def write_jsonl(path, rows, raw_lines=()):
    with open(path, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
        for line in raw_lines:
            fh.write(line + "\n")
    return str(path)


def test_jsonl_task_reads_splits_and_verifies(tmp_path):
    rows = [{"prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(200)]
    task = JsonlTask(write_jsonl(tmp_path / "d.jsonl", rows), verifier="numeric", test_fraction=0.2)
    test, train = task.examples("test", -1), task.examples("train", -1)
    assert len(test) + len(train) == 200 and 20 < len(test) < 60
    assert {e.prompt for e in test}.isdisjoint({e.prompt for e in train})
    ex = test[0]
    assert task.verify(f"the answer is {ex.answer}", ex)
    assert not task.verify("no number", ex)


@pytest.mark.parametrize("line, message", [
    ("{not json", "malformed JSON"),
    ('{"prompt": "x"}', "needs the keys"),
    ('{"prompt": 3, "answer": "x"}', "must be a string"),
])
def test_jsonl_malformed_line_names_the_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "answer": "b"}], [line])
    with pytest.raises(ValueError, match=rf"bad.jsonl:2: .*{message}"):
        JsonlTask(path)


def test_jsonl_missing_file_and_unknown_verifier(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        JsonlTask(str(tmp_path / "nope.jsonl"))
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "answer": "b"}])
    with pytest.raises(ValueError, match="unknown verifier"):
        JsonlTask(path, verifier="fuzzy")
    with pytest.raises(ValueError, match="unknown task"):
        make_task(TaskConfig(name="nope"))


def test_verifiers_numeric_math_and_callable(tmp_path, monkeypatch):
    assert numeric("so 1,234.0", "1234") and not numeric("1233", "1234")
    assert math_equivalent("the answer is $\\frac{1}{2}$", "0.5")
    assert math_equivalent("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}")
    assert not math_equivalent("\\boxed{3}", "\\frac{1}{2}")
    (tmp_path / "myverify.py").write_text("def check(c, a):\n    return c.lower() == a.lower()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("myverify", None)
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "answer": "Yes"}])
    task = JsonlTask(path, verifier="myverify:check", test_fraction=1.0)
    ex = task.examples("test", -1)[0]
    assert task.verify("yes", ex) and not task.verify("no", ex)
    with pytest.raises(ValueError, match="cannot import verifier"):
        JsonlTask(path, verifier="myverify:missing")


def test_random_example_answers_verify():
    task = CycleTask(num_symbols=7)
    rng = random.Random(0)
    for _ in range(200):
        ex = task.random_example(rng)
        assert task.verify(ex.answer, ex)


def test_map_applies_the_permutation_to_each_letter_and_keeps_its_splits_apart():
    from unmask.envs.tasks.map import MapTask

    task = MapTask(num_symbols=10)
    ex = Example(id="x", prompt="cadbgfehji?bad.....", answer=">acb")
    assert task.apply(ex.prompt) == ">acb" and task.verify(">acb", ex) and not task.verify(">acbb", ex)
    train, test = task.examples("train", 300), task.examples("test", 300, seed=1)
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert all(task.verify(e.answer, e) and len(e.prompt) == 19 for e in train + test)
    assert {e.meta["word_length"] for e in test} == set(range(2, 9))
    assert task.examples("test", 5, seed=2) == task.examples("test", 5, seed=2)
    rng = random.Random(0)
    assert all(task.split_of(task.pretrain_example(rng).prompt) == "train" for _ in range(200))
    assert set("".join(e.prompt + e.answer for e in train)) <= set(task.alphabet)
    # 2 letters make 2 permutations x 508 words, about 50 test prompts: asking for more is one line, not a hang
    small = MapTask(num_symbols=2)
    held_out = small.examples("test", 20)
    assert len({e.prompt for e in held_out}) == 20
    with pytest.raises(ValueError, match="the test split of map with task.num_symbols=2 has fewer than 500 distinct"):
        small.examples("test", 500)


def trace(given: str) -> str:
    """The path family's answer recomputed from its prompt: f's images, ?, start, end."""
    image, start, end = given[:10], given[11], given[12]
    path = [start]
    while path[-1] != end:
        path.append(image["abcdefghij".index(path[-1])])
    return ">" + "".join(path)


@pytest.mark.parametrize("family", ["sort", "filter", "psum", "path", "commas"])
def test_our_own_task_families_are_jsonl_tasks_with_held_out_prompts(family, tmp_path):
    from unmask.experiments.own_tasks import write

    train, test = write(family, str(tmp_path), train=300, test=50)
    rows = {split: [json.loads(line) for line in path.read_text().splitlines()] for split, path in
            (("train", train), ("test", test))}
    assert len(rows["train"]) == 300 and len(rows["test"]) == 50
    assert not {r["prompt"] for r in rows["train"]} & {r["prompt"] for r in rows["test"]}
    def kept(given: str) -> str:
        return "".join(c for c in given if c > "m")

    rule = {"sort": lambda given: "".join(sorted(given)), "filter": kept, "commas": kept, "path": trace,
            "psum": lambda given: "".join(str(sum(map(int, given[: i + 1])) % 10) for i in range(len(given)))}[family]
    verbatim = (lambda answer: answer.replace(",", "")) if family == "commas" else (lambda answer: answer)
    assert all(verbatim(row["answer"]) == rule(row["prompt"].removesuffix("=")) for row in rows["train"] + rows["test"])
    if family == "path":  # a permutation, and the end a letter of the start's cycle other than the start
        assert all(sorted(r["prompt"][:10]) == list("abcdefghij") and r["prompt"][11] != r["prompt"][12]
                   for r in rows["train"])
    verifier = "unmask.experiments.own_tasks:free_commas" if family == "commas" else "exact"
    task = make_task(TaskConfig(name="jsonl", path=str(train), test_path=str(test), verifier=verifier))
    examples = task.examples("test", 50)
    assert sorted(ex.answer for ex in examples) == sorted(r["answer"] for r in rows["test"])
    assert task.verify(examples[0].answer, examples[0]) and not task.verify(examples[0].answer + "x", examples[0])


def test_the_commas_family_draws_free_commas_and_its_verifier_takes_any_placement(tmp_path):
    from unmask.experiments.own_tasks import free_commas, write

    train, _ = write("commas", str(tmp_path), train=400, test=10)
    answers = [json.loads(line)["answer"] for line in train.read_text().splitlines()]
    gaps = sum(len(a.replace(",", "")) - 1 for a in answers)
    assert 0.4 < sum(a.count(",") for a in answers) / gaps < 0.6  # a `,` in about half the gaps
    assert free_commas("u,rs", "urs") and free_commas("u,r,s", "u,rs") and free_commas("urs", "u,r,s")
    assert not any(free_commas(c, "u,rs") for c in ("u,,rs", ",urs", "urs,", "ur", "usr", "u,rs,t"))


def test_an_unknown_own_family_is_one_line(tmp_path, capsys):
    from unmask.cli.main import main

    assert main(["own-tasks", "family=nope", f"out_dir={tmp_path}"]) == 2
    assert "unknown family 'nope'" in capsys.readouterr().err and not list(tmp_path.iterdir())
    assert main(["own-tasks", "famly=psum", f"out_dir={tmp_path}"]) == 2  # a misspelt key is no silent default family
    err = capsys.readouterr().err
    assert "unknown key 'famly' for 'unmask own-tasks'; did you mean family?" in err and not list(tmp_path.iterdir())
