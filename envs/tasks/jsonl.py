"""Prompts and reference answers from a local JSONL file, one JSON object per line."""

from __future__ import annotations

from pathlib import Path

from envs.tasks.base import Example, Task, check_split, hash_split, read_jsonl, seeded_head
from envs.tasks.verifiers import resolve_verifier


class JsonlTask(Task):
    name = "jsonl"

    def __init__(self, path: str, verifier: str = "exact", prompt_key: str = "prompt",
                 answer_key: str = "answer", test_fraction: float = 0.1):
        if not path:
            raise ValueError("task=jsonl needs task.path=<file.jsonl>")
        if not 0.0 <= test_fraction <= 1.0:
            raise ValueError(f"task.test_fraction must be in [0, 1], got {test_fraction}")
        self.path = Path(path)
        self.verifier = resolve_verifier(verifier)
        self.test_fraction = test_fraction
        self.items = self._read(prompt_key, answer_key)

    def _read(self, prompt_key: str, answer_key: str) -> list[Example]:
        if not self.path.is_file():
            raise FileNotFoundError(f"task.path {str(self.path)!r} does not exist")
        items = []
        for number, row in read_jsonl(self.path):
            if not isinstance(row, dict) or prompt_key not in row or answer_key not in row:
                raise ValueError(f"{self.path}:{number}: needs the keys {prompt_key!r} and {answer_key!r}")
            prompt, answer = row[prompt_key], row[answer_key]
            if not isinstance(prompt, str) or not isinstance(answer, (str, int, float)):
                raise ValueError(f"{self.path}:{number}: {prompt_key!r} must be a string and "
                                 f"{answer_key!r} a string or number")
            items.append(Example(id=str(row.get("id", number)), prompt=prompt, answer=str(answer)))
        if not items:
            raise ValueError(f"{self.path} holds no examples")
        return items

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        """Up to `n` examples of the split (all of them when n < 0), in a seed-shuffled order."""
        check_split(split)
        return seeded_head([ex for ex in self.items if hash_split(ex.prompt, self.test_fraction) == split], n, seed)

    def verify(self, completion: str, example: Example) -> bool:
        return bool(self.verifier(completion, example.answer))
