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


# ---- the columnar to_arrow and the background writer ------------------------------------------------------------
OLD_COMMIT = "e1b45e8"  # the per-row to_arrow every dump so far was written with


@pytest.fixture(scope="module")
def per_row_trajectories(tmp_path_factory):
    """rollout/trajectories.py as of OLD_COMMIT, from git (not a copy kept in the package: bench/common.py)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        from common import module_from_git
    finally:
        sys.path.pop(0)
    module = module_from_git(OLD_COMMIT, "rollout/trajectories.py", tmp_path_factory.mktemp("old"))
    if module is None:
        pytest.skip(f"git or commit {OLD_COMMIT} unavailable (an installed package): no per-row to_arrow to compare")
    return module


def random_batch(rng: np.random.Generator, n: int, length: int, extra: int, nfe: np.ndarray | None = None
                 ) -> TrajectoryBatch:
    """Random contents of every field; each trajectory takes its own number of steps (0 too)."""
    def bools(*shape):
        return rng.random(shape) < 0.5

    return TrajectoryBatch(
        confidences=rng.random((n, length, length), np.float32),
        extra_inputs=rng.standard_normal((n, length, length, extra), np.float32),
        mask=bools(n, length, length), abandoned=bools(n, length, length), valid=bools(n, length, length),
        action=bools(n, length, length), t=rng.random((n, length), np.float32),
        logp=-rng.random((n, length), np.float32), final_abandoned=bools(n, length),
        reward=rng.random(n, np.float32), correct=bools(n),
        nfe=rng.integers(0, length + 1, n).astype(np.int32) if nfe is None else nfe.astype(np.int32),
        sample_id=np.arange(n, dtype=np.int32) % 3, expert=bools(n), alpha=rng.random(n, np.float32),
        prompt_id=[f"gsm8k-{i % 4}" for i in range(n)], group_id=[f"r1-g{i // 3}" for i in range(n)],
        completion=[["", "42", "ünïcode ∑ 7", "a\nb"][i % 4] for i in range(n)], env_runner=3, policy_version=11)


@pytest.mark.parametrize("extra", [0, 2])
@pytest.mark.parametrize("old_logp", [None, np.float32, np.float64])
def test_the_columnar_table_is_exactly_the_per_row_one(per_row_trajectories, extra, old_logp):
    """Every dump written so far stays valid: same schema, values and nulls as the per-row to_arrow gave."""
    rng = np.random.default_rng(extra)
    for n, length, nfe in ((7, 16, None), (5, 8, np.array([8, 1, 0, 3, 8])), (3, 4, np.zeros(3)), (0, 4, None)):
        batch = random_batch(rng, n, length, extra, nfe)
        logp = None if old_logp is None else rng.standard_normal((n, length)).astype(old_logp)
        new = batch.to_arrow("run-ü", iteration=5, used=old_logp is not None, old_logp=logp)
        old = per_row_trajectories.TrajectoryBatch.to_arrow(batch, "run-ü", 5, old_logp is not None, logp)
        assert new.num_rows == int(batch.nfe.sum())
        assert new.schema.equals(old.schema, check_metadata=True) and new.equals(old, check_metadata=True)
        if new.num_rows:
            assert (new.column("extra_inputs").null_count == new.num_rows) == (extra == 0)
            assert (new.column("old_logp").null_count == new.num_rows) == (old_logp is None)


def test_the_writer_writes_beside_the_caller_and_flush_waits_for_it(tmp_path, monkeypatch):
    import threading

    from unmask.rollout import trajectories
    from unmask.rollout.trajectories import DumpWriter

    gate = threading.Event()
    write = trajectories.write_parquet_atomic
    monkeypatch.setattr(trajectories, "write_parquet_atomic", lambda table, path: gate.wait() and write(table, path))
    tables = [random_batch(np.random.default_rng(i), 4, 8, 2).to_arrow("run", i, True) for i in range(3)]
    writer = DumpWriter()
    for i, table in enumerate(tables):
        writer.submit(table, tmp_path / f"iter_{i}" / "runner_001.parquet")  # returns while the disk is held up
    assert not list(tmp_path.rglob("*.parquet"))
    threading.Timer(0.2, gate.set).start()
    writer.flush()
    for i, table in enumerate(tables):
        assert read_trajectories(tmp_path / f"iter_{i}").equals(table)
    writer.close()
    writer.close()  # twice is fine
    with pytest.raises(ValueError, match="closed"):
        writer.submit(tables[0], tmp_path / "late.parquet")


def test_the_writer_s_memory_is_bounded_and_a_slow_disk_paces_the_caller(tmp_path, monkeypatch):
    import threading

    from unmask.rollout import trajectories
    from unmask.rollout.trajectories import DumpWriter

    gate = threading.Event()
    write = trajectories.write_parquet_atomic
    monkeypatch.setattr(trajectories, "write_parquet_atomic", lambda table, path: gate.wait() and write(table, path))
    table = random_batch(np.random.default_rng(0), 4, 8, 2).to_arrow("run", 1, True)
    writer = DumpWriter(max_pending_bytes=table.nbytes // 2)
    writer.submit(table, tmp_path / "a.parquet")  # larger than the budget: admitted alone
    blocked = threading.Thread(target=writer.submit, args=(table, tmp_path / "b.parquet"))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # waits for room, holding no more memory
    gate.set()
    blocked.join(5)
    assert not blocked.is_alive()
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "b.parquet"]


def test_a_failed_dump_is_one_line_at_the_next_call_and_leaves_no_file(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    from unmask.rollout.trajectories import DumpWriter

    table = random_batch(np.random.default_rng(0), 4, 8, 0).to_arrow("run", 1, True)
    writer = DumpWriter()
    (tmp_path / "taken").write_text("a file where the iteration's folder goes")
    writer.submit(table, tmp_path / "taken" / "runner_001.parquet")
    with pytest.raises(OSError, match=r"trajectory dump .*taken/runner_001.parquet was not written") as failed:
        writer.flush()
    assert "\n" not in str(failed.value) and isinstance(failed.value.__cause__, OSError)
    writer.flush()  # raised once

    def disk_full(self, data):  # half the file reaches the disk, then the disk is full
        with open(self, "wb") as f:
            f.write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    writer.submit(table, tmp_path / "full" / "runner_001.parquet")
    writer.submit(table, tmp_path / "full" / "runner_002.parquet")
    with pytest.raises(OSError, match=r"runner_001.parquet was not written: no space left to write .*runner_001.parquet"
                                      r": it needs .* KiB, .* \(1 later"):
        writer.flush()
    monkeypatch.undo()
    writer.close()
    assert [p.name for p in (tmp_path / "full").iterdir()] == []  # neither a half-written dump nor its temp file


def test_dumps_pending_at_exit_are_written_even_unclosed(tmp_path):
    import subprocess
    import sys

    script = f"""
import time, numpy as np, pyarrow as pa
from unmask.rollout import trajectories
write = trajectories.write_parquet_atomic
trajectories.write_parquet_atomic = lambda table, path: time.sleep(0.5) or write(table, path)
writer = trajectories.DumpWriter()
writer.submit(pa.table({{"x": np.arange(3)}}), {str(tmp_path / "late.parquet")!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert (tmp_path / "late.parquet").is_file()


def test_run_outputs_hand_dumps_over_and_a_checkpoint_waits_for_them(tmp_path, monkeypatch):
    import threading

    from unmask.cluster.collector import Arrival, Collected
    from unmask.cluster.config import OutputSettings
    from unmask.cluster.outputs import RunOutputs
    from unmask.rollout import trajectories
    from unmask.rollout.env_runner import RunnerSample

    gate = threading.Event()
    write = trajectories.write_parquet_atomic
    monkeypatch.setattr(trajectories, "write_parquet_atomic", lambda table, path: gate.wait() and write(table, path))
    outputs = RunOutputs(tmp_path, "run", OutputSettings(checkpoint_every=0, best_window=0), lambda *a, **k: None)
    rng = np.random.default_rng(0)
    arrivals = [Arrival(RunnerSample(random_batch(rng, 6, 8, 2, np.full(6, 5)), 1.0, 0.0, 0.0, {}), 0, True)
                for _ in range(2)]
    arrivals[1].sample.trajectories.env_runner = 4
    for iteration in (1, 2):
        outputs.write(Collected(arrivals), [rng.random((6, 8), np.float32), None], iteration, version=iteration)
    assert not (tmp_path / "trajectories").exists()  # the training loop went on
    threading.Timer(0.2, gate.set).start()
    outputs.get_state()
    files = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "trajectories").rglob("*"))
    assert files == ["trajectories/iter_000001", "trajectories/iter_000001/runner_003.parquet",
                     "trajectories/iter_000001/runner_004.parquet", "trajectories/iter_000002",
                     "trajectories/iter_000002/runner_003.parquet", "trajectories/iter_000002/runner_004.parquet"]
    assert read_trajectories(tmp_path / "trajectories").num_rows == 2 * 2 * 6 * 5
    outputs.close()
