"""`map`: apply a permutation to a word, letter by letter, the out-of-domain family of `unmask reproduce`.

Prompt: the images f(a), f(b), ... of a random permutation f of the first `num_symbols` letters, then `?` and a word
of 2..8 letters padded with `.` to 8 (so every answer position has a fixed prompt position to read). Answer: `>` and
f of each letter of the word.

    prompt  "cadbgfehji?bad....."   (f(a)=c, f(b)=a, f(c)=d, f(d)=b, ...)
    answer  ">acb"

The same prompts as `cycles` up to the `?`, and the opposite of its difficulty: no pointer chasing, every answer
letter can be written at once, where a cycle must be traced letter by letter.
"""

from __future__ import annotations

import random
import string

from unmask.envs.tasks.base import Example, Task, check_split, draw_split, hash_split

WORD = 8  # the longest word, and the width every word is padded to with `.`
TEST_FRACTION = 0.05  # of all (permutation, word) pairs, in 1000 hash buckets, belong to the test split


class MapTask(Task):
    name = "map"

    def __init__(self, num_symbols: int = 10):
        if not 2 <= num_symbols <= 26:
            raise ValueError(f"task.num_symbols must be in 2..26, got {num_symbols}")
        self.letters = string.ascii_lowercase[:num_symbols]

    @property
    def alphabet(self) -> str:
        """Every character of its prompts and answers (a pretrained dLLM's vocabulary)."""
        return self.letters + "?>."

    def pretrain_example(self, rng: random.Random) -> Example:
        """A training-split example (`unmask pretrain` draws fresh ones without end)."""
        while True:
            ex = self.random_example(rng)
            if self.split_of(ex.prompt) == "train":
                return ex

    @staticmethod
    def split_of(prompt: str) -> str:
        return hash_split(prompt, TEST_FRACTION, buckets=1000)

    def random_example(self, rng: random.Random) -> Example:
        images = list(self.letters)
        rng.shuffle(images)
        word = "".join(rng.choice(self.letters) for _ in range(rng.randint(2, WORD)))
        prompt = "".join(images) + "?" + word.ljust(WORD, ".")
        return Example(id=prompt, prompt=prompt, answer=self.apply(prompt), meta={"word_length": len(word)})

    def apply(self, prompt: str) -> str:
        images, word = prompt.split("?")
        f = dict(zip(self.letters, images, strict=True))
        return ">" + "".join(f[c] for c in word.rstrip("."))

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        check_split(split)
        rng = random.Random(f"{self.name}/{split}/{seed}")
        return draw_split(lambda: self.random_example(rng), self.split_of, split, n,
                          f"map with task.num_symbols={len(self.letters)}")

    def verify(self, completion: str, example: Example) -> bool:
        return completion == self.apply(example.prompt)

    def max_answer_length(self) -> int:
        return 1 + WORD
