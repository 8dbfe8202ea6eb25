"""Prompts and reference answers from local JSONL files, one JSON object per line.

Each line needs the prompt and answer keys (`task.prompt_key`, `task.answer_key`); an optional `id` names the
example (else its line number); every other field is kept as the example's metadata (`unmask eval
group_by=<field>` breaks results down by one). One file is split into train and test by a hash of the prompt
(`task.test_fraction`), or `task.test_path` names a separate test file.
"""

from __future__ import annotations

from pathlib import Path

from unmask.envs.tasks.base import Example, Task, check_example_size, check_split, hash_split, read_jsonl, seeded_head
from unmask.envs.tasks.verifiers import resolve_verifier


class JsonlTask(Task):
    name = "jsonl"

    def __init__(self, path: str, verifier: str = "exact", prompt_key: str = "prompt",
                 answer_key: str = "answer", test_fraction: float = 0.1, test_path: str = "",
                 max_prompt_chars: int = 32_768, max_answer_chars: int = 32_768):
        if not path:
            raise ValueError("task=jsonl needs task.path=<file.jsonl>")
        if not 0.0 <= test_fraction <= 1.0:
            raise ValueError(f"task.test_fraction must be in [0, 1], got {test_fraction}")
        self.verifier_name, self.verifier = verifier, resolve_verifier(verifier)
        self.test_fraction = test_fraction
        self.keys, self.bounds = (prompt_key, answer_key), (max_prompt_chars, max_answer_chars)
        self.items = self._read(Path(path))
        self.test_items = self._read(Path(test_path)) if test_path else None

    def _read(self, path: Path) -> list[Example]:
        prompt_key, answer_key = self.keys
        items = []
        for number, row in read_jsonl(path):
            if not isinstance(row, dict) or prompt_key not in row or answer_key not in row:
                raise ValueError(f"{path}:{number}: needs the keys {prompt_key!r} and {answer_key!r}")
            prompt, answer = row[prompt_key], row[answer_key]
            if not isinstance(prompt, str) or not isinstance(answer, (str, int, float)):
                raise ValueError(f"{path}:{number}: {prompt_key!r} must be a string and "
                                 f"{answer_key!r} a string or number")
            meta = {k: v for k, v in row.items() if k not in (prompt_key, answer_key, "id")}
            example = Example(id=str(row.get("id", number)), prompt=prompt, answer=str(answer), meta=meta)
            items.append(check_example_size(example, *self.bounds, where=f"{path}:{number}"))
        if not items:
            raise ValueError(f"{path} holds no examples")
        return items

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        """Up to `n` examples of the split (all of them when n < 0), in a seed-shuffled order."""
        check_split(split)
        if self.test_items is not None:
            return seeded_head(self.test_items if split == "test" else self.items, n, seed)
        return seeded_head([ex for ex in self.items if hash_split(ex.prompt, self.test_fraction) == split], n, seed)

    def verify(self, completion: str, example: Example) -> bool:
        try:
            return bool(self.verifier(completion, example.answer))
        except Exception as err:  # noqa: BLE001 - a user's verifier: whatever it raises is named in one line
            message = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ValueError(f"verifier {self.verifier_name!r} raised {type(err).__name__} on example "
                             f"{example.id!r}: {message}") from None
