"""The `hidden` policy input: the dLLM's last hidden state from the forward the env already runs (transformers models
through a hook on the output embedding, native LLaDA/Dream returning it, under every KV cache), its fixed view
(envs.confidence.HiddenView), and a policy that reads it, replayable from what the rollouts record."""

import numpy as np
import pytest
import torch

from tests.native_checkpoints import write_dream, write_llada
from unmask.envs.confidence import HiddenView
from unmask.envs.config import SamplerConfig
from unmask.envs.dllm import layout_batch, load_dllm
from unmask.envs.mdp import UnmaskingEnv
from unmask.learner.config import PolicyConfig, check_policy, input_width
from unmask.learner.policy import UnmaskingPolicy, load_policy, save_policy
from unmask.learner.sampler import PolicySampler, policy_inputs

WRITERS = {"llada": write_llada, "dream": write_dream}


@pytest.fixture(scope="module", params=["llada", "dream"])
def native(request, tmp_path_factory):
    return request.param, load_dllm(str(WRITERS[request.param](tmp_path_factory.mktemp(request.param))))


@pytest.fixture(scope="module")
def builtin():
    return load_dllm("builtin")


def head(dllm):
    model = dllm.model
    if getattr(model, "native_dllm", False):
        return model.lm_head if hasattr(model, "lm_head") else model.model.transformer.ff_out
    return model.get_output_embeddings()


def confidence_of(dllm, hidden):
    """The top-1 probability (the mask token excluded, as envs.confidence.predict) the head gives a hidden state."""
    logits = head(dllm)(hidden).float()
    logits[..., dllm.mask_id] = -torch.inf
    return logits.softmax(-1).amax(-1)


def batch(dllm, texts=("abc=", "a longer prompt="), gen_length=8):
    ids, attn = layout_batch(dllm.encode_prompts(list(texts)), gen_length, dllm.pad_id, dllm.mask_id)
    return ids, attn


def test_builtin_hidden_state_is_what_the_vocabulary_projection_reads(builtin):
    from unmask.envs.tasks.cycles import CycleTask

    ids, attn = batch(builtin, [ex.prompt for ex in CycleTask().examples("test", 2)], 24)
    plain = builtin.logits(ids, attn, last=24)
    logits, hidden = builtin.logits(ids, attn, last=24, hidden=True)
    assert torch.equal(logits, plain)  # asking for it changes nothing
    assert hidden.shape == (2, 24, builtin.hidden_width) and builtin.hidden_width == 256
    torch.testing.assert_close(head(builtin)(hidden), logits)
    assert not head(builtin)._forward_pre_hooks  # the hook is gone after the forward


def test_native_hidden_state_full_and_cached_forwards(native):
    kind, dllm = native
    ids, attn = batch(dllm)
    L = 8
    logits, hidden = dllm.logits(ids, attn, last=L, hidden=True)
    assert torch.equal(logits, dllm.logits(ids, attn, last=L))
    assert hidden.shape == (2, L, dllm.hidden_width)
    torch.testing.assert_close(head(dllm)(hidden), logits)  # Dream: shifted like its logits
    full_logits, full_hidden, cache = dllm.logits_and_cache(ids, attn, last=L, hidden=True)
    assert torch.equal(full_logits, logits) and torch.equal(full_hidden, hidden)
    start = ids.shape[1] - L
    for end in (None, start + 4):  # prefix cache, dual cache (the first block of 4)
        cached_logits, cached_hidden = dllm.logits_with_cache(ids, attn, cache, start, end, hidden=True)
        assert torch.equal(cached_logits, dllm.logits_with_cache(ids, attn, cache, start, end))
        torch.testing.assert_close(head(dllm)(cached_hidden), cached_logits)
        torch.testing.assert_close(cached_hidden, hidden[:, : cached_hidden.shape[1]], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_env_observes_the_hidden_state_only_when_asked(native, cache):
    _, dllm = native
    prompts = dllm.encode_prompts(["abc=", "a longer prompt="])
    env = UnmaskingEnv(dllm, gen_length=8, block_length=4, kv_cache=cache)
    assert env.reset(prompts, features=("confidence",)).hidden is None
    obs = env.reset(prompts, features=("confidence", "hidden"))
    first = obs.hidden.clone()
    torch.testing.assert_close(confidence_of(dllm, first), obs.confidence, atol=1e-5, rtol=1e-4)
    unmask = obs.valid & (torch.arange(8) == 0)  # the first position of block 0
    obs = env.step(unmask)
    assert obs.hidden.shape == first.shape
    # the step's hidden state is this forward's, not the last one's: it predicts what the confidence says
    torch.testing.assert_close(confidence_of(dllm, obs.hidden), obs.confidence, atol=1e-5, rtol=1e-4)


def test_hidden_view_is_fixed_orthonormal_and_bounded():
    h = torch.randn(3, 5, 64) * 7 + 2
    view = HiddenView(64, 16)
    again = HiddenView(64, 16)  # another process gets the same view
    assert torch.equal(view.projection, again.projection)
    torch.testing.assert_close(view.projection.T @ view.projection, torch.eye(16), atol=1e-5, rtol=0)
    z = view(h)
    assert z.shape == (3, 5, 16) and z.dtype == torch.float32
    assert 0.5 < float(z.std()) < 1.5  # unit scale whatever the model's
    whole = HiddenView(64, 64)
    assert whole.projection is None
    torch.testing.assert_close(whole(h), torch.nn.functional.layer_norm(h, (64,)))
    with pytest.raises(ValueError, match="hidden_dims=65 must be in 1..64"):
        HiddenView(64, 65)
    with pytest.raises(ValueError, match="width 64; this dLLM's is 32"):
        view(torch.randn(2, 32))


def test_policy_config_hidden_dims():
    cfg = PolicyConfig(inputs=["confidence", "repeat", "hidden"], hidden_dims=24)
    assert input_width(cfg) == 26
    assert input_width(PolicyConfig(inputs=["confidence"], hidden_dims=24)) == 1
    check_policy(cfg)
    with pytest.raises(ValueError, match="policy.hidden_dims must be >= 1"):
        check_policy(PolicyConfig(inputs=["confidence", "hidden"], hidden_dims=0))
    assert UnmaskingPolicy(cfg).confidence_in.in_features == 26


def test_a_hidden_state_policy_decodes_saves_and_replays(builtin, tmp_path):
    """What the policy saw (the view) is what roll_out records: the learner's replay of the recorded inputs gives the
    logits the rollout sampled from."""
    from unmask.envs.tasks.cycles import CycleTask
    from unmask.learner.grpo import step_logp
    from unmask.rollout.collect import roll_out

    torch.manual_seed(0)
    cfg = PolicyConfig(inputs=["confidence", "hidden"], hidden_dims=8)
    policy = UnmaskingPolicy(cfg).eval()
    save_policy(policy, tmp_path / "p", {"gen_length": 24})
    loaded = load_policy(tmp_path / "p")
    assert loaded.config.hidden_dims == 8 and loaded.config.inputs == ["confidence", "hidden"]
    sampler = PolicySampler(SamplerConfig(name="policy"), torch.Generator().manual_seed(0), policy=loaded,
                            fallback=True, logit_bound=3.0)
    assert sampler.features == ("confidence", "hidden")
    prompts = builtin.encode_prompts([ex.prompt for ex in CycleTask().examples("test", 3)])
    env = UnmaskingEnv(builtin, 24, 8)
    done = roll_out(env, sampler, prompts, group_size=2)
    steps = done.steps
    assert steps["extra_inputs"].shape == (6, 24, 24, 8)
    active = torch.arange(24)[None, :] < done.nfe[:, None]
    inputs = torch.cat([steps["confidences"][..., None], steps["extra_inputs"]], -1)[active]
    with torch.no_grad():
        logits = loaded(inputs, steps["mask"][active], steps["t"][active])
    replayed = step_logp(3.0 * torch.tanh(logits / 3.0), steps["action"][active], steps["valid"][active], 1.0, True)
    np.testing.assert_allclose(replayed.numpy(), steps["logp"][active].numpy(), atol=1e-4)
    obs = UnmaskingEnv(builtin, 24, 8).reset(prompts, features=sampler.features)
    view = policy_inputs(obs, ["confidence", "hidden"], 8)
    assert view.shape == (3, 24, 9) and torch.equal(view[..., 0], obs.confidence)
