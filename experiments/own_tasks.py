"""Task families of our own making, written as the JSONL a user brings (`task=jsonl`): the outside-task check of the
recipe (README, "The frontier"). Nothing in the project was tuned for them.

    unmask own-tasks family=filter out_dir=runs/own-filter      (or: python -m unmask.experiments.own_tasks ...)

    sort     2-5 letters, sorted                                  (abcd's order: "daced=" -> "acdde")
    filter   4-14 random letters, those after `m` kept in order   ("emubcrdls=" -> "urs")
    psum     3-14 digits, their running sums mod 10               ("17421=" -> "18245")
    path     a permutation f of a-j, a start s and a letter t on s's cycle: the letters from s to t under f
             (pointer chasing whose length is unknown until traced)     ("cadbgfehji?bd" -> ">bacd")
    commas   filter's letters, each two with a `,` between them or not, at random (free phrasing: any comma
             placement is right, task.verifier=unmask.experiments.own_tasks:free_commas)   ("emubcrdls=" -> "u,rs")

Each writes <family>-train.jsonl and <family>-test.jsonl (500 prompts, none in train) under out_dir.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def sort_letters(rng: random.Random) -> dict:
    word = "".join(rng.choice("abcde") for _ in range(rng.randint(2, 5)))
    return {"prompt": word + "=", "answer": "".join(sorted(word))}


def filter_letters(rng: random.Random) -> dict:
    while True:
        word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(4, 14)))
        kept = "".join(c for c in word if c > "m")
        if kept:
            return {"prompt": word + "=", "answer": kept}


def running_sums(rng: random.Random) -> dict:
    digits = [rng.randint(0, 9) for _ in range(rng.randint(3, 14))]
    sums = [sum(digits[: i + 1]) % 10 for i in range(len(digits))]
    return {"prompt": "".join(map(str, digits)) + "=", "answer": "".join(map(str, sums))}


def path_to(rng: random.Random) -> dict:
    letters = LETTERS[:10]
    while True:
        image = rng.sample(letters, len(letters))
        f = dict(zip(letters, image, strict=True))
        start = rng.choice(letters)
        cycle = [start]
        while f[cycle[-1]] != start:
            cycle.append(f[cycle[-1]])
        if len(cycle) > 1:
            end = rng.randint(1, len(cycle) - 1)
            return {"prompt": "".join(image) + "?" + start + cycle[end], "answer": ">" + "".join(cycle[: end + 1])}


def filter_with_commas(rng: random.Random) -> dict:
    row = filter_letters(rng)
    answer = row["answer"][0] + "".join(("," if rng.random() < 0.5 else "") + c for c in row["answer"][1:])
    return {"prompt": row["prompt"], "answer": answer}


def free_commas(completion: str, answer: str) -> bool:
    """The commas family's verifier: the same letters, a single `,` at most between two of them, none at either end."""
    parts = completion.split(",")
    return all(parts) and "".join(parts) == answer.replace(",", "")


FAMILIES: dict[str, Callable[[random.Random], dict]] = {"sort": sort_letters, "filter": filter_letters,
                                                        "psum": running_sums, "path": path_to,
                                                        "commas": filter_with_commas}


def write(family: str, out_dir: str, train: int = 20_000, test: int = 500, seed: int = 7) -> tuple[Path, Path]:
    """Distinct prompts, the first `test` of them the test split; returns (train file, test file)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: choose one of {', '.join(FAMILIES)}")
    rng, rows, seen = random.Random(seed), [], set()
    for _ in range(100 * (train + test)):  # the sort family has fewer distinct prompts than asked: stop there
        row = FAMILIES[family](rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
        if len(rows) == train + test:
            break
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / f"{family}-train.jsonl", out / f"{family}-test.jsonl"
    for path, part in zip(paths, (rows[test:], rows[:test]), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    return paths


if __name__ == "__main__":  # the same command line as `unmask own-tasks`
    from unmask.cli.main import main

    raise SystemExit(main(["own-tasks", *sys.argv[1:]]))
