"""Tasks: prompt families with exact verifiers. `make_task` builds one from its config."""

from __future__ import annotations

from unmask.envs.config import TASK_NAMES, TaskConfig, check_task
from unmask.envs.tasks.base import Example, Task
from unmask.envs.tasks.cycles import CycleTask


def make_task(cfg: TaskConfig) -> Task:
    """The task `cfg.name` with its settings (its data read, its verifier imported): prompts, answers, a verifier."""
    check_task(cfg)
    if cfg.name == "cycles":
        return CycleTask(num_symbols=cfg.num_symbols, pretrain_length_decay=cfg.pretrain_length_decay,
                         directions=cfg.directions, separator_prob=cfg.separator_prob)
    if cfg.name == "map":
        from unmask.envs.tasks.map import MapTask

        return MapTask(num_symbols=cfg.num_symbols)
    if cfg.name == "jsonl":
        from unmask.envs.tasks.jsonl import JsonlTask

        return JsonlTask(cfg.path, verifier=cfg.verifier, prompt_key=cfg.prompt_key, answer_key=cfg.answer_key,
                         test_fraction=cfg.test_fraction, test_path=cfg.test_path,
                         max_prompt_chars=cfg.max_prompt_chars, max_answer_chars=cfg.max_answer_chars)
    if cfg.name in ("gsm8k", "math500"):
        from unmask.envs.tasks.math_word import MathWordTask

        return MathWordTask(cfg.name, path=cfg.path, test_fraction=cfg.test_fraction,
                            bounds=(cfg.max_prompt_chars, cfg.max_answer_chars))
    if cfg.name == "gsm8k_math":
        from unmask.envs.tasks.math_word import MixedMathTask

        return MixedMathTask(path=cfg.path, test_fraction=cfg.test_fraction,
                             bounds=(cfg.max_prompt_chars, cfg.max_answer_chars))
    raise AssertionError(f"task {cfg.name!r} is listed in TASK_NAMES but not built here")


__all__ = ["Example", "Task", "TASK_NAMES", "make_task"]
