"""What every env runner of a training run will load, checked once on the driver before Ray starts: a bad
model path, tokenizer, task file, verifier or canvas size is a one-line error in seconds, not dead actors
minutes later."""

from __future__ import annotations

from unmask.envs.dllm import check_fits, check_model_files, encode_prompts
from unmask.envs.tasks import make_task
from unmask.rollout.config import RolloutConfig


def preflight(rollout: RolloutConfig) -> None:
    tokenizer, context, chat_template = check_model_files(rollout.model, rollout.env, rollout.trust_remote_code)
    task = make_task(rollout.task)  # reads the data, imports the verifier
    pool = task.examples("train", rollout.train_pool, seed=rollout.seed)
    if not pool:
        raise ValueError(f"task {rollout.task.name!r} has no training examples")
    task.verify(pool[0].answer, pool[0])  # a verifier that raises does so here, naming itself
    encoded = encode_prompts(tokenizer, [ex.prompt for ex in pool], task.response_prefix, chat_template)
    check_fits(max(len(ids) for ids in encoded), rollout.env.gen_length, context)
