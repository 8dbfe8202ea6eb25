"""The task interface: prompts with reference answers and an exact verifier."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field


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


def check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}: use 'train' or 'test'")
