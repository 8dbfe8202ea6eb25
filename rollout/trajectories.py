"""Unmasking trajectories: collecting them in a dLLM env, and THE trajectory schema (Arrow/Parquet).

In memory a batch is a dict of numpy arrays, one row per trajectory, steps padded to T = L:
    confidence [N,T,L] f32, masked/valid/action [N,T,L] bool, t/logp [N,T] f32, active [N,T] bool,
    reward [N] f32, correct [N] bool, nfe [N] i32, sample_id [N] i32, group [N] i64 (index in the batch),
    plus lists prompt_id, completion (str) and the ints policy_version, env_runner.
On disk (`TRAJECTORY_SCHEMA`, version `SCHEMA_VERSION`) a Parquet file has one row per step actually
taken, so `pyarrow.dataset` / `ray.data.read_parquet` read a folder of dumps as one table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from envs.files import write_atomic
from envs.mdp import UnmaskingEnv
from envs.tasks import Example, Task
from learner.config import GRPOConfig
from learner.grpo import reward
from learner.sampler import PolicySampler

SCHEMA_VERSION = 1
TRAJECTORY_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("iteration", pa.int64()),  # training iteration whose dump holds the row
        pa.field("env_runner", pa.int32()),
        pa.field("policy_version", pa.int64()),  # learner updates behind the behaviour policy
        pa.field("prompt_id", pa.string()),
        pa.field("group_id", pa.string()),  # unique in the run: runner and group counter
        pa.field("sample_id", pa.int32()),  # member of the group, 0..G-1
        pa.field("step", pa.int32()),  # decision index, 0..nfe-1
        pa.field("t", pa.float32()),  # policy time input
        pa.field("confidences", pa.list_(pa.float32())),  # [L] top-1 probabilities
        pa.field("mask", pa.list_(pa.bool_())),  # [L] still masked
        pa.field("valid", pa.list_(pa.bool_())),  # [L] may be unmasked at this step
        pa.field("action", pa.list_(pa.bool_())),  # [L] unmask decision
        pa.field("logp", pa.float32()),  # behaviour log-prob of the decision
        pa.field("reward", pa.float32()),
        pa.field("correct", pa.bool_()),
        pa.field("nfe", pa.int32()),
        pa.field("used", pa.bool_()),  # trained on (False: dropped as too stale)
        pa.field("completion", pa.string()),
    ],
    metadata={"unmask.trajectory_schema_version": str(SCHEMA_VERSION)},
)


def collect_groups(env: UnmaskingEnv, sampler: PolicySampler, task: Task, examples: list[Example],
                   group_size: int, grpo: GRPOConfig) -> dict:
    """Run every example `group_size` times in one batched env; record every decision."""
    dllm = env.dllm
    encoded = dllm.encode_prompts([ex.prompt for ex in examples], task.response_prefix)
    prompts = [p for p in encoded for _ in range(group_size)]
    obs = env.reset(prompts)
    N, L = len(prompts), env.L
    rec = {
        "confidence": torch.zeros(N, L, L), "masked": torch.zeros(N, L, L, dtype=torch.bool),
        "valid": torch.zeros(N, L, L, dtype=torch.bool), "action": torch.zeros(N, L, L, dtype=torch.bool),
        "t": torch.zeros(N, L), "logp": torch.zeros(N, L), "active": torch.zeros(N, L, dtype=torch.bool),
    }
    step = 0
    while not env.done:
        action, logp = sampler.act(obs)
        rows = obs.active.cpu()
        for name, value in (("confidence", obs.confidence), ("masked", obs.masked), ("valid", obs.valid),
                            ("action", action), ("t", obs.t), ("logp", logp)):
            rec[name][rows, step] = value.detach().cpu()[rows].to(rec[name].dtype)
        rec["active"][rows, step] = True
        obs = env.step(action)
        step += 1
    canvas = env.canvas().tolist()
    completions = [dllm.decode_answer(row) for row in canvas]
    group_examples = [ex for ex in examples for _ in range(group_size)]
    correct = torch.tensor([task.verify(c, ex) for c, ex in zip(completions, group_examples)])
    nfe = env.nfe.cpu()
    batch = {name: value.numpy() for name, value in rec.items()}
    batch.update(
        reward=reward(correct, nfe, L, grpo.alpha, grpo.reward).numpy().astype(np.float32),
        correct=correct.numpy(), nfe=nfe.numpy().astype(np.int32),
        sample_id=np.tile(np.arange(group_size, dtype=np.int32), len(examples)),
        group=np.repeat(np.arange(len(examples), dtype=np.int64), group_size),
        prompt_id=[ex.id for ex in group_examples], completion=completions,
    )
    return batch


def to_table(batch: dict, run_id: str, iteration: int, used: bool) -> pa.Table:
    """One row per step actually taken, in TRAJECTORY_SCHEMA."""
    traj, step = np.nonzero(batch["active"])
    runner, version = batch["env_runner"], batch["policy_version"]
    groups = [f"r{runner}-g{batch['group_offset'] + g}" for g in batch["group"]]
    columns = {
        "run_id": [run_id] * len(traj),
        "iteration": np.full(len(traj), iteration, np.int64),
        "env_runner": np.full(len(traj), runner, np.int32),
        "policy_version": np.full(len(traj), version, np.int64),
        "prompt_id": [batch["prompt_id"][i] for i in traj],
        "group_id": [groups[i] for i in traj],
        "sample_id": batch["sample_id"][traj],
        "step": step.astype(np.int32),
        "t": batch["t"][traj, step],
        "confidences": list(batch["confidence"][traj, step]),
        "mask": list(batch["masked"][traj, step]),
        "valid": list(batch["valid"][traj, step]),
        "action": list(batch["action"][traj, step]),
        "logp": batch["logp"][traj, step],
        "reward": batch["reward"][traj],
        "correct": batch["correct"][traj],
        "nfe": batch["nfe"][traj],
        "used": np.full(len(traj), used),
        "completion": [batch["completion"][i] for i in traj],
    }
    return pa.Table.from_pydict(columns, schema=TRAJECTORY_SCHEMA)


def write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    """Temp file + rename: a reader never sees a half-written dump."""
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    write_atomic(Path(path), buffer.getvalue().to_pybytes())
    return Path(path)


def read_trajectories(folder: str | Path) -> pa.Table:
    """Every dump under `folder` as one table (hidden temp files are skipped by pyarrow)."""
    import pyarrow.dataset as ds

    return ds.dataset(str(folder), format="parquet", schema=TRAJECTORY_SCHEMA).to_table()
