"""What every env runner of a training run will load, checked once on the driver before Ray starts: a bad
model path, tokenizer, task file, verifier or canvas size is a one-line error in seconds, not dead actors
minutes later."""

from __future__ import annotations

from unmask.envs.config import DLLMSettings
from unmask.envs.dllm import check_fits, check_model_files, encode_prompts
from unmask.envs.tasks import make_task


def preflight(cfg: DLLMSettings, train_pool: int) -> None:
    """The model's files, the task's first `train_pool` training prompts and verifier, the canvas against the
    context."""
    tokenizer, context, chat_template = check_model_files(cfg.model, cfg.env, cfg.trust_remote_code)
    task = make_task(cfg.task)  # reads the data, imports the verifier
    pool = task.examples("train", train_pool, seed=cfg.seed)
    if not pool:
        raise ValueError(f"task {cfg.task.name!r} has no training examples")
    task.verify(pool[0].answer, pool[0])  # a verifier that raises does so here, naming itself
    encoded = encode_prompts(tokenizer, [ex.prompt for ex in pool], task.response_prefix, chat_template)
    check_fits(max(len(ids) for ids in encoded), cfg.env.gen_length, context)
