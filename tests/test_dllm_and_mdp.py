"""The dLLM adapter and the unmasking MDP on a tiny random-weight dLLM (real HF save/load, real forwards)."""

import dataclasses

import pytest
import torch

from tests.conftest import save_tiny_model
from unmask.envs.confidence import predict
from unmask.envs.config import SamplerConfig
from unmask.envs.dllm import ModelLoadError, layout_batch, load_dllm
from unmask.envs.mdp import SamplerError, UnmaskingEnv
from unmask.envs.samplers import leftmost_valid
from unmask.rollout.samplers import make_sampler


def test_loads_through_auto_classes_and_knows_its_tokens(tiny_dllm):
    tok = tiny_dllm.tokenizer
    assert tiny_dllm.mask_id == tok.mask_token_id and tiny_dllm.eos_id == tok.eos_token_id
    assert tiny_dllm.max_length == 64
    assert tiny_dllm.encode_prompts(["ab?c"]) == [tok.convert_tokens_to_ids(list("ab?c"))]
    ids = tok.convert_tokens_to_ids(list(">ab")) + [tiny_dllm.eos_id, tiny_dllm.eos_id]
    assert tiny_dllm.decode_answer(ids) == ">ab"


def test_hub_ids_are_not_mistaken_for_paths(tmp_path, monkeypatch):
    from unmask.envs.files import is_local_path
    assert not is_local_path("GSAI-ML/LLaDA-8B-Instruct") and not is_local_path("bert-base-uncased")
    assert is_local_path("./runs/model") and is_local_path(str(tmp_path))


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_dllm(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="is not a model directory"):
        load_dllm(str(tmp_path / "empty"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file, not a model directory"):
        load_dllm(str(tmp_path / "file"))


def test_a_truncated_checkpoint_is_one_line(tiny_model_dir, tmp_path):
    import shutil

    broken = shutil.copytree(tiny_model_dir, tmp_path / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="cannot load model") as err:
        load_dllm(str(broken))
    assert len(str(err.value).splitlines()) == 1


def test_left_padding_gives_the_same_logits_as_one_at_a_time(tiny_dllm):
    prompts = tiny_dllm.encode_prompts(["abcdefghij?c", "ab?c", "cab?a"])
    batch_ids, batch_attn = layout_batch(prompts, 8, tiny_dllm.pad_id, tiny_dllm.mask_id)
    batched = tiny_dllm.logits(batch_ids, batch_attn)[:, -8:]
    for row, prompt in enumerate(prompts):
        ids, attn = layout_batch([prompt], 8, tiny_dllm.pad_id, tiny_dllm.mask_id)
        alone = tiny_dllm.logits(ids, attn)[:, -8:]
        torch.testing.assert_close(batched[row], alone[0], atol=1e-5, rtol=1e-5)


def test_logit_shift_moves_predictions_one_position_right(tiny_model_dir):
    plain = load_dllm(tiny_model_dir)
    shifted = load_dllm(tiny_model_dir, logit_shift=True)
    ids, attn = layout_batch(plain.encode_prompts(["abc?d"]), 6, plain.pad_id, plain.mask_id)
    a, b = plain.logits(ids, attn), shifted.logits(ids, attn)
    torch.testing.assert_close(b[:, 1:], a[:, :-1])
    torch.testing.assert_close(b[:, 0], a[:, 0])


def test_predict_features_match_direct_computation():
    logits = torch.tensor([[[2.0, 1.0, 0.0, -1.0]]])
    p = torch.softmax(logits.double(), -1)[0, 0]
    pred = predict(logits, mask_id=3)
    q = torch.softmax(logits[0, 0, :3].double(), -1)  # the mask token is excluded
    assert pred.tokens.item() == 0
    assert pred.confidence.item() == pytest.approx(q[0].item(), rel=1e-6)
    assert pred.margin.item() == pytest.approx((q[0] - q[1]).item(), rel=1e-6)
    assert pred.entropy.item() == pytest.approx(-(q * q.log()).sum().item(), rel=1e-6)
    assert p[0] < q[0]


def test_near_one_confidences_stay_apart_and_only_asked_features_are_computed():
    """1 - p ~ 1e-7 and 3e-7: a float32 probability rounds both towards 1 and ties them; the float64 ones
    computed from the float32 sum of the other tokens keep them apart and ordered."""
    logits = torch.tensor([[[0.0, -16.1, -40.0], [0.0, -15.0, -40.0]]])
    pred = predict(logits, features=("token_prob",))
    one_minus = 1 - pred.token_prob[0]
    torch.testing.assert_close(one_minus, torch.tensor([1.0e-7, 3.06e-7], dtype=torch.float64), rtol=0.02, atol=0)
    assert pred.token_prob.dtype == torch.float64 and pred.token_prob[0, 0] > pred.token_prob[0, 1]
    assert pred.confidence is None and pred.margin is None and pred.entropy is None


def test_gumbel_sampling_follows_softmax_of_logits_over_temperature():
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1]))[None, None].expand(1, 20000, 3).clone()
    g = torch.Generator().manual_seed(0)
    pred = predict(logits, temperature=1.0, generator=g)
    freq = torch.bincount(pred.tokens[0], minlength=3).double() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64), atol=0.02, rtol=0)
    cold = predict(logits, temperature=0.0)
    assert (cold.tokens == 0).all()
    # token_prob is the probability of the sampled token; confidence stays the top-1 probability
    assert torch.allclose(pred.confidence, torch.full_like(pred.confidence, 0.6))
    expected = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)[pred.tokens]
    torch.testing.assert_close(pred.token_prob, expected)


def run(env, sampler, prompts):
    """The episode, with a copy of every observation (the env's own tensors change at the next step)."""
    def kept(obs):
        return dataclasses.replace(obs, masked=obs.masked.clone(), valid=obs.valid.clone(), active=obs.active.clone())

    obs = env.reset(prompts)
    history = [kept(obs)]
    while not env.done:
        obs = env.step(sampler.select(obs))
        history.append(kept(obs))
    return history


def test_episode_respects_blocks_never_remasks_and_counts_nfe(tiny_dllm):
    env = UnmaskingEnv(tiny_dllm, gen_length=8, block_length=4)
    sampler = make_sampler(SamplerConfig(name="top_k", steps=8))  # one token per step
    prompts = tiny_dllm.encode_prompts(["abc?a", "cba?b"])
    history = run(env, sampler, prompts)
    assert env.nfe.tolist() == [8, 8]
    steps = env.unmask_step
    assert sorted(steps[0].tolist()) == list(range(8))
    assert steps[:, :4].max() < steps[:, 4:].min()  # block 0 finished before block 1 started
    assert not (env.canvas() == tiny_dllm.mask_id).any()
    for before, after in zip(history, history[1:]):
        assert not (after.masked & ~before.masked).any()  # nothing is ever remasked
        assert (before.valid.sum(-1)[before.active] > 0).all()


def test_finished_rows_stop_costing_forwards(tiny_dllm):
    env = UnmaskingEnv(tiny_dllm, gen_length=8, block_length=8)
    prompts = tiny_dllm.encode_prompts(["abc?a", "cba?b"])
    obs = env.reset(prompts)
    everything = obs.valid.clone()
    first_row_only = everything.clone()
    first_row_only[1] = False
    first_row_only[1, 0] = True
    obs = env.step(first_row_only)  # row 0 finishes now; row 1 wrote one token
    assert obs.active.tolist() == [False, True]
    assert env.nfe.tolist() == [1, 2]
    assert obs.t.tolist()[1] == pytest.approx(1 / 8)  # forwards spent before this decision / L
    obs = env.step(obs.valid)  # row 1 finishes: no forward follows for anyone
    assert env.done and env.nfe.tolist() == [1, 2]


def test_empty_decisions_cost_nfe_and_blocks_are_capped(tiny_dllm):
    env = UnmaskingEnv(tiny_dllm, gen_length=8, block_length=4)
    obs = env.reset(tiny_dllm.encode_prompts(["abc?a"]))
    for _ in range(4):  # a policy that never unmasks anything
        obs = env.step(torch.zeros_like(obs.valid))
    assert env.abandoned[0, :4].all() and obs.block_index.item() == 1 and env.nfe.item() == 5
    while not env.done:
        obs = env.step(obs.valid)
    assert env.nfe.item() == 5  # L forwards at most: 4 for block 0, then 1
    assert (env.canvas()[0, :4] == tiny_dllm.mask_id).all()
    assert tiny_dllm.mask_id in env.canvas()[0].tolist()


def test_fill_at_budget_writes_what_a_block_left_with_its_last_forward(tiny_dllm):
    """The training option: a policy that never unmasks still pays each block's whole budget (NFE = L), but the
    block's last forward writes its predictions where the policy left masks, so the answer can be scored."""
    env = UnmaskingEnv(tiny_dllm, gen_length=8, block_length=4, fill_at_budget=True)
    obs = env.reset(tiny_dllm.encode_prompts(["abc?a"]))
    predicted = []
    while not env.done:
        predicted.append(env.pred.tokens[0].clone())
        obs = env.step(torch.zeros_like(obs.valid))
    assert env.nfe.item() == 8 and not env.abandoned.any()
    canvas = env.canvas()[0]
    assert tiny_dllm.mask_id not in canvas.tolist()
    assert torch.equal(canvas[:4], predicted[3][:4]) and torch.equal(canvas[4:], predicted[7][4:])  # last forwards
    assert env.unmask_step[0].tolist() == [3] * 4 + [7] * 4


def test_invalid_decisions_are_rejected(tiny_dllm):
    env = UnmaskingEnv(tiny_dllm, gen_length=8, block_length=4)
    obs = env.reset(tiny_dllm.encode_prompts(["abc?a"]))
    outside = torch.zeros_like(obs.valid)
    outside[0, 5] = True  # second block
    with pytest.raises(SamplerError, match="not a masked position of the current block"):
        env.step(outside)
    with pytest.raises(SamplerError, match="shape"):
        env.step(torch.zeros(1, 3, dtype=torch.bool))


def test_length_and_context_errors(tiny_dllm):
    with pytest.raises(ValueError, match="not divisible"):
        UnmaskingEnv(tiny_dllm, gen_length=10, block_length=4)
    env = UnmaskingEnv(tiny_dllm, gen_length=60, block_length=60)
    with pytest.raises(ValueError, match="exceeds the model's context of 64"):
        env.reset(tiny_dllm.encode_prompts(["abcdefgh?a"]))


def test_seeded_temperature_sampling_is_reproducible(tmp_path):
    dllm = load_dllm(save_tiny_model(tmp_path / "m", seed=3))

    def canvas(temperature, seed):
        env = UnmaskingEnv(dllm, gen_length=16, block_length=16, temperature=temperature, seed=seed)
        run(env, make_sampler(SamplerConfig(name="fast_dllm", threshold=0.5)), dllm.encode_prompts(["abc?a"] * 4))
        return env.canvas()

    assert torch.equal(canvas(1.0, 7), canvas(1.0, 7))
    assert not torch.equal(canvas(1.0, 7), canvas(1.0, 8))  # the noise is real
    assert torch.equal(canvas(0.0, 7), canvas(0.0, 8))  # greedy ignores the seed


def test_predict_in_row_chunks_equals_one_pass(monkeypatch):
    import unmask.envs.confidence as confidence

    logits = torch.randn(5, 3, 7)
    whole = predict(logits, mask_id=6)
    monkeypatch.setattr(confidence, "MAX_TEMPORARY_ELEMENTS", 2 * 3 * 7)  # chunks of 2 rows
    chunked = predict(logits, mask_id=6)
    for name in ("tokens", "token_prob", "confidence", "margin", "entropy"):
        assert torch.equal(getattr(chunked, name), getattr(whole, name)), name


def test_prompts_with_text_the_tokenizer_cannot_represent_are_refused():
    dllm = load_dllm("builtin")  # knows the letters a-j
    assert dllm.encode_prompts(["ab[UNK]?a"]) == [[7, 8, dllm.tokenizer.unk_token_id, 6, 7]]  # spelled out: fine
    with pytest.raises(ValueError, match="cannot represent"):
        dllm.encode_prompts(["abk?a"])


def test_emulated_gpu_keeps_the_logits_and_takes_the_modelled_time(tiny_model_dir):
    """env.emulate_gpu: the real model's logits, bit for bit; each forward lasts at least what the cost model
    says for its rows and tokens (it sleeps the difference), and the modelled time is summed exactly."""
    import time

    from unmask.envs.config import EnvConfig, check_env
    from unmask.envs.dllm import load_env_dllm
    from unmask.envs.emulation import PROFILES, EmulatedForwards, GPUProfile

    plain = load_dllm(tiny_model_dir)
    emulated = load_env_dllm(tiny_model_dir, EnvConfig(emulate_gpu="h200-llada8b"))
    assert emulated.emulation.gpu == PROFILES["h200-llada8b"]
    ids = torch.full((3, 12), plain.mask_id)
    mask = torch.ones_like(ids)
    assert torch.equal(emulated.logits(ids, mask), plain.logits(ids, mask))

    dllm = load_dllm(tiny_model_dir)
    timed = EmulatedForwards(dllm, GPUProfile(floor_ms=30.0, token_us=2000.0, source="test"), tokens_per_row=24)
    start = time.perf_counter()
    dllm.logits(ids, mask)  # a full forward of width 12, charged as 24 tokens a row: 3 x 24 x 2 ms = 144 ms
    dllm.logits(ids[:1, :6], mask[:1, :6])  # half the width: 12 tokens x 2 ms = 24 ms, under the 30 ms floor
    assert time.perf_counter() - start >= 0.144 + 0.030
    assert timed.forwards == 2 and timed.emulated_s == pytest.approx(0.174)

    instant = load_dllm(tiny_model_dir)
    free = EmulatedForwards(instant, GPUProfile(0.0, 0.0, "test"))  # a GPU faster than any CPU: always overrun
    instant.logits(ids, mask)
    assert free.forwards == 1 and free.overruns == 1 and free.slept_s == 0.0
    with pytest.raises(ValueError, match="unknown env.emulate_gpu 'v100'"):
        check_env(EnvConfig(emulate_gpu="v100"))
    with pytest.raises(ValueError, match="env.emulate_tokens must be >= 0"):
        check_env(EnvConfig(emulate_gpu="h200-llada8b", emulate_tokens=-1))


def test_repeat_compares_each_token_with_its_neighbours_written_or_predicted(tiny_dllm):
    """`repeat` against a recomputation, at every forward of an episode, from the canvas before it and the tokens the
    env predicted: a written neighbour counts with the token written, a masked one with its prediction."""
    env = UnmaskingEnv(tiny_dllm, gen_length=8, block_length=4)
    obs = env.reset(tiny_dllm.encode_prompts(["abc?a", "cba?b", "aaa?c"]), features=("repeat",))
    forwards, kinds = 0, set()
    while not env.done:
        seen = torch.where(obs.masked, obs.tokens, env.canvas())
        kinds |= set(obs.repeat[obs.valid].tolist())
        for row in range(3):
            for i in range(8):
                neighbours = [seen[row, j] for j in (i - 1, i + 1) if 0 <= j < 8]
                assert bool(obs.repeat[row, i]) == any(bool(seen[row, i] == n) for n in neighbours)
        forwards += 1
        obs = env.step(obs.valid & (torch.arange(8) % 2 == forwards % 2) | leftmost_valid(obs.valid))
    assert forwards > 2 and kinds == {True, False}
    assert env.reset(tiny_dllm.encode_prompts(["abc?a"]), features=("confidence",)).repeat is None


def test_history_follows_each_position_across_forwards(tiny_dllm):
    """stable_steps, confidence_ema and confidence_delta against a recomputation from the tokens and confidences the
    env showed at each forward (rows finish at different times; a finished row's history stands still)."""
    from unmask.envs.confidence import EMA_DECAY

    env = UnmaskingEnv(tiny_dllm, gen_length=8, block_length=4)
    obs = env.reset(tiny_dllm.encode_prompts(["abc?a", "cba?b"]), features=("stable_steps", "confidence_ema",
                                                                              "confidence_delta"))
    seen = []
    while not env.done:
        seen.append({k: getattr(obs, k).clone() for k in ("tokens", "confidence", "stable_steps", "confidence_ema",
                                                            "confidence_delta", "active")})
        decide = torch.zeros_like(obs.valid)
        decide[0] = obs.valid[0]  # row 0 commits its whole block each step, row 1 one position
        decide[1] = obs.valid[1] & (torch.arange(8) == torch.where(obs.valid[1], torch.arange(8), 8).min())
        obs = env.step(decide)
    stable, ema, previous = torch.zeros(2, 8), seen[0]["confidence"].clone(), seen[0]
    for i, now in enumerate(seen):
        if i:
            ran = now["active"][:, None]
            same = now["tokens"] == previous["tokens"]
            stable = torch.where(ran, torch.where(same, stable + 1, 0.0), stable)
            ema = torch.where(ran, EMA_DECAY * ema + (1 - EMA_DECAY) * now["confidence"], ema)
            delta = now["confidence"] - previous["confidence"]
            torch.testing.assert_close(now["confidence_delta"][now["active"]], delta[now["active"]])
        torch.testing.assert_close(now["stable_steps"], stable)
        torch.testing.assert_close(now["confidence_ema"], ema)
        previous = {k: torch.where(now["active"][:, None], now[k], previous[k]) if now[k].dim() == 2 else now[k]
                    for k in now}
    assert len(seen) > 2 and not seen[-1]["active"][0] and stable.max() > 0
