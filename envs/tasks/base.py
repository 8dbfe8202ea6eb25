"""The task interface: prompts with reference answers and an exact verifier."""

from __future__ import annotations

import hashlib
import json
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Example:
    """One prompt. `answer` is a reference; `verify` may accept other answers too."""

    id: str
    prompt: str
    answer: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


class Task(ABC):
    """A family of prompts with a verifier. Splits must be disjoint."""

    name: str = "task"
    response_prefix: str = ""  # text the answer starts with, after the chat template's assistant header

    @abstractmethod
    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        """`n` examples of `split` ('train' or 'test'), reproducible from `seed`."""

    @abstractmethod
    def verify(self, completion: str, example: Example) -> bool:
        """Is `completion` (the decoded answer, cut at the first EOS) correct for `example`?"""

    def content_length(self, text: str) -> int:
        """Length of an answer without optional formatting: what "cut short" compares."""
        return len(text)


def stable_hash(text: str) -> int:
    """A hash that is the same in every process (Python's `hash` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def hash_split(text: str, test_fraction: float, buckets: int = 10_000) -> str:
    """'test' for a stable `test_fraction` share of texts (by content hash, in `buckets` buckets), else 'train'."""
    return "test" if stable_hash(text) % buckets < int(test_fraction * buckets) else "train"


def draw_split(draw: Callable[[], Example], split_of: Callable[[str], str], split: str, n: int, who: str,
               train_repeats: bool = False) -> list[Example]:
    """`n` examples of `split` from a generator's `draw`, each prompt once (the train split may repeat one when
    `train_repeats`); a split with fewer distinct prompts than asked is one line after a bounded number of draws, never
    an endless loop. `who` names the family in that line (e.g. "cycles with task.num_symbols=4")."""
    out: list[Example] = []
    seen: set[str] = set()
    for _ in range(200 * n + 10_000):
        if len(out) == n:
            break
        ex = draw()
        if split_of(ex.prompt) == split and ((train_repeats and split == "train") or ex.prompt not in seen):
            seen.add(ex.prompt)
            out.append(ex)
    if len(out) < n:
        raise ValueError(f"the {split} split of {who} has fewer than {n} distinct prompts: ask for fewer examples or "
                         "more symbols")
    return out


def seeded_head(pool: list[Example], n: int, seed: int) -> list[Example]:
    """Up to `n` of `pool` (all of them when n < 0) in a seed-shuffled order."""
    pool = list(pool)
    random.Random(seed).shuffle(pool)
    return pool if n < 0 else pool[:n]


def read_jsonl(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed object) per non-blank line; a malformed line is a one-line error naming it."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a .jsonl file")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{number}: not UTF-8 text ({err.reason} at byte {err.start})") from None
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: malformed JSON ({err.msg})") from None


def check_example_size(example: Example, max_prompt_chars: int, max_answer_chars: int, where: str) -> Example:
    """A prompt or answer longer than the task's bound is an error naming it, before it sizes a model or a batch."""
    for what, text, bound in (("prompt", example.prompt, max_prompt_chars), ("answer", example.answer,
                                                                           max_answer_chars)):
        if len(text) > bound:
            raise ValueError(f"{where}: {what} of {len(text):,} characters exceeds task.max_{what}_chars={bound:,}")
    return example


def check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}: use 'train' or 'test'")
