"""The built-in reasoning task: trace a cycle of a permutation, in either direction.

Prompt: the images f(a), f(b), ... of a random permutation f of the first `num_symbols` letters,
then `?` and a start letter s. Answer: a direction mark, then the cycle of s written from s back to s,
then EOS padding. With `>` each next letter is f(previous), with `<` it is f^-1(previous); both
directions are correct, so the first answer token is a genuine 50/50 choice, as free phrasing is in
natural language.

    prompt  "cadbgfe?b"      (f(a)=c, f(b)=a, f(c)=d, f(d)=b, ...)
    answers ">bacdb" or "<bdcab"

Why this task makes unmasking order matter (shared/research/tiny-dllm-prototype.md):
- Each letter needs the previous one (pointer chasing): a shallow bidirectional model cannot write
  the k-th letter before the (k-1)-th, so parallel commits of dependent letters go wrong.
- The cycle length of s is uniform on 1..num_symbols and cannot be seen without tracing the cycle,
  so the model's EOS confidence at a position is a real length guess. Committed right-to-left
  (as confidence order does in full diffusion), each EOS raises the next one's confidence and the
  padding creeps into the answer, cutting it short.
- The direction mark has confidence ~0.5, below any EOS guess: confidence order postpones it.
"""

from __future__ import annotations

import random
import string

from envs.tasks.base import Example, Task, check_split, stable_hash

TEST_FRACTION_PER_MILLE = 50  # 5% of all (permutation, start) pairs belong to the test split


class CycleTask(Task):
    name = "cycles"

    def __init__(self, num_symbols: int = 7):
        if not 2 <= num_symbols <= 26:
            raise ValueError(f"task.num_symbols must be in 2..26, got {num_symbols}")
        self.letters = string.ascii_lowercase[:num_symbols]

    @staticmethod
    def split_of(prompt: str) -> str:
        return "test" if stable_hash(prompt) % 1000 < TEST_FRACTION_PER_MILLE else "train"

    def random_example(self, rng: random.Random) -> Example:
        images = list(self.letters)
        rng.shuffle(images)
        start = rng.choice(self.letters)
        prompt = "".join(images) + "?" + start
        direction = rng.choice("><")
        return Example(id=prompt, prompt=prompt, answer=direction + self.trace(prompt, direction))

    def trace(self, prompt: str, direction: str) -> str:
        """The cycle of the start letter, from it back to it, following f ('>') or f^-1 ('<')."""
        images, start = prompt.split("?")
        forward = dict(zip(self.letters, images, strict=True))
        step = forward if direction == ">" else {v: k for k, v in forward.items()}
        out, x = [start], step[start]
        while x != start:
            out.append(x)
            x = step[x]
        return "".join(out) + start

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        check_split(split)
        rng = random.Random(f"{self.name}/{split}/{seed}")
        out: list[Example] = []
        seen: set[str] = set()
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 200 * n + 10_000:
                raise ValueError(f"the {split} split of cycles with task.num_symbols={len(self.letters)} has "
                                 f"fewer than {n} distinct prompts: ask for fewer examples or more symbols")
            ex = self.random_example(rng)
            if self.split_of(ex.prompt) == split and (split == "train" or ex.prompt not in seen):
                seen.add(ex.prompt)
                out.append(ex)
        return out

    def verify(self, completion: str, example: Example) -> bool:
        if not completion or completion[0] not in "<>":
            return False
        return completion[1:] == self.trace(example.prompt, completion[0])

    def max_answer_length(self) -> int:
        return len(self.letters) + 2
