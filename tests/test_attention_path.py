"""The attention path of the native models: no host sync in a forward, no mask for a batch without padding,
a boolean key mask (not an additive float one) with padding, and every result byte for byte what the earlier
path (an additive finfo.min mask, dropped after `bool(mask.all())`) gave; prompts bucketed by length in
`generate` decode exactly as in input order."""

import copy

import pytest
import torch

from tests.native_checkpoints import write_dream, write_llada
from unmask.envs.config import EnvConfig, SamplerConfig
from unmask.envs.dllm import DLLM, layout_batch, load_dllm
from unmask.envs.mdp import UnmaskingEnv
from unmask.envs.models import layers
from unmask.rollout.generation import draws_random_numbers, generate
from unmask.rollout.samplers import make_sampler, sampler

WRITERS = {"llada": write_llada, "dream": write_dream}
SAME_LENGTH = ["abcd", "dcba", "bbbb"]
MIXED = ["a much longer question?", "short?", "mid size q?", "tiny", "a longer one here"]


def old_key_padding_mask(attention_mask, dtype):
    """The earlier mask: no mask when every position is real (read from the device), else additive finfo.min."""
    if attention_mask is None or isinstance(attention_mask, str) or bool(attention_mask.all()):
        return None
    hide = ~attention_mask.bool() if attention_mask.dim() == 4 else ~attention_mask.bool()[:, None, None, :]
    return torch.zeros(hide.shape, dtype=dtype, device=hide.device).masked_fill(hide, torch.finfo(dtype).min)


@pytest.fixture(scope="module", params=["llada", "dream"])
def native(request, tmp_path_factory):
    return load_dllm(str(WRITERS[request.param](tmp_path_factory.mktemp(request.param))))


@pytest.fixture
def old_path(monkeypatch):
    """Switch to the earlier path: the env always passes its mask, the model builds the earlier mask."""
    def switch():
        monkeypatch.setattr(layers, "key_padding_mask", old_key_padding_mask)
        monkeypatch.setattr(UnmaskingEnv, "padded", property(lambda self: True))
    return switch


@pytest.fixture
def sdpa_masks(monkeypatch):
    """The `attn_mask` of every SDPA call the native layers make."""
    seen = []
    real = layers.F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        seen.append((attn_mask, k.shape[2]))
        return real(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", spy)
    return seen


def decode(dllm: DLLM, prompts: list[str], kv_cache: str = "none", temperature: float = 0.0):
    """A whole decode: every observation's confidences, the canvas and NFE."""
    env = UnmaskingEnv(dllm, gen_length=8, block_length=4, kv_cache=kv_cache, temperature=temperature)
    pick = make_sampler(SamplerConfig(name="top_k", steps=4))
    obs = env.reset(dllm.encode_prompts(prompts), features=("confidence", "token_prob"))
    seen = [obs.confidence.clone()]
    while not env.done:
        obs = env.step(pick.select(obs))
        seen.append(obs.confidence.clone())
    return seen, env.canvas(), env.nfe.clone()


# ---- (a) no host sync ---------------------------------------------------------------------------------
def on_meta(dllm: DLLM) -> DLLM:
    """The same model with every tensor on the meta device: any read of a value on the host raises."""
    return DLLM(copy.deepcopy(dllm.model).to("meta"), dllm.tokenizer, mask_id=dllm.mask_id, eos_id=dllm.eos_id,
                pad_id=dllm.pad_id, logit_shift=dllm.logit_shift)


@pytest.mark.parametrize("prompts", [SAME_LENGTH, MIXED])
def test_forwards_read_nothing_back_from_the_device(native, prompts):
    meta = on_meta(native)
    ids, attn = layout_batch(native.encode_prompts(prompts), 8, native.pad_id, native.mask_id)
    ids, attn = ids.to("meta"), attn.to("meta")
    mask = attn if prompts is MIXED else None
    width = ids.shape[1] - 8
    assert meta.logits(ids, mask, last=8).shape[:2] == (len(prompts), 8)
    _, cache = meta.logits_and_cache(ids, mask, last=8)
    assert meta.logits_with_cache(ids, mask, cache, width + 4).shape[1] == 4  # prefix cache
    assert meta.logits_with_cache(ids, mask, cache, width, width + 4).shape[1] == 4  # dual cache


def test_the_meta_check_catches_the_earlier_mask(native, monkeypatch):
    monkeypatch.setattr(layers, "key_padding_mask", old_key_padding_mask)
    meta = on_meta(native)
    ids, attn = layout_batch(native.encode_prompts(MIXED), 8, native.pad_id, native.mask_id)
    with pytest.raises((RuntimeError, NotImplementedError)):
        meta.logits(ids.to("meta"), attn.to("meta"))


def forbid_host_reads(monkeypatch, model):
    """Inside the model's forward, a tensor turned into a Python value raises (outside it is allowed: the env and
    engine have their own syncs)."""
    inside = []

    def guard(name):
        real = getattr(torch.Tensor, name)

        def checked(self, *args, **kwargs):
            if inside:
                raise AssertionError(f"Tensor.{name} in the model's forward: a host sync on a GPU")
            return real(self, *args, **kwargs)

        return checked

    for name in ("__bool__", "item", "tolist", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, guard(name))
    real_forward = model.forward

    def forward(*args, **kwargs):
        inside.append(True)
        try:
            return real_forward(*args, **kwargs)
        finally:
            inside.pop()

    monkeypatch.setattr(model, "forward", forward)


@pytest.mark.parametrize("kv_cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("prompts", [SAME_LENGTH, MIXED])
def test_env_forwards_convert_no_tensor_to_a_python_value(native, monkeypatch, kv_cache, prompts):
    forbid_host_reads(monkeypatch, native.model)
    _, canvas, _ = decode(native, prompts, kv_cache)
    assert (canvas != native.mask_id).all()


def test_the_guard_catches_the_earlier_path(native, monkeypatch, old_path):
    old_path()
    forbid_host_reads(monkeypatch, native.model)
    with pytest.raises(AssertionError, match="host sync"):
        decode(native, SAME_LENGTH)


# ---- (b) what SDPA gets --------------------------------------------------------------------------------
@pytest.mark.parametrize("kv_cache", ["none", "prefix", "dual"])
def test_sdpa_gets_no_mask_without_padding_and_a_boolean_key_mask_with_it(native, sdpa_masks, kv_cache):
    decode(native, SAME_LENGTH, kv_cache)
    assert sdpa_masks and all(mask is None for mask, _ in sdpa_masks)
    sdpa_masks.clear()
    decode(native, MIXED, kv_cache)
    assert sdpa_masks
    for mask, keys in sdpa_masks:
        assert mask.dtype == torch.bool and mask.shape[1:3] == (1, 1) and mask.shape[3] == keys
        assert mask.any(-1).all()  # every query row attends to some key: nothing fully masked


def test_padded_query_rows_stay_finite(native):
    ids, attn = layout_batch(native.encode_prompts(MIXED), 8, native.pad_id, native.mask_id)
    assert (attn == 0).any() and torch.isfinite(native.logits(ids, attn)).all()


def test_dream_s_pairwise_4d_mask_gives_what_it_gave(native, monkeypatch):
    ids, attn = layout_batch(native.encode_prompts(MIXED), 8, native.pad_id, native.mask_id)
    pairwise = attn.bool()[:, None, None, :] & attn.bool()[:, None, :, None]
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        new = native.model(input_ids=ids, attention_mask=pairwise, position_ids=positions).logits
        monkeypatch.setattr(layers, "key_padding_mask", old_key_padding_mask)
        old = native.model(input_ids=ids, attention_mask=pairwise, position_ids=positions).logits
    assert torch.isfinite(new).all() and torch.equal(new, old)


# ---- (c) results unchanged -----------------------------------------------------------------------------
@pytest.mark.parametrize("kv_cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("prompts", [SAME_LENGTH, MIXED])
def test_decodes_equal_the_earlier_path_byte_for_byte(native, old_path, kv_cache, prompts):
    new = decode(native, prompts, kv_cache, temperature=0.7)
    old_path()
    old = decode(native, prompts, kv_cache, temperature=0.7)
    assert len(new[0]) == len(old[0]) and all(torch.equal(a, b) for a, b in zip(new[0], old[0]))
    assert torch.equal(new[1], old[1]) and torch.equal(new[2], old[2])


@pytest.mark.parametrize("prompts", [SAME_LENGTH, MIXED])
def test_adapter_logits_equal_the_earlier_path(native, monkeypatch, prompts):
    ids, attn = layout_batch(native.encode_prompts(prompts), 8, native.pad_id, native.mask_id)
    new = native.logits(ids, attn if prompts is MIXED else None)
    new_full_mask = native.logits(ids, attn)  # a caller that passes the all-ones mask anyway
    monkeypatch.setattr(layers, "key_padding_mask", old_key_padding_mask)
    old = native.logits(ids, attn)
    assert torch.equal(new, old) and torch.equal(new_full_mask, old)


@pytest.mark.parametrize("prompts", [["ab?c", "ca?b", "bc?a"], ["abcdefghij?c", "ab?c", "cab?a"]])
def test_the_transformers_path_is_unchanged(tiny_dllm, old_path, prompts):
    """The built-in BERT takes None (no padding) or the 2D mask, and decodes as before."""
    new = decode(tiny_dllm, prompts, temperature=0.7)
    old_path()
    old = decode(tiny_dllm, prompts, temperature=0.7)
    assert all(torch.equal(a, b) for a, b in zip(new[0], old[0]))
    assert torch.equal(new[1], old[1]) and torch.equal(new[2], old[2])


# ---- (d) length buckets in generate --------------------------------------------------------------------
def as_tuples(generations):
    return [(g.text, g.nfe, g.tokens, g.unmask_step, g.abandoned) for g in generations]


@pytest.mark.parametrize("name, params", [("top_k", {"steps": 4}), ("fast_dllm", {"threshold": 0.5})])
def test_bucketed_generate_equals_input_order(native, sdpa_masks, name, params):
    prompts = MIXED + ["short!", "tiny", "a much longer question!"]
    env = EnvConfig(gen_length=8, block_length=4)
    plain = generate(native, prompts, sampler(name, **params), env, batch_size=2, bucket=False)
    padded_calls = sum(mask is not None for mask, _ in sdpa_masks)
    sdpa_masks.clear()
    bucketed = generate(native, prompts, sampler(name, **params), env, batch_size=2, bucket=True)
    assert as_tuples(bucketed) == as_tuples(plain)
    assert sum(mask is not None for mask, _ in sdpa_masks) < padded_calls  # most batches now need no mask
    assert as_tuples(generate(native, prompts, sampler(name, **params), env, batch_size=2)) == as_tuples(plain)


def test_bucketed_generate_on_the_transformers_path(tiny_dllm):
    prompts = ["abcdefghij?c", "ab?c", "cab?a", "ba?c", "abcdefghij?a", "cab?b"]
    env = EnvConfig(gen_length=8, block_length=4)
    plain = generate(tiny_dllm, prompts, sampler("top_k", steps=4), env, batch_size=2, bucket=False)
    assert as_tuples(generate(tiny_dllm, prompts, sampler("top_k", steps=4), env, batch_size=2,
                              bucket=True)) == as_tuples(plain)


def test_buckets_only_by_default_where_no_draw_depends_on_the_batch(tiny_dllm):
    """Token noise (temperature > 0) and a stochastic sampler's draws are taken per batch: by default such runs
    keep the input order, so their results are what they were."""
    assert not draws_random_numbers(sampler("top_k", steps=4))
    assert draws_random_numbers(sampler("random", k=1))
    assert draws_random_numbers(sampler("oracle", reference="random:k=1"))
    assert not draws_random_numbers(sampler("oracle", reference="fast_dllm:threshold=0.9", block_length=4))
    prompts = ["abcdefghij?c", "ab?c", "cab?a", "ba?c", "abcdefghij?a", "cab?b"]
    hot = EnvConfig(gen_length=8, block_length=4, temperature=1.0)
    plain = generate(tiny_dllm, prompts, sampler("top_k", steps=4), hot, batch_size=2, bucket=False)
    assert as_tuples(generate(tiny_dllm, prompts, sampler("top_k", steps=4), hot, batch_size=2)) == as_tuples(plain)
    draws = [generate(tiny_dllm, prompts, sampler("random", k=1, generator=torch.Generator().manual_seed(3)),
                      EnvConfig(gen_length=8, block_length=4), batch_size=2, **kw) for kw in ({}, {"bucket": False})]
    assert as_tuples(draws[0]) == as_tuples(draws[1])
