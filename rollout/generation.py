"""Generation with any sampler on any supported dLLM: the Python API.

    from unmask.envs.config import EnvConfig
    from unmask.envs.dllm import load_dllm
    from unmask.rollout.generation import generate
    from unmask.rollout.samplers import sampler

    dllm = load_dllm("GSAI-ML/LLaDA-8B-Instruct", device="cuda", dtype="bfloat16")
    policy = sampler("policy", checkpoint="runs/a1/checkpoints/final")  # or sampler("fast_dllm", threshold=0.9)
    for out in generate(dllm, ["What is 17 * 23?"], policy, EnvConfig(gen_length=256, block_length=32)):
        print(out.nfe, out.text)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tqdm import tqdm

from unmask.envs.config import EnvConfig
from unmask.envs.dllm import DLLM
from unmask.envs.mdp import UnmaskingEnv
from unmask.envs.memory import batch_rows
from unmask.envs.samplers import InBlocks, Oracle, Sampler


@dataclass
class Generation:
    """One finished generation."""

    text: str  # the decoded answer, cut at the first end-of-sequence token
    nfe: int  # dLLM forwards it took
    tokens: list[int]  # the whole canvas
    unmask_step: list[int] = field(repr=False)  # forward index at which each canvas position was written (-1: never)
    abandoned: int = 0  # positions given up at a block's forward budget (they still hold the mask token)


def run_to_end(env: UnmaskingEnv, sampler: Sampler, prompts: list[list[int]]) -> UnmaskingEnv:
    """One batch of episodes, from the fully masked canvas until nothing is masked."""
    sampler.begin(env, prompts)
    obs = env.reset(prompts, features=sampler.features)
    while not env.done:
        obs = env.step(sampler.select(obs))
    return env


EVAL_ROWS = 250  # sequences per forward at most when env.batch_size is 0 (and the memory plan allows as many)


def generate(dllm: DLLM, prompts: list[str], sampler: Sampler, env: EnvConfig | None = None, *,
             batch_size: int = 0, response_prefix: str = "", seed: int = 0, progress: bool = False,
             bucket: bool | None = None) -> list[Generation]:
    """Generate an answer to each prompt (batched, `batch_size` sequences per dLLM forward; 0: env.batch_size, else
    what the memory plan fits, at most EVAL_ROWS) by unmasking with `sampler` in the MDP of `env` (canvas length, block
    length, token temperature, KV cache). Every check comes before the first forward (and before the progress bar, on
    stderr with `progress`).

    `bucket`: batch the prompts in order of token length (the output keeps the input order), so that a batch
    holds prompts of about one length and mostly needs no padding, hence no attention mask. By default only
    where it cannot change a result: several batches, env.temperature 0 and a sampler that draws no random
    numbers (the token noise and a stochastic sampler's draws are taken for a whole batch, so they depend on
    which prompts share it). True buckets stochastic runs too: other, equally valid draws."""
    env = env or EnvConfig()
    sampler.check_env(env)
    encoded = dllm.encode_prompts(prompts, response_prefix)
    longest = max((len(ids) for ids in encoded), default=0)
    if encoded:  # before any forward: every prompt must fit the context with the canvas
        dllm.check_fits(longest, env.gen_length)
    batch_size = batch_size or batch_rows(dllm, env, longest, min(EVAL_ROWS, max(1, len(encoded))),
                                          features=sampler.features)
    mdp = UnmaskingEnv.from_config(dllm, env, seed=seed)
    if bucket is None:
        bucket = len(encoded) > batch_size and env.temperature == 0 and not draws_random_numbers(sampler)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i])) if bucket else list(range(len(encoded)))
    out: list[Generation | None] = [None] * len(encoded)
    with tqdm(total=len(encoded), desc=sampler.describe(), disable=not progress, leave=False) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            run_to_end(mdp, sampler, [encoded[i] for i in rows])
            for i, generation in zip(rows, finished(mdp), strict=True):
                out[i] = generation
            bar.update(len(rows))
    return out


def finished(env: UnmaskingEnv) -> list[Generation]:
    """Every row of a batch of episodes that has run to its end, as a Generation (one read of each column)."""
    columns = (env.canvas(), env.nfe, env.unmask_step, env.abandoned.sum(-1))
    return [Generation(env.dllm.decode_answer(tokens), nfe, tokens, steps, abandoned)
            for tokens, nfe, steps, abandoned in zip(*(c.tolist() for c in columns), strict=True)]


# Samplers whose decisions are a function of the observation alone (no random draws); `oracle` is one when its
# reference is. Any sampler not listed (`random`, `policy`, one added later) counts as drawing random numbers.
DETERMINISTIC_SAMPLERS = frozenset({"top_k", "margin", "entropy", "fast_dllm", "left_threshold", "left_run",
                                    "fast_dllm_factor", "eb", "frechet"})


def draws_random_numbers(sampler: Sampler) -> bool:
    """Whether `sampler`'s decisions use random draws (taken per batch: bucketing would change them)."""
    if isinstance(sampler, Oracle):
        return draws_random_numbers(sampler.reference)
    if isinstance(sampler, InBlocks):
        return draws_random_numbers(sampler.inner)
    return sampler.name not in DETERMINISTIC_SAMPLERS
