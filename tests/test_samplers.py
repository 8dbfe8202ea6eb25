"""Heuristic decisions on hand-computed observations (one row = one sequence)."""

import math
import re

import pytest
import torch

from unmask.envs.config import SAMPLER_PARAMS, SamplerConfig
from unmask.envs.mdp import Observation
from unmask.envs.samplers import HEURISTICS
from unmask.rollout.samplers import SAMPLERS, make_sampler, sampler


def obs(token_prob, valid=None, block_step=0, gen_length=None, block_length=None, margin=None, entropy=None,
        masked=None, repeat=None):
    p = torch.tensor([token_prob], dtype=torch.float32)
    L = p.shape[1]
    valid = torch.ones_like(p, dtype=torch.bool) if valid is None else torch.tensor([valid])
    return Observation(
        confidence=p, token_prob=p, margin=torch.tensor([margin]) if margin else p.clone(),
        entropy=torch.tensor([entropy]) if entropy else -p.clone(),
        masked=valid.clone() if masked is None else torch.tensor([masked]),
        abandoned=torch.zeros_like(valid), valid=valid,
        t=torch.zeros(1), nfe=torch.ones(1, dtype=torch.long), block_step=torch.tensor([block_step]),
        block_index=torch.zeros(1, dtype=torch.long), active=torch.ones(1, dtype=torch.bool),
        block_length=block_length or L, gen_length=gen_length or L,
        repeat=torch.zeros_like(valid) if repeat is None else torch.tensor([repeat]))


def pick(name, o, **params):
    return make_sampler(SamplerConfig(name=name, **params), torch.Generator().manual_seed(0)).select(o)[0].tolist()


def test_fast_dllm_threshold_is_inclusive_and_keeps_top1():
    o = obs([0.9, 0.95, 0.3, 0.89999], valid=[True, True, True, True])
    assert pick("fast_dllm", o, threshold=0.9) == [True, True, False, False]
    # nothing reaches lambda: the single most confident position is still committed
    o = obs([0.2, 0.5, 0.4, 0.1])
    assert pick("fast_dllm", o, threshold=0.9) == [False, True, False, False]


def test_fast_dllm_ignores_positions_outside_the_valid_set():
    o = obs([0.99, 0.95, 0.97, 0.2], valid=[False, True, False, True])
    assert pick("fast_dllm", o, threshold=0.9) == [False, True, False, False]


def test_left_threshold_keeps_the_leftmost_masked_position_instead_of_the_most_confident():
    o = obs([0.2, 0.95, 0.3, 0.9], valid=[False, True, True, True])
    assert pick("left_threshold", o, threshold=0.9) == [False, True, False, True]  # leftmost valid passes anyway
    o = obs([0.2, 0.3, 0.5, 0.4])
    assert pick("left_threshold", o, threshold=0.9) == [True, False, False, False]  # not the most confident (2)
    assert pick("fast_dllm", o, threshold=0.9) == [False, False, True, False]
    o = obs([0.95, 0.1, 0.3, 0.99], valid=[False, False, True, True])
    assert pick("left_threshold", o, threshold=0.9) == [False, False, True, True]
    assert pick("left_threshold", obs([0.5, 0.5], valid=[False, False]), threshold=0.9) == [False, False]


def test_left_run_extends_the_leftmost_commit_rightwards_while_each_is_likely_and_repeats_no_neighbour():
    """lambda = 0.9 (the default threshold) throughout but where named."""
    # written, written, leftmost masked (forced), run 0.5 / 0.45 joins, 0.3 < mu stops it; 0.95 passes lambda anyway
    two_written = [False, False] + [True] * 6  # masked, and valid: the block is the whole row
    o = obs([1.0, 1.0, 0.2, 0.5, 0.45, 0.3, 0.5, 0.95], masked=two_written, valid=two_written)
    assert pick("left_run", o, run_threshold=0.4) == [False, False, True, True, True, False, False, True]
    assert pick("left_threshold", o, threshold=0.9) == [False, False, True, False, False, False, False, True]
    # a position repeating a neighbour's token ends the run; one at >= lambda carries it on (it is committed anyway)
    repeat = [False, False, False, False, True, False, False, False]
    o = obs([1.0, 1.0, 0.2, 0.5, 0.45, 0.6, 0.5, 0.95], masked=two_written, valid=two_written, repeat=repeat)
    assert pick("left_run", o, run_threshold=0.4) == [False, False, True, True, False, False, False, True]
    one_written = [False] + [True] * 4
    repeat = [False, False, True, False, False]
    o = obs([1.0, 0.2, 0.95, 0.6, 0.1], masked=one_written, valid=one_written, repeat=repeat)
    assert pick("left_run", o, threshold=0.9, run_threshold=0.4) == [False, True, True, True, False]
    # a later block's masked positions (not valid) end the run; a row with nothing valid commits nothing
    o = obs([0.2, 0.9, 0.9, 0.9], masked=[True] * 4, valid=[True, True, False, False])
    assert pick("left_run", o, threshold=0.95, run_threshold=0.4) == [True, True, False, False]
    assert pick("left_run", obs([0.5, 0.5], valid=[False, False]), run_threshold=0.0) == [False, False]


def test_factor_rule_thresholds_one_minus_f_over_i_plus_2():
    # sorted: 0.99 (always), 0.8 vs 1-1/3=0.667 ok, 0.74 vs 1-1/4=0.75 fails -> stop, 0.9? sorted order matters
    o = obs([0.8, 0.99, 0.74, 0.1])
    assert pick("fast_dllm_factor", o, factor=1.0) == [True, True, False, False]
    # a larger factor lowers every threshold: 1-2/4 = 0.5 <= 0.74, 1-2/5=0.6 > 0.1
    assert pick("fast_dllm_factor", o, factor=2.0) == [True, True, True, False]


def test_factor_rule_accepts_all_when_every_candidate_passes():
    o = obs([0.999, 0.998, 0.997], valid=[True, True, True])
    assert pick("fast_dllm_factor", o, factor=1.0) == [True, True, True]


def test_frechet_rule_against_hand_computed_bounds():
    # G_k = max(0, sum_j<=k c(j) - (k-1)) - (1 - c(k)); sorted 0.99, 0.95, 0.9, 0.6:
    # G_1 = 0.99 - 0.01 = 0.98, G_2 = 0.94 - 0.05 = 0.89, G_3 = 0.84 - 0.10 = 0.74, G_4 = 0.44 - 0.40 = 0.04
    o = obs([0.9, 0.6, 0.99, 0.95])
    assert pick("frechet", o, delta=0.25) == [True, False, True, True]
    assert pick("frechet", o, delta=0.02) == [True, True, True, True]
    assert pick("frechet", o, delta=0.8) == [False, False, True, True]  # G_2 = 0.89 > 0.8 > G_3
    # equal confidences 1 - eps: G_k = 1 - (k + 1) eps, the factor rule's (k + 1) eps < 1 (eps = 0.1: k <= 8 at 0.05)
    assert sum(pick("frechet", obs([0.9] * 12), delta=0.05)) == 8
    # a bound below zero counts as zero, and the top one is always committed
    assert pick("frechet", obs([0.6, 0.55, 0.5]), delta=0.0) == [True, False, False]
    # only valid positions: the 0.99 outside the block is neither counted nor chosen
    assert pick("frechet", obs([0.99, 0.95, 0.9, 0.6], valid=[False, True, True, True]), delta=0.25) == [
        False, True, True, False]  # 0.95: 0.9; + 0.9: 0.85 - 0.1 = 0.75; + 0.6: 0.45 - 0.4 = 0.05


def test_top_k_follows_llada_schedule():
    # 5 masked positions, 2 steps per block -> get_num_transfer_tokens gives [3, 2]
    o = obs([0.5, 0.9, 0.1, 0.7, 0.6], gen_length=10, block_length=5)
    assert pick("top_k", o, steps=4) == [False, True, False, True, True]
    o = obs([0.5, 0.9, 0.1, 0.7, 0.6], valid=[True, False, True, False, False], block_step=1,
            gen_length=10, block_length=5)
    assert pick("top_k", o, steps=4) == [True, False, True, False, False]


def test_top_k_steps_must_divide_into_blocks():
    o = obs([0.5, 0.9, 0.1, 0.7], gen_length=8, block_length=4)
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        pick("top_k", o, steps=3)


def test_margin_and_entropy_rank_by_their_own_feature():
    o = obs([0.9, 0.8, 0.7], margin=[0.1, 0.6, 0.3], entropy=[0.5, 0.9, 0.05])
    assert pick("margin", o, steps=3) == [False, True, False]
    assert pick("entropy", o, steps=3) == [False, False, True]


def test_eb_sampler_sum_minus_max_entropy_bound():
    ent = [0.3, 0.05, 0.2, 1.0]
    o = obs([0.5, 0.9, 0.6, 0.2], entropy=ent)
    # ascending entropy: 0.05, 0.2, 0.3, 1.0; sum - max: 0, 0.05, 0.25, 0.55
    assert pick("eb", o, gamma=0.1) == [False, True, True, False]
    assert pick("eb", o, gamma=0.25) == [True, True, True, False]
    assert pick("eb", o, gamma=0.0) == [False, True, False, False]  # always at least one
    assert math.isclose(sum(pick("eb", o, gamma=10.0)), 4)


def test_random_takes_k_valid_positions():
    o = obs([0.1] * 6, valid=[True, False, True, True, False, True])
    chosen = pick("random", o, k=2)
    assert sum(chosen) == 2 and not chosen[1] and not chosen[4]
    assert sum(pick("random", o, k=10)) == 4


def test_every_heuristic_returns_a_subset_of_valid():
    o = obs([0.3, 0.8, 0.6, 0.95], valid=[True, False, True, True])
    for name in HEURISTICS:
        chosen = torch.tensor(pick(name, o))
        assert chosen.any() and not (chosen & ~o.valid[0]).any(), name


def test_one_sampler_table_with_the_parameters_each_reads():
    assert set(SAMPLERS) == set(SAMPLER_PARAMS) == set(HEURISTICS) | {"oracle", "policy"}
    for name, cls in SAMPLERS.items():
        assert cls.name == name


def test_sampler_by_name_takes_only_its_own_parameters():
    o = obs([0.2, 0.95, 0.4, 0.91])
    assert sampler("fast_dllm", threshold=0.9).select(o)[0].tolist() == [False, True, False, True]
    with pytest.raises(ValueError, match="steps does not apply to sampler 'fast_dllm'"):
        sampler("fast_dllm", steps=4)
    with pytest.raises(ValueError, match="unknown sampler 'fastdllm'"):
        sampler("fastdllm")
    with pytest.raises(ValueError, match="sampler.threshold must be in"):
        sampler("fast_dllm", threshold=2.0)


def test_the_oracle_commits_what_already_predicts_the_reference_and_else_the_leftmost():
    from unmask.envs.samplers import Oracle

    oracle = make_sampler(SamplerConfig(name="oracle", reference="fast_dllm:threshold=0.9"))
    assert isinstance(oracle, Oracle) and oracle.reference.cfg.threshold == 0.9
    assert oracle.describe() == "oracle of fast_dllm threshold=0.9"
    o = obs([0.2, 0.95, 0.4, 0.91], valid=[True, True, True, False])
    oracle.targets = torch.tensor([[5, 6, 7, 8]])
    o.tokens = torch.tensor([[5, 9, 7, 8]])  # positions 0 and 2 already predict their target; 3 is not valid
    assert oracle.select(o)[0].tolist() == [True, False, True, False]
    o.tokens = torch.tensor([[1, 1, 1, 8]])  # none does: the leftmost valid position, whatever its confidence
    assert oracle.select(o)[0].tolist() == [True, False, False, False]


@pytest.mark.parametrize("spec, message", [
    ("nope", "unknown sampler 'nope'"), ("oracle", "cannot be an oracle"),
    ("top_k:threshold=0.5", "'threshold=0.5' is not a parameter of top_k"), ("top_k:steps=many", "steps='many'"),
    ("fast_dllm:threshold=2", "sampler.threshold must be in"),
    ("left_run:run_threshold=-0.1", "sampler.run_threshold must be in"),
])
def test_a_bad_oracle_reference_is_refused(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make_sampler(SamplerConfig(name="oracle", reference=spec))
