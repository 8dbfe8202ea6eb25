"""The built-in reasoning task: trace a cycle of a permutation.

Prompt: the images f(a), f(b), ... of a random permutation f of the first `num_symbols` letters,
then `?` and a start letter s. Answer: a direction mark, then the cycle of s written from s back to s,
then EOS padding. With `>` each next letter is f(previous), with `<` it is f^-1(previous). Both
directions always verify; `directions` says which ones the data uses (`both`: the first answer token is
a 50/50 choice, as free phrasing is in natural language; `forward`: always `>`).

    prompt  "cadbgfehji?b"   (f(a)=c, f(b)=a, f(c)=d, f(d)=b, ...)
    answers ">bacdb", ">b,a,cd,b", ... or "<bdcab"

Why order can matter:
- Each letter needs the previous one (pointer chasing): a shallow bidirectional model cannot write
  the k-th letter before the (k-1)-th.
- The cycle length of s (uniform on 1..num_symbols in the test split) cannot be seen without tracing
  the cycle, so the model's EOS confidence at a position is a length guess. In full diffusion the
  EOS padding is committed first and creeps left past where the answer should end (LLaDA's failure):
  the built-in 10-letter model loses ~24 points that way. `pretrain_length_decay` < 1 skews the dLLM's
  pretraining data towards short cycles, as chat SFT data skews towards short answers. RL prompts and
  the test split keep the natural distribution (k uniform).
"""

from __future__ import annotations

import random
import string

from unmask.envs.tasks.base import Example, Task, check_split, draw_split, hash_split

DIRECTIONS = {"both": "><", "forward": ">", "backward": "<"}  # marks the data uses; both always verify
TEST_FRACTION = 0.05  # of all (permutation, start) pairs, in 1000 hash buckets, belong to the test split


class CycleTask(Task):
    name = "cycles"

    def __init__(self, num_symbols: int = 10, pretrain_length_decay: float = 1.0, directions: str = "both",
                 separator_prob: float = 0.0):
        if not 2 <= num_symbols <= 26:
            raise ValueError(f"task.num_symbols must be in 2..26, got {num_symbols}")
        if not 0 < pretrain_length_decay <= 1:
            raise ValueError(f"task.pretrain_length_decay must be in (0, 1], got {pretrain_length_decay}")
        self.letters = string.ascii_lowercase[:num_symbols]
        if directions not in DIRECTIONS:
            raise ValueError(f"task.directions must be one of {', '.join(DIRECTIONS)}, got {directions!r}")
        if not 0 <= separator_prob < 1:
            raise ValueError(f"task.separator_prob must be in [0, 1), got {separator_prob}")
        self.pretrain_length_decay = pretrain_length_decay
        self.separator_prob = separator_prob
        self.directions = DIRECTIONS[directions]

    def pretrain_example(self, rng: random.Random) -> Example:
        """A training-split example whose cycle length k is kept with probability decay^(k-1): dLLM
        pretraining data skewed towards short answers, as chat SFT data is. 1.0 = no skew."""
        while True:
            ex = self.random_example(rng)
            if self.split_of(ex.prompt) != "train":
                continue
            if self.pretrain_length_decay == 1.0 or rng.random() < self.pretrain_length_decay ** (len(ex.answer) - 3):
                return ex

    @property
    def alphabet(self) -> str:
        """Every character of its prompts and answers (a pretrained dLLM's vocabulary)."""
        return self.letters + "?<>" + ("," if self.separator_prob > 0 else "")

    @staticmethod
    def split_of(prompt: str) -> str:
        return hash_split(prompt, TEST_FRACTION, buckets=1000)

    def random_example(self, rng: random.Random) -> Example:
        images = list(self.letters)
        rng.shuffle(images)
        start = rng.choice(self.letters)
        prompt = "".join(images) + "?" + start
        direction = rng.choice(self.directions)
        letters = self.trace(prompt, direction)
        body = letters[0] + "".join(("," if rng.random() < self.separator_prob else "") + x for x in letters[1:])
        return Example(id=prompt, prompt=prompt, answer=direction + body, meta={"cycle_length": len(letters) - 1})

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
        return draw_split(lambda: self.random_example(rng), self.split_of, split, n,
                          f"cycles with task.num_symbols={len(self.letters)}", train_repeats=True)

    def verify(self, completion: str, example: Example) -> bool:
        """The mark, then the cycle in its direction; a single `,` may stand between two letters."""
        if not completion or completion[0] not in "<>":
            return False
        body = completion[1:]
        if ",," in body or body.startswith(",") or body.endswith(","):
            return False
        return body.replace(",", "") == self.trace(example.prompt, completion[0])

    def content_length(self, text: str) -> int:
        return len(text.replace(",", ""))

    def max_answer_length(self) -> int:
        letters = len(self.letters) + 1
        return 1 + letters + (letters - 1 if self.separator_prob > 0 else 0)
