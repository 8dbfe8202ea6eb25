"""The trajectory contract: THE trajectory batch type, its Parquet schema and I/O. Numpy and pyarrow only, so reading
a dump imports nothing of torch or Ray.

One `TrajectoryBatch` crosses from generation (an env runner, rollout.collect) to training (the learner) and to
disk, converted once each way: its field names are the Parquet column names, `learner_batch()` is what the GRPO
learner reads (learner.learner), and `to_arrow()` writes one row per step a trajectory actually took
(`TRAJECTORY_SCHEMA`), so `pyarrow.dataset` / `ray.data.read_parquet` read a folder of dumps as one table.
`DumpWriter` writes them on a thread beside the training loop.
"""

from __future__ import annotations

import queue
import threading
import weakref
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
        trained against (None: not trained on). Built column by column from the arrays (flat values + offsets), never
        row by row: at L = 256 an iteration is ~10^4 rows of 256-position lists, which per-row Python took ~0.4 s
        over with two extra inputs, in the training loop (bench/dumps.py)."""
        traj, step = np.nonzero(self.active)
        n = len(traj)
        per_step = {name: _lists(getattr(self, name)[traj, step], TRAJECTORY_SCHEMA.field(name).type)
                    for name in ("confidences", "mask", "abandoned", "valid", "action")}
        extra_type = TRAJECTORY_SCHEMA.field("extra_inputs").type
        extra = self.extra_inputs
        per_step["extra_inputs"] = pa.nulls(n, extra_type) if extra.shape[-1] == 0 else _lists(extra[traj, step],
                                                                                                extra_type)
        indices = pa.array(traj)
        columns = {
            "run_id": pa.repeat(pa.scalar(run_id, pa.string()), n),
            "iteration": np.full(n, iteration, np.int64),
            "env_runner": np.full(n, self.env_runner, np.int32),
            "policy_version": np.full(n, self.policy_version, np.int64),
            "prompt_id": pa.array(self.prompt_id, pa.string()).take(indices),
            "group_id": pa.array(self.group_id, pa.string()).take(indices),
            "sample_id": self.sample_id[traj],
            "expert": self.expert[traj],
            "alpha": self.alpha[traj],
            "step": step.astype(np.int32),
            "t": self.t[traj, step],
            **per_step,
            "logp": self.logp[traj, step],
            "old_logp": pa.nulls(n, pa.float32()) if old_logp is None else old_logp[traj, step],
            "final_abandoned": _lists(self.final_abandoned[traj], TRAJECTORY_SCHEMA.field("final_abandoned").type),
            "reward": self.reward[traj],
            "correct": self.correct[traj],
            "nfe": self.nfe[traj],
            "used": np.full(n, used),
            "completion": pa.array(self.completion, pa.string()).take(indices),
        }
        return pa.Table.from_pydict(columns, schema=TRAJECTORY_SCHEMA)


def _lists(values: np.ndarray, type: pa.DataType) -> pa.Array:
    """values [n, L, ...] as n rows of `type` (list<...>, one list level per dimension after the first): the flat
    values under offsets 0, L, 2L, ..., so no Python runs per row."""
    if not pa.types.is_list(type):
        if type == pa.bool_() and values.dtype == np.bool_:  # numpy packs the bits ~20x faster than pa.array
            bits = np.packbits(values.reshape(-1), bitorder="little")
            return pa.Array.from_buffers(type, values.size, [None, pa.py_buffer(bits)])
        return pa.array(values.reshape(-1), type)
    n, length = values.shape[:2]
    inner = _lists(values.reshape(n * length, *values.shape[2:]), type.value_type)
    if n * length >= 2**31:
        raise ValueError(f"{n} x {length} values exceed a list<...> column's int32 offsets: dump fewer trajectories")
    offsets = pa.array(np.arange(0, (n + 1) * length, length, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, inner, type=type)


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


class DumpWriter:
    """Writes dumps (write_parquet_atomic) on one daemon thread, beside the training loop rather than in it: `submit`
    hands a table over and returns at once, unless the tables waiting already hold `max_pending_bytes` (a disk slower
    than training then paces training instead of filling memory). A write that fails (disk full, permission) leaves
    no file, and is raised in the caller at its next submit/flush/close as a one-line OSError naming the path.
    Dumps still pending when the interpreter exits are written first (and when an unclosed writer is collected)."""

    def __init__(self, max_pending_bytes: int = 256 << 20):
        self._shared = _Pending(max_pending_bytes)
        thread = threading.Thread(target=self._shared.run, name="unmask-dump-writer", daemon=True)
        thread.start()
        self._close = weakref.finalize(self, self._shared.stop, thread)

    def submit(self, table: pa.Table, path: str | Path) -> None:
        self._raise_failure()
        if not self._close.alive:
            raise ValueError(f"DumpWriter is closed: {path} not written")
        self._shared.put(table, Path(path))

    def flush(self) -> None:
        """Wait until every table submitted is on disk (or failed: then raised here)."""
        self._shared.jobs.join()
        self._raise_failure()

    def close(self) -> None:
        """Flush and end the thread; later calls do nothing (but raise a failure not yet raised)."""
        self._close()
        self._raise_failure()

    def _raise_failure(self) -> None:
        with self._shared.room:
            failures, self._shared.failures = self._shared.failures, []
        if failures:
            path, cause = failures[0]
            more = f" ({len(failures) - 1} later dump(s) failed too)" if len(failures) > 1 else ""
            reason = " ".join(str(cause).split()) or type(cause).__name__
            raise OSError(f"trajectory dump {path} was not written: {reason}{more}") from cause


class _Pending:
    """What the writer thread shares with its DumpWriter (not the writer itself, so an unclosed one can be collected):
    the jobs, the bytes they hold, and the failures not yet raised."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.jobs: queue.Queue[tuple[pa.Table, Path, int] | None] = queue.Queue()
        self.room = threading.Condition()
        self.failures: list[tuple[Path, BaseException]] = []

    def put(self, table: pa.Table, path: Path) -> None:
        size = table.nbytes
        with self.room:  # a table larger than the whole budget still goes, alone
            self.room.wait_for(lambda: self.bytes == 0 or self.bytes + size <= self.max_bytes)
            self.bytes += size
        self.jobs.put((table, path, size))

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            table, path, size = job
            try:
                write_parquet_atomic(table, path)
            except Exception as e:  # whatever it is, the caller hears it at its next call
                with self.room:
                    self.failures.append((path, e))
            finally:
                del table, job
                with self.room:
                    self.bytes -= size
                    self.room.notify_all()
                self.jobs.task_done()
        self.jobs.task_done()

    def stop(self, thread: threading.Thread) -> None:
        self.jobs.put(None)
        if thread is not threading.current_thread():
            thread.join()


def read_trajectories(folder: str | Path) -> pa.Table:
    """Every dump under `folder` as one table (hidden temp files are skipped by pyarrow). Dumps of an
    earlier schema version read too: the columns they lack are null."""
    import pyarrow.dataset as ds

    return ds.dataset(str(folder), format="parquet", schema=TRAJECTORY_SCHEMA).to_table()
