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
from unmask.envs.samplers import Sampler


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


def generate(dllm: DLLM, prompts: list[str], sampler: Sampler, env: EnvConfig | None = None, *,
             batch_size: int = 16, response_prefix: str = "", seed: int = 0, progress: bool = False
             ) -> list[Generation]:
    """Generate an answer to each prompt (batched, `batch_size` sequences per dLLM forward) by unmasking
    with `sampler` in the MDP of `env` (canvas length, block length, token temperature, KV cache). Every
    check comes before the first forward (and before the progress bar, on stderr with `progress`)."""
    env = env or EnvConfig()
    sampler.check_env(env)
    encoded = dllm.encode_prompts(prompts, response_prefix)
    if encoded:  # before any forward: every prompt must fit the context with the canvas
        dllm.check_fits(max(len(ids) for ids in encoded), env.gen_length)
    mdp = UnmaskingEnv.from_config(dllm, env, seed=seed)
    out: list[Generation] = []
    with tqdm(total=len(encoded), desc=sampler.describe(), disable=not progress, leave=False) as bar:
        for start in range(0, len(encoded), batch_size):
            run_to_end(mdp, sampler, encoded[start : start + batch_size])
            canvas = mdp.canvas().tolist()
            for row, tokens in enumerate(canvas):
                out.append(Generation(dllm.decode_answer(tokens), int(mdp.nfe[row]), tokens,
                                      mdp.unmask_step[row].tolist(), int(mdp.abandoned[row].sum())))
            bar.update(len(canvas))
    return out
