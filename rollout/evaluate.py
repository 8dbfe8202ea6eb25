"""Run a sampler over a task's prompts in the dLLM environment and score the answers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from envs.config import EnvConfig, SamplerConfig, TaskConfig
from envs.dllm import DLLM
from envs.mdp import UnmaskingEnv, check_lengths
from envs.samplers import Sampler, make_sampler
from envs.tasks import Example, Task, make_task


@dataclass
class EvalConfig:
    model: str = "builtin"  # a local HF directory or hub id; "builtin" = the shipped dLLM
    task: TaskConfig = field(default_factory=TaskConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    num_examples: int = 500
    split: str = "test"
    seed: int = 0
    out: str = "runs/eval/eval.json"
    progress: bool = True  # a progress bar on stderr
    trust_remote_code: bool = False


@dataclass
class Episode:
    """One finished generation."""

    example: Example
    completion: str
    correct: bool
    nfe: int
    still_masked: int
    cut_short: bool  # fewer content tokens than the reference: the signature of EOS committed too early
    unmask_step: list[int]  # forward index at which each canvas position was written (-1: never)


def generate(env: UnmaskingEnv, sampler: Sampler, prompts: list[list[int]]) -> UnmaskingEnv:
    """Run one batch of episodes to the end."""
    obs = env.reset(prompts)
    while not env.done:
        obs = env.step(sampler.select(obs))
    return env


def check_examples(dllm: DLLM, examples: list[Example], env_cfg: EnvConfig, split: str = "test",
                   response_prefix: str = "") -> None:
    """Fail before any work: no examples, a bad batch size, or a prompt that cannot fit the context."""
    if not examples:
        raise ValueError(f"no examples to evaluate in the {split!r} split (num_examples, task.test_fraction?)")
    if env_cfg.batch_size < 1:
        raise ValueError(f"env.batch_size must be >= 1, got {env_cfg.batch_size}")
    check_lengths(env_cfg.gen_length, env_cfg.block_length)
    if dllm.max_length is not None:
        longest = max(len(p) for p in dllm.encode_prompts([ex.prompt for ex in examples], response_prefix))
        if longest + env_cfg.gen_length > dllm.max_length:
            raise ValueError(f"prompt ({longest} tokens) + env.gen_length ({env_cfg.gen_length}) exceeds the "
                             f"model's context of {dllm.max_length} tokens")


def run_episodes(dllm: DLLM, task: Task, examples: list[Example], sampler: Sampler, env_cfg: EnvConfig,
                 seed: int = 0, progress: bool = False) -> list[Episode]:
    check_examples(dllm, examples, env_cfg, response_prefix=task.response_prefix)
    env = UnmaskingEnv.from_config(dllm, env_cfg, seed=seed)
    episodes: list[Episode] = []
    bar = tqdm(total=len(examples), desc=sampler.describe(), disable=not progress, leave=False)
    for start in range(0, len(examples), env_cfg.batch_size):
        batch = examples[start : start + env_cfg.batch_size]
        generate(env, sampler, dllm.encode_prompts([ex.prompt for ex in batch], task.response_prefix))
        canvas = env.canvas().tolist()
        for row, ex in enumerate(batch):
            completion = dllm.decode_answer(canvas[row])
            cut_short = task.content_length(completion) < task.content_length(ex.answer)
            episodes.append(Episode(ex, completion, task.verify(completion, ex), int(env.nfe[row]),
                                    int(env.abandoned[row].sum()), cut_short, env.unmask_step[row].tolist()))
        bar.update(len(batch))
    bar.close()
    return episodes


def summarize(episodes: list[Episode], gen_length: int) -> dict:
    n = len(episodes)
    nfe = torch.tensor([e.nfe for e in episodes], dtype=torch.float64)
    written = torch.tensor([gen_length - e.still_masked for e in episodes], dtype=torch.float64)
    return {
        "accuracy": sum(e.correct for e in episodes) / n,
        "mean_nfe": float(nfe.mean()),
        "tokens_per_step": float((written / nfe).mean()),
        "still_masked": float(sum(e.still_masked for e in episodes) / n),
        "shorter_than_reference": sum(e.cut_short for e in episodes) / n,
        "num_examples": n,
    }


def evaluate(cfg: EvalConfig, dllm: DLLM | None = None) -> dict:
    """Accuracy, mean NFE and tokens per step of one sampler on `num_examples` prompts."""
    from envs.dllm import load_env_dllm

    torch.manual_seed(cfg.seed)
    task = make_task(cfg.task)
    check_lengths(cfg.env.gen_length, cfg.env.block_length)
    if dllm is None:
        dllm = load_env_dllm(cfg.model, cfg.env, trust_remote_code=cfg.trust_remote_code)
    sampler = make_sampler(cfg.sampler, torch.Generator(device=dllm.device).manual_seed(cfg.seed))
    examples = task.examples(cfg.split, cfg.num_examples, seed=cfg.seed)
    start = time.perf_counter()
    episodes = run_episodes(dllm, task, examples, sampler, cfg.env, seed=cfg.seed, progress=cfg.progress)
    result = summarize(episodes, cfg.env.gen_length)
    result["wall_seconds"] = round(time.perf_counter() - start, 3)
    result["sampler"] = sampler.describe()
    result["samples"] = [{"id": e.example.id, "completion": e.completion, "correct": e.correct, "nfe": e.nfe}
                         for e in episodes[:20]]
    return result
