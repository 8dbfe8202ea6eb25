"""The shipped built-in dLLM: it loads by name and shows the phenomena the project is about.

Measured on 100 test prompts (standard error of an accuracy near 0.9 is about 0.03; the decode is greedy, so the
figures are fixed for fixed weights), with margins wide enough that a regression, not noise, fails them. The results
pages have the 500-prompt figures.
"""

import functools

import pytest

from unmask.envs.config import EnvConfig, SamplerConfig, TaskConfig
from unmask.envs.dllm import BUILTIN_MODEL_DIR, load_dllm
from unmask.envs.tasks import make_task
from unmask.rollout.evaluate import run_episodes, summarize
from unmask.rollout.samplers import make_sampler

pytestmark = pytest.mark.skipif(not (BUILTIN_MODEL_DIR / "model.safetensors").exists(),
                                reason="the built-in checkpoint is not in this checkout")


@pytest.fixture(scope="module")
def measure():
    dllm = load_dllm("builtin")
    task = make_task(TaskConfig())
    examples = task.examples("test", 100, seed=1)

    @functools.cache  # several tests compare against the same decode
    def run(env_block_length: int, **sampler) -> dict:
        env = EnvConfig(block_length=env_block_length, batch_size=100)
        episodes = run_episodes(dllm, task, examples, make_sampler(SamplerConfig(**sampler)), env)
        return summarize(episodes, env.gen_length)

    return run


def test_builtin_loads_by_name_through_auto_classes():
    dllm = load_dllm("builtin")
    assert dllm.max_length == 12 + 24  # prompt of the 10-letter task + L
    assert dllm.tokenizer.mask_token == "[MASK]"
    assert (BUILTIN_MODEL_DIR / "model.safetensors").stat().st_size < 20 * 2**20


@pytest.mark.slow
def test_one_token_per_step_semi_ar_solves_most_prompts(measure):
    # measured 0.992 (BL=8) on 500 prompts (README table); a random model scores ~0
    assert measure(8, name="top_k", steps=24)["accuracy"] >= 0.9


@pytest.mark.slow
def test_threshold_with_small_blocks_keeps_accuracy_at_fewer_nfe(measure):
    slow = measure(8, name="top_k", steps=24)
    fast = measure(4, name="fast_dllm", threshold=0.9)
    assert fast["mean_nfe"] < 0.6 * slow["mean_nfe"]  # measured 12.6 vs 24
    assert fast["accuracy"] >= slow["accuracy"] - 0.03


@pytest.mark.slow
def test_dependent_tokens_committed_in_parallel_break_answers(measure):
    # two tokens per step force commits of positions that depend on each other (a letter and whether a
    # `,` precedes it): measured 0.286 vs 0.992 at BL=8
    one = measure(8, name="top_k", steps=24)["accuracy"]
    two = measure(8, name="top_k", steps=12)["accuracy"]
    assert two < one - 0.4


@pytest.mark.slow
def test_full_diffusion_commits_eos_early_and_loses_to_semi_ar_at_equal_nfe(measure):
    # LLaDA's failure: with one block, confidence order commits EOS padding from the right before the
    # answer is written, and the model cannot see a long cycle's length, so answers are cut short
    semi_ar = measure(4, name="top_k", steps=24)
    full = measure(24, name="top_k", steps=24)
    assert semi_ar["mean_nfe"] == full["mean_nfe"] == 24
    assert full["accuracy"] <= semi_ar["accuracy"] - 0.15  # measured 0.754 vs 0.992 on 500 prompts
    assert full["shorter_than_reference"] >= 0.15 > semi_ar["shorter_than_reference"]  # 0.246, 0.006


# Canvases of the shipped model under the official Fast-dLLM `llada/generate.py` loop (batch 1), checked against
# it on 100 test prompts (100/100 canvases and NFE equal, 2026-12-01); three per setting kept here.
OFFICIAL = [
    ("top_k", {"steps": 24}, 8, "cigehadjfb?b", ">bifacg,dehj,b" + "[EOS]" * 10, 24),
    ("top_k", {"steps": 24}, 8, "dajefigcbh?a", ">adefi,b,a" + "[EOS]" * 14, 24),
    ("top_k", {"steps": 24}, 8, "dheifajgbc?c", ">c,ef,a,di,b,hg,jc" + "[EOS]" * 6, 24),
    ("fast_dllm", {"threshold": 0.9}, 24, "cigehadjfb?b", ">bifacgd,ehjb" + "[EOS]" * 11, 17),
    ("fast_dllm", {"threshold": 0.9}, 24, "dajefigcbh?a", ">adefiba" + "[EOS]" * 16, 12),
    ("fast_dllm", {"threshold": 0.9}, 24, "dheifajgbc?c", ">c,ef,a,dijc" + "[EOS]" * 12, 17),
    ("fast_dllm", {"threshold": 0.7}, 8, "cigehadjfb?b", ">bifacg,dehjbb" + "[EOS]" * 10, 13),
    ("fast_dllm", {"threshold": 0.7}, 8, "dajefigcbh?a", ">adefi,b,a" + "[EOS]" * 14, 11),
    ("fast_dllm", {"threshold": 0.7}, 8, "dheifajgbc?c", ">c,ef,a,di,b,hg,jc" + "[EOS]" * 6, 17),
]


@pytest.mark.parametrize("name, params, block_length, prompt, canvas, nfe", OFFICIAL)
def test_canvases_match_the_official_loop(name, params, block_length, prompt, canvas, nfe):
    from unmask.envs.mdp import UnmaskingEnv

    dllm = load_dllm("builtin")
    sampler = make_sampler(SamplerConfig(name=name, **params))
    prompts = dllm.encode_prompts([prompt, "cigehadjfb?b", "dheifajgbc?c"])  # batched beside others: the same
    env = UnmaskingEnv(dllm, 24, block_length)
    obs = env.reset(prompts, features=sampler.features)
    while not env.done:
        obs = env.step(sampler.select(obs))
    assert dllm.tokenizer.decode(env.canvas()[0].tolist()) == canvas and int(env.nfe[0]) == nfe


@pytest.mark.slow
def test_the_oracle_writes_the_reference_s_answers_in_a_quarter_of_its_forwards(measure):
    # measured on 500 prompts: the oracle of one token per step 0.974 @ 5.85 (BL = 8, against 0.992 @ 24), and in
    # full diffusion, its reference decoding blocks of 8, 0.982 @ 3.25 (against top_k's own 0.754 @ 24)
    semi_ar = measure(8, name="oracle", reference="top_k")
    full = measure(24, name="oracle", reference="top_k", block_length=8)
    assert semi_ar["accuracy"] >= 0.93 and semi_ar["mean_nfe"] < 7
    assert full["accuracy"] >= 0.93 and full["mean_nfe"] < 4.5
