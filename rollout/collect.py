"""What produces trajectory batches: rolling a policy out in a dLLM env (`roll_out`) and scoring whole groups into a
`TrajectoryBatch` (`collect_groups`), as each env runner does for every sample (rollout.env_runner)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from unmask.envs.mdp import UnmaskingEnv
from unmask.envs.tasks import Example, Task
from unmask.learner.config import GRPOConfig, input_width
from unmask.learner.grpo import reward
from unmask.learner.sampler import PolicySampler
from unmask.rollout.experts import ExpertSteering
from unmask.rollout.trajectories import TrajectoryBatch


@dataclass
class Rollouts:
    """What rolling out records, before scoring: per step [N, T, L] / [N, T], per trajectory canvas and NFE."""

    steps: dict[str, torch.Tensor]  # confidences, extra_inputs, mask, abandoned, valid, action, t, logp (as named in
    #                                 TrajectoryBatch)
    canvases: torch.Tensor  # [N, L] token ids
    nfe: torch.Tensor  # [N] int32
    abandoned: torch.Tensor  # [N, L] bool: given up when the trajectory ended


def roll_out(env: UnmaskingEnv, sampler: PolicySampler, prompts: list[list[int]], group_size: int,
             batch_rows: int = 0, *, steering: ExpertSteering | None = None,
             alphas: torch.Tensor | None = None) -> Rollouts:
    """Every prompt (token ids) `group_size` times by the policy, then once by each of `steering`'s experts:
    trajectory n is member n % (G + E) of group n // (G + E); every decision recorded with the policy's log-prob of
    it. alphas [prompts]: each group's trade-off, the input of an alpha-conditioned policy.

    Continuous batching: at most `batch_rows` rows are in flight (0: all of them at once); when a trajectory
    ends, the next one (the next group member, then the next prompt) takes its row at the next step, in its
    own block and step."""
    members = group_size if steering is None else steering.members
    queue = [p for p in prompts for _ in range(members)]
    N, L = len(queue), env.L
    slots = N if batch_rows <= 0 else min(batch_rows, N)
    per_step = {name: torch.zeros(N, L, L, dtype=torch.bool) for name in ("mask", "abandoned", "valid", "action")}
    F = input_width(sampler.policy.config)
    rec = {"confidences": torch.zeros(N, L, L), "extra_inputs": torch.zeros(N, L, L, F - 1), **per_step,
           "t": torch.zeros(N, L), "logp": torch.zeros(N, L)}
    canvases, nfe = torch.zeros(N, L, dtype=torch.long), torch.zeros(N, dtype=torch.int32)
    abandoned = torch.zeros(N, L, dtype=torch.bool)
    running = list(range(slots))  # running[row] = the trajectory in that row
    started = slots
    features = tuple(dict.fromkeys([*sampler.features, *(steering.features if steering else ())]))
    obs = env.reset(queue[:slots], features=features)
    while True:
        row_traj = torch.tensor(running)
        logits = sampler.logits(obs, None if alphas is None else alphas[row_traj // members])
        action = sampler.sample(logits, obs.valid)
        if steering is not None:  # each expert decides its own rows; the policy scores the decision
            action = steering.decide(obs, row_traj, action)
        logp = sampler.log_prob(logits, action, obs.valid)
        rows = obs.active.cpu().nonzero(as_tuple=True)[0]
        traj = torch.tensor([running[r] for r in rows.tolist()], dtype=torch.long)
        step = (obs.nfe.cpu()[rows] - 1).long()
        inputs = sampler.inputs(obs)
        for name, value in (("confidences", inputs[..., 0]), ("extra_inputs", inputs[..., 1:]), ("mask", obs.masked),
                            ("abandoned", obs.abandoned), ("valid", obs.valid), ("action", action), ("t", obs.t),
                            ("logp", logp)):
            rec[name][traj, step] = value.detach().cpu()[rows].to(rec[name].dtype)
        env.apply(action)
        finished = rows[~env.active.cpu()[rows]].tolist()
        if finished:
            done = [running[r] for r in finished]
            canvases[done] = env.canvas().cpu()[finished]
            nfe[done] = env.nfe.cpu()[finished].to(torch.int32)
            abandoned[done] = env.abandoned.cpu()[finished]
            admit = finished[: N - started]
            if admit:
                env.start_rows(admit, queue[started : started + len(admit)])
                for row in admit:
                    running[row], started = started, started + 1
        if env.done:
            break
        obs = env.observe()
    return Rollouts(rec, canvases, nfe, abandoned)


def collect_groups(env: UnmaskingEnv, sampler: PolicySampler, task: Task, examples: list[Example],
                   group_size: int, grpo: GRPOConfig, *, env_runner: int, first_group: int,
                   policy_version: int, batch_rows: int = 0, steering: ExpertSteering | None = None,
                   alphas: torch.Tensor | None = None) -> TrajectoryBatch:
    """Roll out every example `group_size` times and once per expert (`roll_out`), score the answers (each group
    at its own alpha: `alphas`, else grpo.alpha), and number the groups from `first_group` on. Every trajectory
    of the batch is sampled by the same policy version."""
    dllm = env.dllm
    members = group_size if steering is None else steering.members
    group_alpha = torch.full((len(examples),), float(grpo.alpha)) if alphas is None else alphas.float().cpu()
    encoded = dllm.encode_prompts([ex.prompt for ex in examples], task.response_prefix)
    done = roll_out(env, sampler, encoded, group_size, batch_rows, steering=steering,
                    alphas=None if alphas is None else group_alpha)
    completions = [dllm.decode_answer(row) for row in done.canvases.tolist()]
    group_examples = [ex for ex in examples for _ in range(members)]
    correct = torch.tensor([task.verify(c, ex) for c, ex in zip(completions, group_examples)])
    alpha = group_alpha.repeat_interleave(members)
    sample_id = np.tile(np.arange(members, dtype=np.int32), len(examples))
    return TrajectoryBatch(
        **{name: value.numpy() for name, value in done.steps.items()},
        reward=reward(correct, done.nfe, env.L, alpha, grpo.reward).numpy().astype(np.float32),
        final_abandoned=done.abandoned.numpy(),
        correct=correct.numpy(), nfe=done.nfe.numpy(), sample_id=sample_id, expert=sample_id >= group_size,
        alpha=alpha.numpy().astype(np.float32),
        prompt_id=[ex.id for ex in group_examples],
        group_id=[f"r{env_runner}-g{first_group + g}" for g in range(len(examples)) for _ in range(members)],
        completion=completions, env_runner=env_runner, policy_version=policy_version,
    )
