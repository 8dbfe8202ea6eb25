"""What every env runner of a training run will load, checked once on the driver before Ray starts: a bad
model path, tokenizer, task file, verifier or canvas size is a one-line error in seconds, not dead actors
minutes later."""

from __future__ import annotations

import sys

from unmask.envs.config import DLLMSettings
from unmask.envs.dllm import check_fits, check_model_files, encode_prompts
from unmask.envs.tasks import make_task


def preflight(cfg: DLLMSettings, train_pool: int, held: int = 0) -> None:
    """The model's files, the task's first `train_pool` training prompts (and the `held` ones validation keeps out of
    training) and verifier, the canvas against the context and against the answers."""
    tokenizer, context, chat_template = check_model_files(cfg.model, cfg.env, cfg.trust_remote_code)
    task = make_task(cfg.task)  # reads the data, imports the verifier
    pool = task.examples("train", train_pool + held, seed=cfg.seed)
    if not pool:
        raise ValueError(f"task {cfg.task.name!r} has no training examples")
    if len(pool) <= held:
        raise ValueError(f"the task has {len(pool)} training examples: none is left to train on beyond the "
                         f"validate_examples={held} held out for validation (lower validate_examples)")
    task.verify(pool[0].answer, pool[0])  # a verifier that raises does so here, naming itself
    encoded = encode_prompts(tokenizer, [ex.prompt for ex in pool], task.response_prefix, chat_template, context)
    check_fits(max(len(ids) for ids in encoded), cfg.env.gen_length, context)
    answers = tokenizer([ex.answer for ex in pool], add_special_tokens=False)["input_ids"]
    too_long = sum(len(ids) > cfg.env.gen_length for ids in answers) / len(answers)
    if too_long == 1:
        raise ValueError(f"every training answer is longer than env.gen_length={cfg.env.gen_length} tokens: no rollout "
                         "could ever be right (raise env.gen_length)")
    if too_long:
        print(f"unmask: WARNING: {too_long:.0%} of the training answers are longer than env.gen_length="
              f"{cfg.env.gen_length} tokens: those prompts can never earn a reward", file=sys.stderr, flush=True)
