"""Tasks: prompt families with exact verifiers. `make_task` builds one from its config."""

from __future__ import annotations

from envs.config import TaskConfig
from envs.tasks.base import Example, Task
from envs.tasks.cycles import CycleTask

TASKS = ("cycles", "jsonl", "gsm8k", "math500", "gsm8k_math")


def make_task(cfg: TaskConfig) -> Task:
    if cfg.name == "cycles":
        return CycleTask(num_symbols=cfg.num_symbols, pretrain_length_decay=cfg.pretrain_length_decay,
                         directions=cfg.directions, separator_prob=cfg.separator_prob)
    if cfg.name == "jsonl":
        from envs.tasks.jsonl import JsonlTask

        return JsonlTask(cfg.path, verifier=cfg.verifier, prompt_key=cfg.prompt_key,
                         answer_key=cfg.answer_key, test_fraction=cfg.test_fraction)
    if cfg.name in ("gsm8k", "math500"):
        from envs.tasks.math_word import MathWordTask

        return MathWordTask(cfg.name, path=cfg.path, test_fraction=cfg.test_fraction)
    if cfg.name == "gsm8k_math":
        from envs.tasks.math_word import MixedMathTask

        return MixedMathTask(path=cfg.path, test_fraction=cfg.test_fraction)
    raise ValueError(f"unknown task {cfg.name!r}: choose one of {', '.join(TASKS)}")


__all__ = ["Example", "Task", "TASKS", "make_task"]
