"""GSM8K and MATH-500 from fixture files the test writes: gold parsing, answer extraction, verifiers, splits."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unmask.envs.config import TaskConfig
from unmask.envs.tasks import make_task
from unmask.envs.tasks.math_word import final_answer, gsm8k_correct, gsm8k_gold, last_boxed, math_correct

GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
     "answer": "He has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"},
    {"question": "A shop sells 1,200 pens a day. How many in 2 days?",
     "answer": "1,200 * 2 = 2,400\n#### 2,400"},
]
MATH_ROWS = [
    {"problem": "Compute $\\frac{1}{2}+\\frac{1}{4}$.", "solution": "It is $\\boxed{\\frac{3}{4}}$.",
     "answer": "\\frac{3}{4}", "unique_id": "test/algebra/1.json"},
    {"problem": "What is $2^{10}$?", "solution": "$2^{10} = \\boxed{1024}$."},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gold_and_extraction_rules():
    assert gsm8k_gold("so 5\n#### 1,234") == "1234"
    with pytest.raises(ValueError, match="####"):
        gsm8k_gold("no marker")
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{1}{2}} end") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{unclosed") is None and last_boxed("nothing") is None
    assert final_answer("<reasoning>2+2=4, not \\boxed{5}</reasoning><answer>\\boxed{4}</answer>") == "4"
    assert final_answer("<reasoning>x</reasoning><answer> 17 ") == "17"  # unclosed tag: up to the end
    assert final_answer("the result is 9") == "the result is 9"


def test_gsm8k_verifier_follows_the_paper():
    assert gsm8k_correct("<reasoning>3+4</reasoning><answer>\\boxed{7}</answer>", "7")
    assert gsm8k_correct("<answer>7.0000000001</answer>", "7")  # |difference| < 1e-6
    assert gsm8k_correct("<answer>2,400</answer>", "2400")
    assert gsm8k_correct("so the answer is 7", "7")  # fallback: last number of the completion
    assert not gsm8k_correct("<answer>\\boxed{8}</answer> 7", "7")  # the boxed answer wins over stray numbers
    assert not gsm8k_correct("<answer>no idea</answer>", "7")
    for spelled in ("\\boxed{1{,}000}", "\\boxed{1,\\!000}", "\\boxed{1\\,000}", "\\boxed{\\$1,000}",
                    "\\boxed{\\frac{2000}{2}}", "\\boxed{\\dfrac{2000}{2}}"):
        assert gsm8k_correct(f"<answer>{spelled}</answer>", "1000"), spelled
    assert gsm8k_correct("<answer>-\\$5</answer>", "-5") and gsm8k_correct("<answer>- $5</answer>", "-5")
    assert not gsm8k_correct("<answer>\\$5</answer>", "-5")
    # the <answer> section decides, even when the reasoning boxed something else
    assert gsm8k_correct("<reasoning>maybe \\boxed{5}</reasoning><answer>7</answer>", "7")
    assert not gsm8k_correct("<reasoning>maybe \\boxed{7}</reasoning><answer>5</answer>", "7")


def test_math_verifier_uses_math_verify_equivalence():
    assert math_correct("<answer>\\boxed{\\frac{3}{4}}</answer>", "\\frac{3}{4}")
    assert math_correct("<answer>\\boxed{0.75}</answer>", "\\frac{3}{4}")
    assert math_correct("<answer>\\boxed{\\dfrac{6}{8}}</answer>", "\\frac{3}{4}")
    assert not math_correct("<answer>\\boxed{\\frac{2}{3}}</answer>", "\\frac{3}{4}")
    assert not math_correct("<answer></answer>", "\\frac{3}{4}")
    # bare LaTeX golds (MATH-500's `answer` field) are parsed whole, not as their leading number
    assert math_correct("<answer>\\boxed{3\\sqrt{2}}</answer>", "3\\sqrt2")
    assert not math_correct("<answer>\\boxed{3}</answer>", "3\\sqrt{2}")
    assert not math_correct("<answer>\\boxed{2}</answer>", "2\\sqrt{3}")
    assert math_correct("<answer>\\boxed{\\pi}</answer>", "\\pi")
    tuple_gold = "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert math_correct("<answer>\\boxed{(3, \\frac{\\pi}{2})}</answer>", tuple_gold)
    assert not math_correct("<answer>\\boxed{3}</answer>", tuple_gold)


def test_gsm8k_from_a_directory_of_official_splits(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", GSM8K_ROWS[:1])
    pq.write_table(pa.Table.from_pylist(GSM8K_ROWS[1:]), tmp_path / "test.parquet")
    task = make_task(TaskConfig(name="gsm8k", path=str(tmp_path)))
    (train,), (test,) = task.examples("train", -1), task.examples("test", -1)
    assert train.answer == "7" and test.answer == "2400"
    assert test.prompt.startswith("Respond in the following format:\n<reasoning>")
    assert test.prompt.endswith("How many in 2 days?") and task.response_prefix == "<reasoning>"
    assert task.verify("<reasoning>1200*2</reasoning><answer>\\boxed{2400}</answer>", test)


def test_math500_from_one_file_split_by_hash(tmp_path):
    path = write_jsonl(tmp_path / "math.jsonl", MATH_ROWS)
    task = make_task(TaskConfig(name="math500", path=str(path), test_fraction=1.0))
    examples = {ex.answer: ex for ex in task.examples("test", -1)}
    assert set(examples) == {"\\frac{3}{4}", "1024"}  # the answer field, else the boxed solution
    assert task.examples("train", -1) == []
    assert "Wrap the final answer in a \\boxed{}" in examples["1024"].prompt
    assert examples["\\frac{3}{4}"].id == "math500/test/algebra/1.json"
    assert task.verify("<answer>\\boxed{1024}</answer>", examples["1024"])


def test_the_papers_training_mixture(tmp_path):
    for name, rows in (("gsm8k", GSM8K_ROWS), ("math500", MATH_ROWS)):
        (tmp_path / name).mkdir()
        write_jsonl(tmp_path / name / "train.jsonl", rows)
    task = make_task(TaskConfig(name="gsm8k_math", path=str(tmp_path)))
    train = task.examples("train", -1, seed=3)
    assert sorted(ex.meta["source"] for ex in train) == ["gsm8k"] * 2 + ["math500"] * 2
    assert len({ex.id for ex in train}) == 4 and task.response_prefix == "<reasoning>"
    by_answer = {ex.answer: ex for ex in train}
    assert task.verify("<answer>\\boxed{7}</answer>", by_answer["7"])  # GSM8K's numeric check
    assert task.verify("<answer>\\boxed{0.75}</answer>", by_answer["\\frac{3}{4}"])  # MATH's math-verify
    with pytest.raises(FileNotFoundError, match="directory holding gsm8k/ and math500/"):
        make_task(TaskConfig(name="gsm8k_math", path=str(tmp_path / "gsm8k" / "train.jsonl")))


def test_bad_sources_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_task(TaskConfig(name="gsm8k", path=str(tmp_path / "missing")))
    write_jsonl(tmp_path / "train.jsonl", GSM8K_ROWS)
    with pytest.raises(FileNotFoundError, match="no test.jsonl or test.parquet"):
        make_task(TaskConfig(name="gsm8k", path=str(tmp_path))).examples("test", 5)
    (tmp_path / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{broken\n')
    with pytest.raises(ValueError, match=r"test.jsonl:2: malformed JSON"):
        make_task(TaskConfig(name="gsm8k", path=str(tmp_path))).examples("test", 5)
    write_jsonl(tmp_path / "test.jsonl", [{"problem": "no question field", "answer": "#### 1"}])
    with pytest.raises(ValueError, match="has no 'question' field"):
        make_task(TaskConfig(name="gsm8k", path=str(tmp_path))).examples("test", 5)


def test_hub_source_without_datasets_says_what_to_do():
    try:
        import datasets  # noqa: F401
        pytest.skip("`datasets` is installed here; the hub path would try the network")
    except ImportError:
        pass
    with pytest.raises(ValueError, match="needs the `datasets` package"):
        make_task(TaskConfig(name="gsm8k")).examples("test", 5)
