"""Unmasking trajectories: THE trajectory batch type, collecting it in a dLLM env, and its Arrow/Parquet form.

One `TrajectoryBatch` crosses from generation (an env runner) to training (the learner) and to disk, converted
once each way: its field names are the Parquet column names, `learner_columns()` is what the GRPO learner
reads, and `to_arrow()` writes one row per step a trajectory actually took (`TRAJECTORY_SCHEMA`), so
`pyarrow.dataset` / `ray.data.read_parquet` read a folder of dumps as one table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from envs.files import write_atomic
from envs.mdp import UnmaskingEnv
from envs.samplers import Sampler, leftmost_block
from envs.tasks import Example, Task
from learner.config import GRPOConfig
from learner.grpo import reward
from learner.sampler import PolicySampler

# 2: the `abandoned` column (positions given up at a block's forward budget) and `old_logp` (what a stale step
# was importance-weighted against). 3: `alpha` (the trajectory's reward trade-off) and `expert` (drawn by an
# expert, expert steering). Earlier dumps still read (`read_trajectories`); the columns they lack are null.
SCHEMA_VERSION = 3
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
        pa.field("mask", pa.list_(pa.bool_())),  # [L] still masked
        pa.field("abandoned", pa.list_(pa.bool_())),  # [L] given up at a block's forward budget: keeps [MASK]
        pa.field("valid", pa.list_(pa.bool_())),  # [L] may be unmasked at this step
        pa.field("action", pa.list_(pa.bool_())),  # [L] unmask decision
        pa.field("logp", pa.float32()),  # behaviour log-prob of the decision
        pa.field("old_logp", pa.float32()),  # the learner's log-prob it was trained against (= logp when fresh)
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
    mask: np.ndarray  # [N, T, L] bool: still masked
    abandoned: np.ndarray  # [N, T, L] bool: given up before this step (its block ran out of forwards)
    valid: np.ndarray  # [N, T, L] bool: may be unmasked at this step (masked, in the current block)
    action: np.ndarray  # [N, T, L] bool: the unmask decision
    t: np.ndarray  # [N, T] float32: the policy's time input
    logp: np.ndarray  # [N, T] float32: behaviour log-prob of the decision
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
    old_logp: np.ndarray | None = None  # [N, T] float32: the learner's log-prob of each decision when it trained on
    #                                     them (= logp for a fresh batch); set by the algorithm, None until then

    def __len__(self) -> int:
        return len(self.nfe)

    @property
    def active(self) -> np.ndarray:
        """[N, T] bool: the steps each trajectory took."""
        return np.arange(self.t.shape[1])[None, :] < self.nfe[:, None]

    @property
    def num_groups(self) -> int:
        return len(set(self.group_id))

    def mixture_shares(self) -> tuple[np.ndarray, np.ndarray]:
        """[N] G/(G+E) and, on expert trajectories, 1/(G+E) (0 on the policy's), from each group's members:
        the weights of learner.grpo.steered_logp."""
        _, group, size = np.unique(self.group_id, return_inverse=True, return_counts=True)
        experts = np.bincount(group, weights=self.expert.astype(np.float64), minlength=len(size))
        members = size[group].astype(np.float32)
        policy_share = (members - experts[group]) / members
        return policy_share.astype(np.float32), np.where(self.expert, 1.0 / members, 0.0).astype(np.float32)

    def learner_columns(self) -> dict[str, np.ndarray]:
        """What the GRPO learner reads (learner.module), under the same names."""
        policy_share, expert_share = self.mixture_shares()
        return {"confidences": self.confidences, "mask": self.mask, "valid": self.valid, "action": self.action,
                "t": self.t, "logp": self.logp, "active": self.active, "alpha": self.alpha,
                "policy_share": policy_share, "expert_share": expert_share}

    def to_arrow(self, run_id: str, iteration: int, used: bool) -> pa.Table:
        """One row per step actually taken, in TRAJECTORY_SCHEMA."""
        traj, step = np.nonzero(self.active)
        per_step = {name: list(getattr(self, name)[traj, step])
                    for name in ("confidences", "mask", "abandoned", "valid", "action")}
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
            "old_logp": [None] * len(traj) if self.old_logp is None else self.old_logp[traj, step],
            "reward": self.reward[traj],
            "correct": self.correct[traj],
            "nfe": self.nfe[traj],
            "used": np.full(len(traj), used),
            "completion": [self.completion[i] for i in traj],
        }
        return pa.Table.from_pydict(columns, schema=TRAJECTORY_SCHEMA)


@dataclass
class Rollouts:
    """What rolling out records, before scoring: per step [N, T, L] / [N, T], per trajectory canvas and NFE."""

    steps: dict[str, torch.Tensor]  # confidences, mask, abandoned, valid, action, t, logp (TrajectoryBatch names)
    canvases: torch.Tensor  # [N, L] token ids
    nfe: torch.Tensor  # [N] int32


def roll_out(env: UnmaskingEnv, sampler: PolicySampler, prompts: list[list[int]], group_size: int,
             batch_rows: int = 0, *, experts: Sequence[Sampler] = (), expert_block_length: int = 0,
             alphas: torch.Tensor | None = None) -> Rollouts:
    """Every prompt (token ids) `group_size` times by the policy, then once by each expert: trajectory n is
    member n % (G + E) of group n // (G + E); every decision recorded. alphas [prompts]: each group's trade-off,
    the input of an alpha-conditioned policy.

    Continuous batching: at most `batch_rows` rows are in flight (0: all of them at once); when a trajectory
    ends, the next one (the next group member, then the next prompt) takes its row at the next step, in its
    own block and step."""
    members = group_size + len(experts)
    queue = [p for p in prompts for _ in range(members)]
    N, L = len(queue), env.L
    slots = N if batch_rows <= 0 else min(batch_rows, N)
    per_step = {name: torch.zeros(N, L, L, dtype=torch.bool) for name in ("mask", "abandoned", "valid", "action")}
    rec = {"confidences": torch.zeros(N, L, L), **per_step, "t": torch.zeros(N, L), "logp": torch.zeros(N, L)}
    canvases, nfe = torch.zeros(N, L, dtype=torch.long), torch.zeros(N, dtype=torch.int32)
    running = list(range(slots))  # running[row] = the trajectory in that row
    started = slots
    features = tuple(dict.fromkeys([*sampler.features, *(f for e in experts for f in e.features)]))
    obs = env.reset(queue[:slots], features=features)
    while True:
        row_traj = torch.tensor(running)
        row_alpha = None if alphas is None else alphas[row_traj // members]
        steering = None
        if experts:  # each expert decides its own rows, semi-AR in its own blocks; the policy scores the decision
            expert_obs = dataclasses.replace(obs, valid=leftmost_block(obs.valid, expert_block_length))
            decisions = torch.stack([e.select(expert_obs) for e in experts])
            which = (row_traj % members - group_size).to(decisions.device)
            steering = (which >= 0, decisions[which.clamp(min=0), torch.arange(len(running), device=which.device)])
        action, logp = sampler.act(obs, row_alpha, steering)
        rows = obs.active.cpu().nonzero(as_tuple=True)[0]
        traj = torch.tensor([running[r] for r in rows.tolist()], dtype=torch.long)
        step = (obs.nfe.cpu()[rows] - 1).long()
        for name, value in (("confidences", obs.confidence), ("mask", obs.masked), ("abandoned", obs.abandoned),
                            ("valid", obs.valid), ("action", action), ("t", obs.t), ("logp", logp)):
            rec[name][traj, step] = value.detach().cpu()[rows].to(rec[name].dtype)
        env.apply(action)
        finished = rows[~env.active.cpu()[rows]].tolist()
        if finished:
            done = [running[r] for r in finished]
            canvases[done] = env.canvas().cpu()[finished]
            nfe[done] = env.nfe.cpu()[finished].to(torch.int32)
            admit = finished[: N - started]
            if admit:
                env.start_rows(admit, queue[started : started + len(admit)])
                for row in admit:
                    running[row], started = started, started + 1
        if env.done:
            break
        obs = env.observe()
    return Rollouts(rec, canvases, nfe)


def collect_groups(env: UnmaskingEnv, sampler: PolicySampler, task: Task, examples: list[Example],
                   group_size: int, grpo: GRPOConfig, *, env_runner: int, first_group: int,
                   policy_version: int, batch_rows: int = 0, experts: Sequence[Sampler] = (),
                   expert_block_length: int = 0, alphas: torch.Tensor | None = None) -> TrajectoryBatch:
    """Roll out every example `group_size` times and once per expert (`roll_out`), score the answers (each group
    at its own alpha: `alphas`, else grpo.alpha), and number the groups from `first_group` on. Every trajectory
    of the batch is sampled by the same policy version."""
    dllm = env.dllm
    members = group_size + len(experts)
    group_alpha = torch.full((len(examples),), float(grpo.alpha)) if alphas is None else alphas.float().cpu()
    encoded = dllm.encode_prompts([ex.prompt for ex in examples], task.response_prefix)
    done = roll_out(env, sampler, encoded, group_size, batch_rows, experts=experts,
                    expert_block_length=expert_block_length, alphas=None if alphas is None else group_alpha)
    completions = [dllm.decode_answer(row) for row in done.canvases.tolist()]
    group_examples = [ex for ex in examples for _ in range(members)]
    correct = torch.tensor([task.verify(c, ex) for c, ex in zip(completions, group_examples)])
    alpha = group_alpha.repeat_interleave(members)
    sample_id = np.tile(np.arange(members, dtype=np.int32), len(examples))
    return TrajectoryBatch(
        **{name: value.numpy() for name, value in done.steps.items()},
        reward=reward(correct, done.nfe, env.L, alpha, grpo.reward).numpy().astype(np.float32),
        correct=correct.numpy(), nfe=done.nfe.numpy(), sample_id=sample_id, expert=sample_id >= group_size,
        alpha=alpha.numpy().astype(np.float32),
        prompt_id=[ex.id for ex in group_examples],
        group_id=[f"r{env_runner}-g{first_group + g}" for g in range(len(examples)) for _ in range(members)],
        completion=completions, env_runner=env_runner, policy_version=policy_version,
    )


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
