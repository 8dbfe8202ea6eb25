"""THE trajectory batch: collected in a real dLLM env, one type from the rollout to the learner and to Parquet
(schema version 2, which says which positions were abandoned), and version-1 dumps still read."""

import numpy as np
import pyarrow as pa
import pytest
import torch
from unmask.envs.config import SamplerConfig
from unmask.envs.mdp import UnmaskingEnv
from unmask.learner.config import GRPOConfig, PolicyConfig
from unmask.learner.grpo import bernoulli_logp
from unmask.learner.policy import UnmaskingPolicy
from unmask.learner.sampler import PolicySampler
from unmask.rollout.collect import collect_groups
from unmask.rollout.experts import ExpertSteering
from unmask.rollout.trajectories import (
    SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
    TRAJECTORY_SCHEMA,
    TrajectoryBatch,
    learner_batch,
    read_trajectories,
    write_parquet_atomic,
)


def policy_sampler(bias: float) -> PolicySampler:
    policy = UnmaskingPolicy(PolicyConfig(hidden_size=16, num_heads=2, ffn_size=32, time_embed_size=16))
    torch.nn.init.zeros_(policy.head.weight)
    torch.nn.init.constant_(policy.head.bias, bias)
    return PolicySampler(SamplerConfig(name="policy"), torch.Generator().manual_seed(0), policy=policy)


def collect(tiny_dllm, cycles, bias: float, first_group: int = 5) -> TrajectoryBatch:
    env = UnmaskingEnv(tiny_dllm, gen_length=8, block_length=4)
    return collect_groups(env, policy_sampler(bias), cycles, cycles.examples("train", 2), group_size=3,
                          grpo=GRPOConfig(), env_runner=2, first_group=first_group, policy_version=7)


def test_a_batch_is_whole_groups_with_ids_from_its_offset(tiny_dllm, cycles):
    batch = collect(tiny_dllm, cycles, bias=0.0)
    assert len(batch) == 6 and batch.num_groups == 2
    assert batch.group_id == ["r2-g5"] * 3 + ["r2-g6"] * 3 and batch.sample_id.tolist() == [0, 1, 2] * 2
    assert batch.policy_version == 7 and batch.env_runner == 2
    # one step per forward: the steps taken are exactly 0..nfe-1, and they are what the learner reads
    assert (batch.active.sum(1) == batch.nfe).all()
    columns = learner_batch([batch, collect(tiny_dllm, cycles, bias=0.0, first_group=7)])
    assert set(columns) == {"confidences", "extra_inputs", "mask", "valid", "action", "t", "logp", "active", "alpha",
                            "reward", "group", "expert", "policy_version"}
    assert columns["extra_inputs"].shape == (12, 8, 8, 0)  # the paper's policy reads the confidence alone
    assert columns["confidences"].shape == (12, 8, 8) and columns["logp"].shape == (12, 8)
    assert columns["group"].tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3 and (columns["policy_version"] == 7).all()
    assert not columns["action"][~columns["active"]].any()  # padding steps decide nothing


def test_positions_abandoned_at_the_block_budget_say_so_in_memory_and_on_disk(tiny_dllm, cycles, tmp_path):
    """A policy that never unmasks: each block spends its BL = 4 forwards and gives up its 4 positions."""
    batch = collect(tiny_dllm, cycles, bias=-30.0)
    assert (batch.nfe == 8).all() and not batch.action.any() and not batch.correct.any()
    # at the first step of block 2 (step 4) block 1's positions are abandoned, no longer masked; block 2's are given up
    # at the last step, after which no step is recorded: final_abandoned says so
    assert batch.abandoned[:, 4, :4].all() and not batch.mask[:, 4, :4].any() and not batch.abandoned[:, 3].any()
    assert not batch.abandoned[:, 7, 4:].any() and batch.final_abandoned.all()
    assert all("[MASK]" in c for c in batch.completion)  # the canvas keeps the mask token

    path = write_parquet_atomic(batch.to_arrow("run", iteration=3, used=True), tmp_path / "d" / "runner_002.parquet")
    table = read_trajectories(tmp_path / "d")
    assert table.schema.metadata[SCHEMA_VERSION_KEY.encode()] == str(SCHEMA_VERSION).encode() == b"4"
    assert table.num_rows == int(batch.nfe.sum()) and set(table.column("iteration").to_pylist()) == {3}
    rows = table.to_pandas()
    step4 = rows[rows["step"] == 4].iloc[0]
    assert list(step4["abandoned"]) == [True] * 4 + [False] * 4 and not any(step4["mask"][:4])
    assert path.is_file() and not list(path.parent.glob(".*"))  # no temp file left behind


def test_dumps_of_every_earlier_version_still_read_beside_the_current_one(tiny_dllm, cycles, tmp_path):
    batch = collect(tiny_dllm, cycles, bias=0.0)
    new = batch.to_arrow("run", iteration=4, used=True)
    for version, lacks in ((1, ["abandoned", "old_logp", "expert", "alpha", "extra_inputs", "final_abandoned"]),
                           (2, ["expert", "alpha", "extra_inputs", "final_abandoned"]),
                           (3, ["extra_inputs", "final_abandoned"])):
        schema = pa.schema([f for f in TRAJECTORY_SCHEMA if f.name not in lacks],
                           metadata={SCHEMA_VERSION_KEY: str(version)})
        old = batch.to_arrow("run", iteration=version, used=True).drop_columns(lacks).cast(schema)
        write_parquet_atomic(old, tmp_path / "d" / f"iter_00000{version}" / "runner_001.parquet")
    write_parquet_atomic(new, tmp_path / "d" / "iter_000004" / "runner_001.parquet")
    table = read_trajectories(tmp_path / "d")
    assert table.num_rows == 4 * new.num_rows and table.schema.names == TRAJECTORY_SCHEMA.names
    missing = table.to_pandas().groupby("iteration")[["abandoned", "alpha", "expert"]].agg(lambda c: c.isna().all())
    assert missing.to_dict("list") == {"abandoned": [True, False, False, False], "alpha": [True, True, False, False],
                                       "expert": [True, True, False, False]}
    assert table.column("extra_inputs").null_count == table.num_rows  # the paper's policy has none, in any version


@pytest.mark.parametrize("bias", [-30.0, 0.0, 30.0])
def test_recorded_log_probs_are_the_behaviour_policy_s(tiny_dllm, cycles, bias):
    """logp on disk is exactly log pi(action) under the sampling policy at tau = 1 (the GRPO ratio's
    denominator), recomputed here from the stored inputs."""

    sampler = policy_sampler(bias)
    env = UnmaskingEnv(tiny_dllm, gen_length=8, block_length=4)
    batch = collect_groups(env, sampler, cycles, cycles.examples("train", 2), group_size=2, grpo=GRPOConfig(),
                           env_runner=1, first_group=0, policy_version=0)
    active = batch.active
    with torch.no_grad():
        logits = sampler.policy(torch.from_numpy(batch.confidences[active]), torch.from_numpy(batch.mask[active]),
                                torch.from_numpy(batch.t[active]))
    again = bernoulli_logp(logits, torch.from_numpy(batch.action[active]), torch.from_numpy(batch.valid[active]))
    np.testing.assert_allclose(again.numpy(), batch.logp[active], rtol=1e-5, atol=1e-5)


def test_continuous_batching_gives_the_same_groups_in_fewer_rows(tiny_dllm, cycles):
    """A row that finishes takes the next trajectory at the next step. With a policy whose decisions do not
    depend on the random draws (it never unmasks: every block spends its BL forwards), two rows in flight give
    exactly what six at once give; with a stochastic one, a seeded run repeats itself."""
    def run(bias: float, batch_rows: int, seed: int = 0) -> TrajectoryBatch:
        env = UnmaskingEnv(tiny_dllm, gen_length=8, block_length=4, seed=seed)
        sampler = policy_sampler(bias)
        sampler.generator.manual_seed(seed)
        return collect_groups(env, sampler, cycles, cycles.examples("train", 2), group_size=3, grpo=GRPOConfig(),
                              env_runner=1, first_group=0, policy_version=0, batch_rows=batch_rows)

    static, streamed = run(-30.0, 0), run(-30.0, 2)
    for name in ("confidences", "mask", "abandoned", "valid", "action", "t", "logp", "nfe", "reward"):
        np.testing.assert_array_equal(getattr(static, name), getattr(streamed, name), err_msg=name)
    assert static.completion == streamed.completion and static.group_id == streamed.group_id

    first, again = run(0.0, 2, seed=3), run(0.0, 2, seed=3)
    assert (first.active.sum(1) == first.nfe).all() and first.num_groups == 2
    np.testing.assert_array_equal(first.action, again.action)
    assert first.completion == again.completion


def test_group_members_share_their_first_forward(tiny_dllm):
    env = UnmaskingEnv(tiny_dllm, gen_length=8, block_length=8)
    prompts = tiny_dllm.encode_prompts(["abc?a", "cba?b"])
    obs = env.reset([prompts[0]] * 3 + [prompts[1]])  # a group of 3 and a group of 1
    assert env.engine.stats.forwards == 1 and env.engine.stats.rows == 2  # two distinct sequences, one forward
    assert env.nfe.tolist() == [1, 1, 1, 1]  # the MDP still counts an NFE per row
    assert torch.equal(obs.token_prob[0], obs.token_prob[2]) and not torch.equal(obs.token_prob[0], obs.token_prob[3])
    alone = UnmaskingEnv(tiny_dllm, gen_length=8, block_length=8).reset([prompts[0]])
    torch.testing.assert_close(obs.token_prob[:1], alone.token_prob)


def test_expert_members_are_fast_dllm_in_its_own_blocks_inside_the_full_canvas(tiny_dllm, cycles, tmp_path):
    """Expert steering: each group gets G policy members and one member per expert. An expert's trajectory is
    exactly Fast-dLLM at its lambda decoding semi-AR blocks of 4 (what `generate` gives at BL = 4), although the
    env is full diffusion; its steps record the policy's log-prob of the expert's decision over every masked
    position; the dumps mark it, and the learner's mixture weights are G/(G+E) and 1/(G+E)."""
    from unmask.envs.config import EnvConfig
    from unmask.rollout.generation import generate
    from unmask.rollout.samplers import sampler as make

    examples = cycles.examples("train", 2)
    env = UnmaskingEnv(tiny_dllm, gen_length=8, block_length=8)
    policy = policy_sampler(0.0)
    steering = ExpertSteering.fast_dllm([0.0, 0.9], block_length=4, group_size=2)  # 0: a whole block per step
    batch = collect_groups(env, policy, cycles, examples, group_size=2, grpo=GRPOConfig(alpha=0.5), env_runner=1,
                           first_group=0, policy_version=0, steering=steering, alphas=torch.tensor([0.5, 2.0]))
    assert len(batch) == 8 and batch.sample_id.tolist() == [0, 1, 2, 3] * 2
    assert batch.expert.tolist() == [False, False, True, True] * 2
    assert batch.alpha.tolist() == [0.5] * 4 + [2.0] * 4  # each group at its own trade-off
    for e, threshold in enumerate((0.0, 0.9)):
        reference = generate(tiny_dllm, [ex.prompt for ex in examples], make("fast_dllm", threshold=threshold),
                             EnvConfig(gen_length=8, block_length=4), response_prefix=cycles.response_prefix)
        rows = [g * 4 + 2 + e for g in range(2)]
        assert [batch.completion[r] for r in rows] == [g.text for g in reference]
        assert batch.nfe[rows].tolist() == [g.nfe for g in reference]
    assert batch.nfe[[2, 6]].tolist() == [2, 2]  # lambda 0: one forward per expert block (full diffusion: 1)
    experts_rows = np.nonzero(batch.expert)[0]
    first = batch.valid[experts_rows, 0]
    assert first.all()  # the whole canvas is valid at the first step: the policy scores the expert block-agnostic
    assert not batch.action[experts_rows, 0, 4:].any()  # while the expert unmasks only in its first block
    active = batch.active
    with torch.no_grad():
        logits = policy.policy(*(torch.from_numpy(getattr(batch, n)[active]) for n in ("confidences", "mask", "t")))
    again = bernoulli_logp(logits, torch.from_numpy(batch.action[active]), torch.from_numpy(batch.valid[active]))
    np.testing.assert_allclose(again.numpy(), batch.logp[active], rtol=1e-5, atol=1e-5)
    from unmask.learner.grpo import mixture_shares

    columns = learner_batch([batch])
    policy_share, expert_share = mixture_shares(torch.from_numpy(columns["group"]), torch.from_numpy(batch.expert))
    np.testing.assert_allclose(policy_share, [0.5] * 8)
    np.testing.assert_allclose(expert_share, [0, 0, 0.25, 0.25] * 2)
    correct = torch.from_numpy(batch.correct)
    assert batch.reward.tolist() == pytest.approx(
        [float(r) for r in torch.cat([((8 - torch.from_numpy(batch.nfe[g * 4:(g + 1) * 4]) + 1) / 8) ** a
                                      * correct[g * 4:(g + 1) * 4] for g, a in enumerate((0.5, 2.0))])])

    table = read_trajectories(write_parquet_atomic(batch.to_arrow("run", 1, True), tmp_path / "d" / "r.parquet").parent)
    per_trajectory = table.to_pandas().groupby("group_id").apply(lambda d: (d["expert"].sum(), d["alpha"].unique()))
    assert table.to_pandas().groupby("sample_id")["expert"].all().tolist() == [False, False, True, True]
    assert len(per_trajectory) == 2 and all(len(alphas) == 1 for _, alphas in per_trajectory)


def test_a_policy_reading_history_records_its_inputs_and_the_learner_reads_them_back(tiny_dllm, cycles, tmp_path):
    """PolicyConfig.inputs beyond the confidence: the env computes them, the rollout records them (extra_inputs, in
    the dumps too), and the learner's module recomputes the logits the sampler saw from what was recorded."""
    from unmask.learner.module import UnmaskRLModule

    config = PolicyConfig(hidden_size=16, num_heads=2, ffn_size=32, time_embed_size=16,
                          inputs=["confidence", "stable_steps", "confidence_delta", "repeat"])
    policy = UnmaskingPolicy(config)
    sampler = PolicySampler(SamplerConfig(name="policy"), torch.Generator().manual_seed(0), policy=policy)
    assert sampler.features == ("confidence", "stable_steps", "confidence_delta", "repeat")
    env = UnmaskingEnv(tiny_dllm, gen_length=8, block_length=8)
    batch = collect_groups(env, sampler, cycles, cycles.examples("train", 2), group_size=2, grpo=GRPOConfig(),
                           env_runner=1, first_group=0, policy_version=0)
    assert batch.extra_inputs.shape == (4, 8, 8, 3)
    first = batch.extra_inputs[:, 0, :, :2]
    assert (first == 0).all()  # nothing has held or changed before the first forward
    assert set(np.unique(batch.extra_inputs[..., 2])) <= {0.0, 1.0}  # repeat: a flag
    later = batch.extra_inputs[batch.active][:, :, 0]
    assert later.max() > 0 and np.isclose(later * 8, np.round(later * 8)).all()  # whole forwards, / L
    module = UnmaskRLModule(observation_space=None, action_space=None, model_config=vars(config))
    module.policy.load_state_dict(policy.state_dict())
    columns = {k: torch.from_numpy(v) for k, v in learner_batch([batch]).items()}
    logits = module.forward_train(columns)["action_dist_inputs"]
    again = bernoulli_logp(logits, columns["action"], columns["valid"])
    np.testing.assert_allclose(again[columns["active"]].detach().numpy(), batch.logp[batch.active], atol=1e-5)
    table = read_trajectories(write_parquet_atomic(batch.to_arrow("run", 1, True), tmp_path / "d" / "r.parquet").parent)
    assert np.array(table.column("extra_inputs").to_pylist()[0]).shape == (8, 3)
