"""The trajectory contract: THE trajectory batch type, its Parquet schema and I/O. Numpy and pyarrow only, so reading
a dump imports nothing of torch or Ray.

One `TrajectoryBatch` crosses from generation (an env runner, rollout.collect) to training (the learner) and to
disk, converted once each way: its field names are the Parquet column names, `learner_batch()` is what the GRPO
learner reads (learner.learner), and `to_arrow()` writes one row per step a trajectory actually took
(`TRAJECTORY_SCHEMA`), so `pyarrow.dataset` / `ray.data.read_parquet` read a folder of dumps as one table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from unmask.envs.files import write_atomic

# 2: the `abandoned` column (positions given up at a block's forward budget) and `old_logp` (what a stale step
# was importance-weighted against). 3: `alpha` (the trajectory's reward trade-off) and `expert` (drawn by an
# expert, expert steering). 4: `extra_inputs` (a policy's inputs beyond the confidence; null for the paper's) and
# `final_abandoned` (the positions the trajectory ended with given up, its last step's included); `old_logp` of an
# expert's step is the group's mixture, the likelihood its ratio was taken against.
# Earlier dumps still read (`read_trajectories`); the columns they lack are null.
SCHEMA_VERSION = 4
SCHEMA_VERSION_KEY = "unmask.trajectory_schema_version"
TRAJECTORY_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("iteration", pa.int64()),  # training iteration whose dump holds the row (1-based, as Tune's)
        pa.field("env_runner", pa.int32()),
        pa.field("policy_version", pa.int64()),  # learner updates behind the behaviour policy
        pa.field("prompt_id", pa.string()),
        pa.field("group_id", pa.string()),  # unique in the run: runner and group counter
        pa.field("sample_id", pa.int32()),  # member of the group, 0..G-1, then the experts' G..G+E-1
        pa.field("expert", pa.bool_()),  # drawn by an expert (expert steering), not by the policy
        pa.field("alpha", pa.float32()),  # the reward's trade-off for this trajectory (its group's)
        pa.field("step", pa.int32()),  # decision index, 0..nfe-1
        pa.field("t", pa.float32()),  # policy time input
        pa.field("confidences", pa.list_(pa.float32())),  # [L] top-1 probabilities
        pa.field("extra_inputs", pa.list_(pa.list_(pa.float32()))),  # [L][F-1] the policy's other inputs, or null
        pa.field("mask", pa.list_(pa.bool_())),  # [L] still masked
        pa.field("abandoned", pa.list_(pa.bool_())),  # [L] given up at a block's forward budget: keeps [MASK]
        pa.field("valid", pa.list_(pa.bool_())),  # [L] may be unmasked at this step
        pa.field("action", pa.list_(pa.bool_())),  # [L] unmask decision
        pa.field("logp", pa.float32()),  # behaviour log-prob of the decision
        pa.field("old_logp", pa.float32()),  # the learner's log-prob it was trained against (= logp when fresh)
        pa.field("final_abandoned", pa.list_(pa.bool_())),  # [L] given up when the trajectory ended: keeps [MASK]
        pa.field("reward", pa.float32()),
        pa.field("correct", pa.bool_()),
        pa.field("nfe", pa.int32()),
        pa.field("used", pa.bool_()),  # trained on (False: dropped as too stale)
        pa.field("completion", pa.string()),
    ],
    metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION)},
)


@dataclass
class TrajectoryBatch:
    """Complete groups of trajectories from one env-runner sample: one row per trajectory, steps padded to
    T = L. Step s of trajectory n was taken iff s < nfe[n] (one decision per dLLM forward)."""

    confidences: np.ndarray  # [N, T, L] float32: the dLLM's top-1 probabilities the policy saw
    extra_inputs: np.ndarray  # [N, T, L, F-1] float32: its other inputs (learner.config.PolicyConfig.inputs)
    mask: np.ndarray  # [N, T, L] bool: still masked
    abandoned: np.ndarray  # [N, T, L] bool: given up before this step (its block ran out of forwards)
    valid: np.ndarray  # [N, T, L] bool: may be unmasked at this step (masked, in the current block)
    action: np.ndarray  # [N, T, L] bool: the unmask decision
    t: np.ndarray  # [N, T] float32: the policy's time input
    logp: np.ndarray  # [N, T] float32: behaviour log-prob of the decision
    final_abandoned: np.ndarray  # [N, L] bool: given up when the trajectory ended (at its last step too)
    reward: np.ndarray  # [N] float32
    correct: np.ndarray  # [N] bool
    nfe: np.ndarray  # [N] int32
    sample_id: np.ndarray  # [N] int32: member of its group, 0..G-1, then the experts' G..G+E-1
    expert: np.ndarray  # [N] bool: drawn by an expert (expert steering)
    alpha: np.ndarray  # [N] float32: the reward's trade-off (its group's; the policy's input if alpha-conditioned)
    prompt_id: list[str]
    group_id: list[str]  # r<runner>-g<n>: the runner's group counter makes it unique in the run
    completion: list[str]  # the decoded answer; an abandoned position shows as the mask token
    env_runner: int  # runner index (1-based; 0 = sampled in the algorithm's process)
    policy_version: int  # learner updates behind the policy that sampled every step of it

    def __len__(self) -> int:
        return len(self.nfe)

    @property
    def active(self) -> np.ndarray:
        """[N, T] bool: the steps each trajectory took."""
        return np.arange(self.t.shape[1])[None, :] < self.nfe[:, None]

    @property
    def num_groups(self) -> int:
        return len(set(self.group_id))

    def to_arrow(self, run_id: str, iteration: int, used: bool, old_logp: np.ndarray | None = None) -> pa.Table:
        """One row per step actually taken, in TRAJECTORY_SCHEMA; old_logp [N, T]: the proximal log-probs the learner
        trained against (None: not trained on)."""
        traj, step = np.nonzero(self.active)
        per_step = {name: list(getattr(self, name)[traj, step])
                    for name in ("confidences", "mask", "abandoned", "valid", "action")}
        extra = self.extra_inputs[traj, step]
        per_step["extra_inputs"] = [None] * len(traj) if extra.shape[-1] == 0 else [list(x) for x in extra]
        columns = {
            "run_id": [run_id] * len(traj),
            "iteration": np.full(len(traj), iteration, np.int64),
            "env_runner": np.full(len(traj), self.env_runner, np.int32),
            "policy_version": np.full(len(traj), self.policy_version, np.int64),
            "prompt_id": [self.prompt_id[i] for i in traj],
            "group_id": [self.group_id[i] for i in traj],
            "sample_id": self.sample_id[traj],
            "expert": self.expert[traj],
            "alpha": self.alpha[traj],
            "step": step.astype(np.int32),
            "t": self.t[traj, step],
            **per_step,
            "logp": self.logp[traj, step],
            "old_logp": [None] * len(traj) if old_logp is None else old_logp[traj, step],
            "final_abandoned": list(self.final_abandoned[traj]),
            "reward": self.reward[traj],
            "correct": self.correct[traj],
            "nfe": self.nfe[traj],
            "used": np.full(len(traj), used),
            "completion": [self.completion[i] for i in traj],
        }
        return pa.Table.from_pydict(columns, schema=TRAJECTORY_SCHEMA)


def learner_batch(batches: list[TrajectoryBatch]) -> dict[str, np.ndarray]:
    """The batches as the GRPO learner's columns (learner.learner), trajectories concatenated in order; `group`
    numbers the groups of this batch."""
    names = ("confidences", "extra_inputs", "mask", "valid", "action", "t", "logp", "alpha", "reward", "expert")
    columns = {name: np.concatenate([getattr(b, name) for b in batches]) for name in names}
    columns["active"] = np.concatenate([b.active for b in batches])
    columns["group"] = np.unique(np.concatenate([b.group_id for b in batches]), return_inverse=True)[1].astype(np.int64)
    columns["policy_version"] = np.concatenate([np.full(len(b), b.policy_version, np.int64) for b in batches])
    return columns


def write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    """Temp file + rename: a reader never sees a half-written dump."""
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    write_atomic(Path(path), buffer.getvalue().to_pybytes())
    return Path(path)


def read_trajectories(folder: str | Path) -> pa.Table:
    """Every dump under `folder` as one table (hidden temp files are skipped by pyarrow). Dumps of an
    earlier schema version read too: the columns they lack are null."""
    import pyarrow.dataset as ds

    return ds.dataset(str(folder), format="parquet", schema=TRAJECTORY_SCHEMA).to_table()
