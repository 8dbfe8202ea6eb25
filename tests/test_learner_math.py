"""Policy network shape/initialisation and the GRPO math against hand-computed values."""

import math

import pytest
import torch
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

from unmask.learner.config import PolicyConfig
from unmask.learner.grpo import bernoulli_logp, group_advantages, grpo_loss, reward
from unmask.learner.policy import UnmaskingPolicy


def test_policy_matches_the_paper_size_and_init():
    policy = UnmaskingPolicy()
    assert sum(p.numel() for p in policy.parameters()) == 331_265
    assert policy.head.bias.item() == -2.0
    for block in policy.blocks:
        assert not block.modulation[1].weight.any() and not block.modulation[1].bias.any()
    logits = policy(torch.rand(2, 16), torch.rand(2, 16) > 0.5, torch.tensor([0.0, 0.5]))
    assert logits.shape == (2, 16) and torch.isfinite(logits).all()


def test_policy_reads_mask_and_time_through_conditioning():
    torch.manual_seed(0)
    policy = UnmaskingPolicy(PolicyConfig(hidden_size=32, num_heads=2, ffn_size=64, time_embed_size=32))
    for p in policy.blocks[0].modulation.parameters():
        torch.nn.init.normal_(p, std=0.5)  # leave the zero init, as training would
    c = torch.rand(1, 8)
    m = torch.ones(1, 8, dtype=torch.bool)
    base = policy(c, m, torch.tensor([0.1]))
    assert not torch.allclose(base, policy(c, m, torch.tensor([0.9])))
    assert not torch.allclose(base, policy(c, ~m, torch.tensor([0.1])))


def test_rewards_multiplicative_and_additive():
    correct, nfe = torch.tensor([1, 1, 0]), torch.tensor([32, 8, 4])
    mult = reward(correct, nfe, gen_length=32, alpha=1.0)
    assert mult.tolist() == pytest.approx([1 / 32, 25 / 32, 0.0])
    assert reward(correct, nfe, 32, alpha=0.0).tolist() == [1.0, 1.0, 0.0]
    add = reward(correct, nfe, 32, alpha=0.5, kind="additive")
    assert add.tolist() == pytest.approx([1 - 0.5, 1 - 0.125, -0.0625])
    with pytest.raises(ValueError):
        reward(correct, nfe, 32, 1.0, kind="nope")


def test_group_advantages_subtract_the_group_mean():
    r = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, 4.0])
    g = torch.tensor([0, 0, 1, 1, 2, 2])
    assert group_advantages(r, g).tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0, -1.0, 1.0])
    scaled = group_advantages(r, g, scale_by_std=True)
    assert scaled[0].item() == pytest.approx(0.5 / math.sqrt(0.5), rel=1e-4)


def test_bernoulli_logp_equals_direct_product():
    logits = torch.tensor([[0.3, -1.2, 2.0, 0.0]])
    action = torch.tensor([[1, 0, 1, 1]])
    valid = torch.tensor([[True, True, True, False]])
    s = torch.sigmoid(logits[0])
    direct = math.log(s[0]) + math.log(1 - s[1]) + math.log(s[2])
    assert bernoulli_logp(logits, action, valid).item() == pytest.approx(direct, rel=1e-6)
    half = torch.sigmoid(logits[0] / 0.5)
    direct_t = math.log(half[0]) + math.log(1 - half[1]) + math.log(half[2])
    assert bernoulli_logp(logits, action, valid, temperature=0.5).item() == pytest.approx(direct_t, rel=1e-6)


def test_grpo_loss_hand_computed():
    # two trajectories, three steps; the second trajectory has one inactive step
    logp = torch.log(torch.tensor([[0.5, 0.9, 0.2], [0.3, 0.3, 0.3]]))
    old = torch.log(torch.tensor([[0.25, 0.9, 0.4], [0.3, 0.6, 0.1]]))
    adv = torch.tensor([1.0, -2.0])
    active = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, stats = grpo_loss(logp, old, adv, active, clip_eps=0.5)
    # ratios: [2.0, 1.0, 0.5], [1.0, 0.5, (3.0 inactive)]
    t1 = (min(2.0, 1.5) + 1.0 + 0.5) / 3  # A>0: min(rA, clip(r)A)
    t2 = (min(-2.0, -2.0) + min(0.5 * -2.0, 0.5 * -2.0)) / 2  # A<0, r=0.5 clip keeps 0.5
    assert loss.item() == pytest.approx(-(t1 + t2) / 2, rel=1e-6)
    assert stats["clip_fraction"] == pytest.approx(1 / 5)


def test_modulation_per_row_equals_the_per_position_conditioning():
    """cond = Embedding(2, d)[m] + MLP(sinusoid(t)) per position, modulated per position, is what the block
    computes from each row's two conditioning vectors."""
    torch.manual_seed(0)
    policy = UnmaskingPolicy(PolicyConfig(hidden_size=16, num_heads=2, ffn_size=32, time_embed_size=16))
    torch.nn.init.normal_(policy.blocks[0].modulation[1].weight)  # zero at init: make it matter
    c, m, t = torch.rand(3, 7), torch.rand(3, 7) > 0.5, torch.rand(3)
    from unmask.learner.policy import sinusoid

    x = policy.confidence_in(c[..., None])
    cond = policy.mask_embed(m.long()) + policy.time_mlp(sinusoid(t, 16, 1.0))[:, None]
    block = policy.blocks[0]
    scale1, shift1, gate1, scale2, shift2, gate2 = block.modulation(cond).chunk(6, dim=-1)
    h = block.norm1(x) * (1 + scale1) + shift1
    q, k, v = block.qkv(h).unflatten(-1, (3, block.heads, -1)).permute(2, 0, 3, 1, 4)
    from unmask.learner.policy import rotate

    attn = torch.nn.functional.scaled_dot_product_attention(rotate(q, block.rope_base), rotate(k, block.rope_base), v)
    x = x + block.proj(attn.transpose(1, 2).flatten(-2)) * (1 + gate1)
    x = x + block.ffn(block.norm2(x) * (1 + scale2) + shift2) * (1 + gate2)
    expected = policy.head(policy.norm_out(x))[..., 0]
    torch.testing.assert_close(policy(c, m, t), expected, rtol=1e-5, atol=1e-6)


def test_truncated_importance_weights_and_the_weighted_surrogate():
    from unmask.learner.grpo import truncated_importance_weights

    old = torch.tensor([[-0.5, -1.0, -2.0]])
    behaviour = torch.tensor([[-1.0, -1.0, -0.1]])
    w = truncated_importance_weights(old, behaviour, cap=1.5)
    assert w.tolist()[0] == pytest.approx([1.5, 1.0, math.exp(-1.9)])  # e^0.5 = 1.65 truncated at 1.5
    logp = torch.tensor([[-0.4, -1.1, -2.0]])
    adv, active = torch.tensor([2.0]), torch.tensor([[True, True, False]])
    loss, stats = grpo_loss(logp, old, adv, active, clip_eps=0.5, weights=w)
    # by hand: rho = e^0.1, e^-0.1 (both inside the clip), the third step is inactive
    expected = -(1.5 * math.exp(0.1) * 2.0 + 1.0 * math.exp(-0.1) * 2.0) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6) and stats["weight_mean"] == pytest.approx(1.25)
    unweighted, _ = grpo_loss(logp, old, adv, active, clip_eps=0.5, weights=torch.ones_like(w))
    assert torch.equal(unweighted, grpo_loss(logp, old, adv, active, clip_eps=0.5)[0])  # weight 1 = plain GRPO


def test_an_expert_step_enters_through_the_groups_mixture_likelihood():
    """G = 8, E = 1: an expert step's likelihood is 8/9 pi + 1/9. The policy gave the expert's decision 0.01 when
    it was drawn and gives it 0.02 now: ratio (8/9 * 0.02 + 1/9) / (8/9 * 0.01 + 1/9) = 0.128889 / 0.12, clipped at
    grpo.expert_clip_eps; the policy's own step (0.01 -> 0.02: ratio 2) is clipped at 1 + clip_eps, as always."""
    from unmask.cluster.algorithm_config import UnmaskGRPOConfig
    from unmask.learner.grpo import steered_logp

    share = torch.tensor([8 / 9, 8 / 9]), torch.tensor([0.0, 1 / 9])
    logp = torch.tensor([[math.log(0.02)], [math.log(0.02)]])
    mixed = steered_logp(logp, *share)
    assert mixed[0, 0].item() == pytest.approx(math.log(0.02))  # the policy's own step: pi alone
    assert mixed[1, 0].exp().item() == pytest.approx(8 / 9 * 0.02 + 1 / 9)

    cfg = UnmaskGRPOConfig().training(clip_eps=0.5, expert_clip_eps=0.05, fallback=False)
    cfg.validate()
    learner = cfg.build_learner(env=None)
    learner.build()
    b = math.log(0.02 / 0.98)  # sigmoid(b) = 0.02: the probability of unmasking the one valid position
    batch = {"action": torch.tensor([[[True, False]], [[True, False]]]), "valid": torch.tensor([[[True, False]]] * 2),
             "old": steered_logp(torch.full((2, 1), math.log(0.01)), *share), "weights": torch.ones(2, 1),
             "advantages": torch.tensor([1.0, 1.0]), "active": torch.ones(2, 1, dtype=torch.bool),
             "policy_share": share[0], "expert_share": share[1]}
    fwd_out = {"action_dist_inputs": torch.full((2, 1, 2), b)}
    loss = learner.compute_loss_for_module(module_id="default_policy", config=None, batch=batch, fwd_out=fwd_out)
    expert_ratio = (8 / 9 * 0.02 + 1 / 9) / (8 / 9 * 0.01 + 1 / 9)
    assert expert_ratio == pytest.approx(1.074074, abs=1e-6)
    assert loss.item() == pytest.approx(-(1.5 + 1.05) / 2, abs=1e-5)  # both clipped: 1 + 0.5 and 1 + 0.05
    cfg = UnmaskGRPOConfig().training(clip_eps=0.5, expert_clip_eps=0.5, fallback=False)
    cfg.validate()
    wide = cfg.build_learner(env=None)
    wide.build()
    loss = wide.compute_loss_for_module(module_id="default_policy", config=None, batch=batch, fwd_out=fwd_out)
    assert loss.item() == pytest.approx(-(1.5 + expert_ratio) / 2, abs=1e-5)  # the expert's ratio, unclipped


def test_alpha_conditioning_changes_the_policy_output_and_is_required():
    torch.manual_seed(0)
    cfg = PolicyConfig(hidden_size=32, num_heads=2, ffn_size=64, time_embed_size=32, alpha_conditioned=True)
    policy = UnmaskingPolicy(cfg)
    for p in policy.blocks[0].modulation.parameters():
        torch.nn.init.normal_(p, std=0.5)
    c, m, t = torch.rand(2, 8), torch.ones(2, 8, dtype=torch.bool), torch.tensor([0.2, 0.2])
    low, high = policy(c, m, t, torch.tensor([0.3, 0.3])), policy(c, m, t, torch.tensor([3.0, 3.0]))
    assert not torch.allclose(low, high)
    mixed = policy(c, m, t, torch.tensor([0.3, 3.0]))  # one row per trade-off in one batch
    assert torch.allclose(mixed[0], low[0]) and torch.allclose(mixed[1], high[1])
    with pytest.raises(ValueError, match="alpha-conditioned"):
        policy(c, m, t)
    plain = UnmaskingPolicy(PolicyConfig(hidden_size=32, num_heads=2, ffn_size=64, time_embed_size=32))
    assert plain.alpha_mlp is None and torch.equal(plain(c, m, t), plain(c, m, t, torch.tensor([3.0, 3.0])))
    assert sum(p.numel() for p in policy.parameters()) - sum(p.numel() for p in plain.parameters()) == 32 * 2 + 32 * 33


def test_alphas_are_drawn_log_uniformly_and_each_group_s_reward_uses_its_own():
    from unmask.learner.grpo import draw_alphas

    alphas = draw_alphas([0.3, 3.0], 4000, torch.Generator().manual_seed(1))
    assert alphas.min() >= 0.3 and alphas.max() <= 3.0
    assert (alphas < 1.0).float().mean().item() == pytest.approx(math.log(1 / 0.3) / math.log(10), abs=0.03)
    assert torch.equal(alphas, draw_alphas([0.3, 3.0], 4000, torch.Generator().manual_seed(1)))  # seeded
    correct, nfe = torch.tensor([1, 1, 1, 1]), torch.tensor([8, 8, 16, 16])
    per_group = reward(correct, nfe, 32, torch.tensor([0.3, 0.3, 3.0, 3.0]))
    assert per_group[:2].tolist() == pytest.approx(reward(correct[:2], nfe[:2], 32, 0.3).tolist())
    assert per_group[2:].tolist() == pytest.approx([(17 / 32) ** 3] * 2)


def test_the_per_position_mixture_of_an_expert_step_against_hand_computed_values():
    """grpo.expert_likelihood=position, G = 8, E = 1: the expert unmasked position 0 and kept position 1; the policy
    gave unmasking (0.1, 0.3) when drawn and (0.2, 0.3) now. Ratio = prod_k (8/9 p_k(u_k) + 1/9) / (old), i.e.
    (8/9 * 0.2 + 1/9) / (8/9 * 0.1 + 1/9) = 1.4444 (position 1 cancels), below 1 + expert_clip_eps."""
    from unmask.cluster.algorithm_config import UnmaskGRPOConfig

    cfg = UnmaskGRPOConfig().training(expert_likelihood="position", expert_clip_eps=0.5)
    cfg.validate()
    learner = cfg.build_learner(env=None)
    learner.build()

    def logit(p: float) -> float:
        return math.log(p / (1 - p))

    from unmask.learner.grpo import steered_position_logp

    shares = torch.tensor([8 / 9]), torch.tensor([1 / 9])
    action, valid = torch.tensor([[[True, False]]]), torch.tensor([[[True, True]]])
    old = steered_position_logp(torch.tensor([[[logit(0.1), logit(0.3)]]]), action, valid, *shares)
    batch = {"action": action, "valid": valid, "old": old, "weights": torch.ones(1, 1),
             "advantages": torch.tensor([1.0]), "active": torch.ones(1, 1, dtype=torch.bool),
             "policy_share": shares[0], "expert_share": shares[1]}
    fwd_out = {"action_dist_inputs": torch.tensor([[[logit(0.2), logit(0.3)]]])}
    loss = learner.compute_loss_for_module(module_id="default_policy", config=None, batch=batch, fwd_out=fwd_out)
    ratio = (8 / 9 * 0.2 + 1 / 9) / (8 / 9 * 0.1 + 1 / 9)
    assert ratio == pytest.approx(1.444444, abs=1e-6) and loss.item() == pytest.approx(-ratio, abs=1e-5)


def test_the_learner_prepares_advantages_shares_proximal_log_probs_and_tis_weights_once():
    """learner.learner's prepare on a hand-made batch: two groups (G = 2, plus one expert in the second); the first
    group sampled by the learner's current version (its log-probs are kept as recorded), the second by an older
    one (recomputed by the learner's module and TIS-weighted); a batch of equal rewards is skipped."""
    from unmask.cluster.algorithm_config import UnmaskGRPOConfig
    from unmask.learner.grpo import bernoulli_logp, mixture_shares, steered_logp, truncated_importance_weights

    cfg = UnmaskGRPOConfig().environment(gen_length=4, block_length=4).training(tis_cap=1.5, fallback=False)
    cfg.validate()
    learner = cfg.build_learner(env=None)
    learner.build()
    torch.manual_seed(0)
    N, T, L = 5, 4, 4
    active = torch.tensor([[True] * 2 + [False] * 2] * N)
    batch = {"confidences": torch.rand(N, T, L), "mask": torch.ones(N, T, L, dtype=torch.bool),
             "valid": torch.ones(N, T, L, dtype=torch.bool) & active[..., None], "action": torch.rand(N, T, L) > 0.5,
             "t": torch.rand(N, T), "logp": -torch.rand(N, T) * active, "active": active, "alpha": torch.ones(N),
             "reward": torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0]), "group": torch.tensor([0, 0, 1, 1, 1]),
             "expert": torch.tensor([False, False, False, False, True]),
             "policy_version": torch.tensor([0, 0, -1, -1, -1])}
    batch["action"] &= batch["valid"]
    prepared, old_logp = learner.prepare(dict(batch))
    assert prepared["advantages"].tolist() == pytest.approx([0.5, -0.5, 0.0, -0.5, 0.5])
    shares = mixture_shares(batch["group"], batch["expert"])
    assert prepared["policy_share"].tolist() == pytest.approx([1, 1, 2 / 3, 2 / 3, 2 / 3])
    assert prepared["expert_share"].tolist() == pytest.approx([0, 0, 0, 0, 1 / 3])
    assert torch.equal(torch.from_numpy(old_logp[:2]), batch["logp"][:2])  # sampled by these weights: as recorded
    logits = learner.proximal_logits(batch)
    recomputed = bernoulli_logp(logits, batch["action"], batch["valid"]) * active
    plain = torch.cat([batch["logp"][:2], recomputed[2:]])
    old = steered_logp(plain, *shares)  # the expert's step (row 4) through the group's mixture
    torch.testing.assert_close(prepared["old"], old)
    torch.testing.assert_close(torch.from_numpy(old_logp), old * active)  # what the dumps record
    weights = truncated_importance_weights(old, steered_logp(batch["logp"], *shares), 1.5)
    torch.testing.assert_close(prepared["weights"], weights)
    assert (prepared["weights"][:2] == 1).all() and (prepared["weights"][2:] <= 1.5).all()
    skipped, _ = learner.prepare({**batch, "reward": torch.full((N,), 0.25)})
    assert skipped is None


def test_the_fallback_rule_s_likelihood_is_exact_and_sums_to_one():
    """Evaluation's rule in training: an empty Bernoulli draw commits the most likely valid position. Over the 2^3
    decisions on three valid positions the likelihoods of the seven the rule can make sum to 1 (it never makes the
    empty one), the argmax alone gets its draw plus the empty draw's mass; sampling follows it."""
    import itertools

    from unmask.learner.grpo import fallback_logp, fallback_sample

    logits = torch.tensor([[0.5, -1.0, 2.0, 9.0]])  # position 3 is not valid: never chosen, never counted
    valid = torch.tensor([[True, True, True, False]])
    p = torch.sigmoid(logits[0, :3])
    total = 0.0
    for bits in itertools.product([False, True], repeat=3):
        if not any(bits):
            continue
        action = torch.tensor([[*bits, False]])
        likelihood = fallback_logp(logits, action, valid).exp().item()
        drawn = math.prod(float(p[k] if b else 1 - p[k]) for k, b in enumerate(bits))
        nothing = math.prod(float(1 - q) for q in p)
        expected = drawn + (nothing if bits == (False, False, True) else 0.0)
        assert likelihood == pytest.approx(expected, rel=1e-5, abs=1e-12), bits
        total += likelihood
    assert total == pytest.approx(1.0, abs=1e-6)
    draws = torch.stack([fallback_sample(logits.expand(4000, 4), valid.expand(4000, 4),
                                         generator=torch.Generator().manual_seed(1))])[0]
    assert draws.any(-1).all() and not draws[:, 3].any()
    only_best = (draws == torch.tensor([False, False, True, False])).all(-1).float().mean().item()
    assert only_best == pytest.approx(float(p[2] * (1 - p[0]) * (1 - p[1]) + (1 - p).prod()), abs=0.02)


def test_grpo_starts_from_a_saved_policy_and_anchors_to_it(tmp_path):
    """grpo.init_policy: the learner's weights are the saved policy's, its shape the saved one's; with anchor_coef
    the loss adds anchor_coef x the per-step KL to it (0 while the weights are still its own)."""
    from unmask.cluster.algorithm_config import UnmaskGRPOConfig
    from unmask.learner.policy import save_policy

    torch.manual_seed(3)
    shape = PolicyConfig(hidden_size=32, num_heads=2, ffn_size=64, time_embed_size=32, inputs=["confidence", "margin"])
    saved = UnmaskingPolicy(shape)
    save_policy(saved, tmp_path / "start", {"gen_length": 24, "block_length": 8, "kv_cache": "none"})
    cfg = UnmaskGRPOConfig().training(init_from=str(tmp_path / "start"), anchor_coef=0.5, fallback=False)
    cfg.validate()
    assert cfg.network() == shape
    learner = cfg.build_learner(env=None)
    learner.build()
    mine = learner.module["default_policy"].policy.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in saved.state_dict().items())
    N, T, L = 2, 3, 24
    active = torch.ones(N, T, dtype=torch.bool)
    batch = {"confidences": torch.rand(N, T, L), "extra_inputs": torch.rand(N, T, L, 1),
             "mask": torch.ones(N, T, L, dtype=torch.bool), "valid": torch.ones(N, T, L, dtype=torch.bool),
             "action": torch.rand(N, T, L) > 0.8, "t": torch.rand(N, T), "active": active, "alpha": torch.ones(N),
             "reward": torch.tensor([1.0, 0.0]), "group": torch.tensor([0, 0]),
             "expert": torch.tensor([False, False]), "policy_version": torch.tensor([0, 0])}
    batch["logp"] = bernoulli_logp(learner.proximal_logits(batch), batch["action"], batch["valid"])
    prepared, _ = learner.prepare(batch)
    logits = learner.proximal_logits(batch)
    torch.testing.assert_close(prepared["anchor_logits"], logits)  # the start, as the learner sees it
    plain = UnmaskGRPOConfig().training(init_from=str(tmp_path / "start"), fallback=False)
    plain.validate()
    unanchored = plain.build_learner(env=None)
    unanchored.build()
    fwd = {"action_dist_inputs": logits}
    same = learner.compute_loss_for_module(module_id="default_policy", config=None, batch=prepared, fwd_out=fwd)
    base = unanchored.compute_loss_for_module(module_id="default_policy", config=None, batch=prepared, fwd_out=fwd)
    assert same.item() == pytest.approx(base.item(), abs=1e-6)  # no distance yet: no anchor term
    moved = {"action_dist_inputs": logits + 1.0}
    p, q = torch.sigmoid(logits + 1.0), torch.sigmoid(logits)
    kl = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(-1).mean()
    gap = (learner.compute_loss_for_module(module_id="default_policy", config=None, batch=prepared, fwd_out=moved)
           - unanchored.compute_loss_for_module(module_id="default_policy", config=None, batch=prepared,
                                                fwd_out=moved))
    assert gap.item() == pytest.approx(0.5 * kl.item(), rel=1e-4)


def test_per_step_credit_subtracts_a_learned_state_value_and_trains_it_on_its_own():
    """grpo.credit=value: after value_warmup updates each step's advantage is R - V(state) (hand-checked against the
    module's own V); the loss adds V's regression onto the rewards; grpo.grad_clip bounds the policy's gradient
    alone; a few updates on one batch fit V; the policy's weights (what runners and checkpoints get) leave V out."""
    from unmask.cluster.algorithm_config import UnmaskGRPOConfig
    from unmask.learner.grpo import step_advantages, value_loss
    from unmask.learner.module import step_values

    def learner_for(**training):
        cfg = UnmaskGRPOConfig().environment(gen_length=4, block_length=4).training(fallback=False, **training)
        cfg.validate()
        learner = cfg.build_learner(env=None)
        learner.build()
        return learner

    torch.manual_seed(1)
    N, T, L = 4, 3, 4
    active = torch.tensor([[True, True, False], [True, True, True], [True, False, False], [True, True, True]])
    batch = {"confidences": torch.rand(N, T, L), "mask": torch.ones(N, T, L, dtype=torch.bool),
             "valid": torch.ones(N, T, L, dtype=torch.bool) & active[..., None], "action": torch.rand(N, T, L) > 0.5,
             "t": torch.rand(N, T), "active": active, "alpha": torch.ones(N),
             "reward": torch.tensor([1.0, 0.0, 0.8, 0.8]), "group": torch.tensor([0, 0, 1, 1]),
             "expert": torch.zeros(N, dtype=torch.bool), "policy_version": torch.zeros(N, dtype=torch.long)}
    batch["action"] &= batch["valid"]
    learner = learner_for(credit="value", value_warmup=0, grad_clip=0.01)
    batch["logp"] = bernoulli_logp(learner.proximal_logits(batch), batch["action"], batch["valid"]) * active
    module = learner.module["default_policy"]
    values = step_values(module.value, batch)
    assert values.shape == (N, T) and (values[~active] == 0).all() and values[active].std() > 0
    prepared, _ = learner.prepare(dict(batch))
    expected = (batch["reward"][:, None] - values) * active
    torch.testing.assert_close(prepared["advantages"], expected)
    torch.testing.assert_close(step_advantages(batch["reward"], values, active), expected)
    assert prepared["advantages"][3].abs().sum() > 0  # group 1 is flat (0.8, 0.8), its steps still get credit
    warming, _ = learner_for(credit="value", value_warmup=5).prepare(dict(batch))
    assert warming["advantages"].tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])  # the group's, while V learns

    fwd = {"action_dist_inputs": learner.proximal_logits(batch)}
    with_value = learner.compute_loss_for_module(module_id="default_policy", config=None, batch=prepared, fwd_out=fwd)
    surrogate, _ = grpo_loss(prepared["old"], prepared["old"], prepared["advantages"], active, 0.5, prepared["weights"])
    assert with_value.item() == pytest.approx(surrogate.item() + value_loss(values, batch["reward"], active).item(),
                                              abs=1e-5)
    hand = sum(((values[n, :int(active[n].sum())] - batch["reward"][n]) ** 2).mean() for n in range(N)) / N
    assert value_loss(values, batch["reward"], active).item() == pytest.approx(hand.item(), rel=1e-5)

    grads = learner.postprocess_gradients(learner.compute_gradients({"default_policy": with_value}))
    policy_refs = learner.filter_param_dict_for_optimizer(grads, learner.policy_optimizer())
    policy_norm = torch.stack([g.norm() for g in policy_refs.values() if g is not None]).norm()
    value_norm = torch.stack([g.norm() for r, g in grads.items() if r not in policy_refs and g is not None]).norm()
    assert policy_norm <= 0.01 + 1e-6 and value_norm > 0.01  # clipped, and the value's own scale

    before = value_loss(step_values(module.value, batch), batch["reward"], active).item()
    for _ in range(20):
        columns = SampleBatch({k: v.detach().numpy() for k, v in batch.items()})
        learner.update(batch=MultiAgentBatch({"default_policy": columns}, env_steps=N))
        batch["policy_version"] = torch.full((N,), learner.policy_version)
        batch["logp"] = bernoulli_logp(learner.proximal_logits(batch), batch["action"], batch["valid"]) * active
    after = value_loss(step_values(module.value, batch), batch["reward"], active).item()
    assert after < 0.5 * before
    assert learner.policy_version == 20
    state = learner.get_state(components="rl_module/default_policy")["rl_module"]["default_policy"]
    assert any(k.startswith("value.") for k in state) and any(k.startswith("policy.") for k in state)
