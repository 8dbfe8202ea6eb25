"""GSM8K and MATH-500 in the paper's format (arXiv 2512.09106 §4 and its released code), from local files or the
Hugging Face hub.

Prompt: the paper's system prompt, a blank line, the question, sent as the user turn (the dLLM adapter
applies the model's chat template); the assistant turn starts with `<reasoning>` as in the paper's
evaluation. Gold answers: GSM8K's text after `####`; MATH's `answer` field, else the last `\\boxed{}` of
its `solution`. Checks: GSM8K compares the number in the last `\\boxed{}` or `<answer>` (falling back to
the last number of the completion) within 1e-6; MATH compares the last `\\boxed{}` (or the `<answer>`
text) with the gold through `math-verify`.

Sources, in order: `task.path` = a directory holding `train.{jsonl,parquet}` and/or `test.{jsonl,parquet}`
(the official splits), or one such file (split by content hash with `task.test_fraction`); otherwise the
`datasets` library loads the public copy (needs hub access).
"""

from __future__ import annotations

import re
from pathlib import Path

from unmask.envs.tasks.base import Example, Task, check_example_size, check_split, hash_split, read_jsonl, seeded_head
from unmask.envs.tasks.verifiers import last_number, math_equivalent

ANSWER_FORMAT = "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"
MATH_SYSTEM_PROMPT = ("You are a math expert. You will be given a question to solve. Solve it step by step. "
                      "Wrap the final answer in a \\boxed{}.\n" + ANSWER_FORMAT.replace("...\n</answer>",
                                                                                   "\\boxed{...}\n</answer>"))
RESPONSE_PREFIX = "<reasoning>"

# name -> (question field, hub dataset per split: (id, config, split))
SOURCES = {
    "gsm8k": ("question", {"train": ("openai/gsm8k", "main", "train"), "test": ("openai/gsm8k", "main", "test")}),
    "math500": ("problem", {"train": ("ankner/math-500", None, "train"),
                            "test": ("HuggingFaceH4/MATH-500", None, "test")}),
}


# ---- answer extraction ------------------------------------------------------------------------------
def last_boxed(text: str) -> str | None:
    """Contents of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None when there is none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def answer_section(text: str) -> str | None:
    """Text of the last `<answer>` section (to `</answer>` or the end)."""
    found = re.findall(r"<answer>(.*?)(?:</answer>|$)", text, flags=re.S)
    return found[-1].strip() if found else None


def final_answer(completion: str) -> str:
    """What a completion answers: its `<answer>` section (the boxed expression in it, if any); without a
    section, the last boxed expression, else all of it."""
    section = answer_section(completion)
    text = section if section is not None else completion
    boxed = last_boxed(text)
    return boxed.strip() if boxed is not None else text.strip()


def plain_number_text(text: str) -> str:
    """LaTeX number spellings made plain: `1{,}000`, `1\\,000`, `\\$5`, `-\\$5`, `\\frac{10}{2}`."""
    text = text.replace("{,}", ",").replace("\\!", "").replace("\\,", "").replace("\\$", "").replace("$", "")
    text = re.sub(r"-\s+(?=\d)", "-", text)
    return re.sub(r"\\d?frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}",
                  lambda m: repr(float(m[1]) / float(m[2])) if float(m[2]) else m[0], text)


def gsm8k_gold(answer_field: str) -> str:
    if "####" not in answer_field:
        raise ValueError(f"GSM8K answer has no '#### <number>' line: {answer_field[-60:]!r}")
    return answer_field.rsplit("####", 1)[1].strip().replace(",", "")


def gsm8k_correct(completion: str, gold: str) -> bool:
    want = last_number(gold)
    got = last_number(plain_number_text(final_answer(completion)))
    if got is None:
        got = last_number(plain_number_text(completion))
    return got is not None and want is not None and abs(got - want) < 1e-6


def math_correct(completion: str, gold: str) -> bool:
    answer = final_answer(completion)
    if answer.replace(" ", "") == gold.replace(" ", ""):
        return True
    return math_equivalent(f"${answer}$", gold)


# ---- data ---------------------------------------------------------------------------------------------
def read_rows(path: Path) -> list[dict]:
    """Rows of a .jsonl or .parquet file; a malformed line is a one-line error naming it."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix not in (".jsonl", ".json"):
        raise ValueError(f"{path}: use a .jsonl or .parquet file")
    return [row for _, row in read_jsonl(path)]


def split_file(directory: Path, split: str) -> Path | None:
    for suffix in (".jsonl", ".parquet", ".json"):
        if (directory / f"{split}{suffix}").is_file():
            return directory / f"{split}{suffix}"
    return None


def hub_rows(name: str, split: str) -> list[dict]:
    dataset_id, config, hub_split = SOURCES[name][1][split]
    try:
        import datasets
    except ImportError:
        raise ValueError(f"task={name} without task.path needs the `datasets` package and hub access "
                         f"(pip install datasets), or task.path=<dir with train/test .jsonl or .parquet>") from None
    try:
        return list(datasets.load_dataset(dataset_id, config, split=hub_split))
    except Exception as err:  # noqa: BLE001 - network, auth, missing split: all mean "cannot load"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot load {dataset_id} ({hub_split}) from the hub: {first}") from None


class MathWordTask(Task):
    """GSM8K (`name="gsm8k"`) or MATH (`name="math500"`) with the paper's prompt and answer checks."""

    response_prefix = RESPONSE_PREFIX

    def __init__(self, name: str = "gsm8k", path: str = "", test_fraction: float = 0.1,
                 bounds: tuple[int, int] = (32_768, 32_768)):
        self.bounds = bounds
        if name not in SOURCES:
            raise ValueError(f"unknown math task {name!r}: use {' or '.join(SOURCES)}")
        self.name, self.path, self.test_fraction = name, Path(path) if path else None, test_fraction
        if self.path is not None and not self.path.exists():
            raise FileNotFoundError(f"task.path {str(self.path)!r} does not exist")
        self.system_prompt = ANSWER_FORMAT if name == "gsm8k" else MATH_SYSTEM_PROMPT
        self._cache: dict[str, list[Example]] = {}

    def rows(self, split: str) -> list[dict]:
        if self.path is None:
            return hub_rows(self.name, split)
        if self.path.is_dir():
            file = split_file(self.path, split)
            if file is None:
                raise FileNotFoundError(f"{self.path} has no {split}.jsonl or {split}.parquet")
            return read_rows(file)
        question = SOURCES[self.name][0]
        return [row for row in read_rows(self.path) if hash_split(str(row.get(question)), self.test_fraction) == split]

    def to_example(self, row: dict, index: int) -> Example:
        question_key = SOURCES[self.name][0]
        if question_key not in row:
            raise ValueError(f"{self.name} row {index} has no {question_key!r} field")
        if self.name == "gsm8k":
            gold = gsm8k_gold(str(row["answer"]))
        else:
            gold = row.get("answer") or last_boxed(str(row.get("solution", "")))
            if not gold:
                raise ValueError(f"{self.name} row {index} has neither 'answer' nor a boxed 'solution'")
        prompt = f"{self.system_prompt}\n\n{row[question_key]}"
        example_id = f"{self.name}/{row.get('unique_id', row.get('id', index))}"
        example = Example(id=example_id, prompt=prompt, answer=str(gold), meta={"source": self.name})
        return check_example_size(example, *self.bounds, where=f"{self.name} row {index}")

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        check_split(split)
        if split not in self._cache:
            self._cache[split] = [self.to_example(row, i) for i, row in enumerate(self.rows(split))]
        return seeded_head(self._cache[split], n, seed)

    def verify(self, completion: str, example: Example) -> bool:
        check = gsm8k_correct if self.name == "gsm8k" else math_correct
        return bool(check(completion, example.answer))


class MixedMathTask(Task):
    """The paper's RL training data: GSM8K and MATH shuffled together (arXiv 2512.09106 §4), each example checked
    by its own dataset's verifier. `task.path` holds `gsm8k/` and `math500/` directories (or is empty: hub)."""

    name = "gsm8k_math"
    response_prefix = RESPONSE_PREFIX

    def __init__(self, path: str = "", test_fraction: float = 0.1, bounds: tuple[int, int] = (32_768, 32_768)):
        base = Path(path) if path else None
        if base is not None and not base.is_dir():
            raise FileNotFoundError(f"task.path {path!r} must be a directory holding gsm8k/ and math500/")
        self.parts = {name: MathWordTask(name, str(base / name) if base else "", test_fraction, bounds)
                      for name in ("gsm8k", "math500")}

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        return seeded_head([ex for part in self.parts.values() for ex in part.examples(split, -1, seed)], n, seed)

    def verify(self, completion: str, example: Example) -> bool:
        return self.parts[example.meta["source"]].verify(completion, example)
