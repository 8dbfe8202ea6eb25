"""What an iteration reports under `unmask/` (Tune's progress.csv and result.json, the console line), and the run's
running totals: among them the streaks by which a stalled run is recognised and stopped."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from unmask.cluster.collector import Collected


@dataclass
class RunTotals:
    trajectories: int = 0  # every trajectory rolled out, the experts' too (they cost rollouts as well)
    skipped_batches: int = 0  # updates skipped because every advantage was ~0
    skipped_streak: int = 0  # ... in a row, up to this iteration
    stalled_streak: int = 0  # iterations in a row that were skipped, or in which the policy was stuck (unmasked
    #                          nothing or everything at once and solved nothing: with experts, whose rewards keep
    #                          the advantages alive, such a collapse is only seen this way)

    def count(self, trajectories: int, skipped: bool, stuck: bool) -> None:
        self.trajectories += trajectories
        self.skipped_batches += int(skipped)
        self.skipped_streak = self.skipped_streak + 1 if skipped else 0
        self.stalled_streak = self.stalled_streak + 1 if skipped or stuck else 0

    def collapsed(self, patience: int) -> bool:
        """`stop_after_skipped` stalled iterations in a row: the policy no longer learns (0: never stop)."""
        return bool(patience) and self.stalled_streak >= patience

    def get_state(self) -> dict:
        return asdict(self)


IDENTICAL_SHARE = 0.9  # groups whose members decoded alike, from which share exploration counts as dead

COLLAPSES = {  # what each collapse looks like in an iteration's policy rollouts, as the console names it
    "nothing": "every policy rollout spent the whole forward budget (NFE {nfe:.2f} = L): the policy has collapsed to "
               "unmasking (almost) nothing",
    "all_at_once": "every policy rollout committed each block in one forward (NFE {nfe:.2f} = the number of "
                   "blocks): the policy has collapsed to unmasking everything at once",
    "identical": "the members of {identical:.0%} of groups decoded identically: the policy has become deterministic "
                 "and exploration has died (grpo.logit_bound or grpo.entropy_coef keep it alive)",
}


def collapse_seen(collected: Collected, gen_length: int, num_blocks: int) -> str:
    """Which collapse (a key of COLLAPSES) the iteration's policy rollouts show, or ""."""
    nfe = collected.per_trajectory("nfe")
    if min(nfe) >= gen_length:
        return "nothing"
    if max(nfe) <= num_blocks:
        return "all_at_once"
    return "identical" if group_spread(collected)["identical_groups"] >= IDENTICAL_SHARE else ""


def describe_collapse(m: dict) -> str:
    """The console's words for the collapse an iteration's metrics flag ("" when they flag none)."""
    kind = next((k for k in COLLAPSES if m.get(f"collapse_{k}")), "")
    return COLLAPSES[kind].format(nfe=m.get("nfe_mean", 0.0), identical=m.get("identical_groups", 0.0)) if kind else ""


def stalled_why(m: dict) -> str:
    """Why an iteration counts towards a stop: its skip or stuck streak, and the collapse it shows."""
    skipped, stalled = int(m.get("skipped_streak", 0)), int(m.get("stalled_streak", 0))
    head = (f"{skipped} updates in a row skipped (every advantage 0)" if skipped >= stalled
            else f"{stalled} iterations in a row stuck (no rollout solved its prompt)")
    what = describe_collapse(m) or (f"every group's members scored alike (reward {m.get('reward_mean', 0.0):.3f}, "
                                    f"NFE {m.get('nfe_mean', 0.0):.2f}), so no update has a gradient")
    return f"{head}: {what}"


def stuck(collected: Collected, seen: str) -> bool:
    """The policy unmasks nothing or everything at once (`seen`, collapse_seen's verdict), and none of its rollouts
    solved its prompt: with experts, whose rewards keep the advantages alive, this is how such a collapse is seen."""
    return seen in ("nothing", "all_at_once") and not any(collected.per_trajectory("correct"))


def group_spread(collected: Collected) -> dict:
    """How much the policy's members of a group differ: the share of groups whose rewards are all equal (no gradient
    comes from them), and of groups whose members all decoded the same answer in the same NFE (the policy has
    become deterministic on that prompt: exploration has died there)."""
    members: dict[str, list[tuple]] = {}
    for a in collected.arrivals:
        t = a.sample.trajectories
        for i in range(len(t)):
            if not t.expert[i]:
                members.setdefault(t.group_id[i], []).append((float(t.reward[i]), t.completion[i], int(t.nfe[i])))
    groups = list(members.values()) or [[]]
    return {"flat_groups": sum(len({m[0] for m in g}) <= 1 for g in groups) / len(groups),
            "identical_groups": sum(len({m[1:] for m in g}) <= 1 for g in groups) / len(groups)}


def iteration_report(collected: Collected, totals: RunTotals, *, skipped: bool, collapsed: bool, elapsed_s: float,
                     buffered_groups: int, policy_version: int, restarts: int, healthy_runners: int,
                     experts: bool, seen: str = "") -> dict:
    """The iteration's metrics; reward_mean, accuracy and nfe_mean are the policy's own trajectories' (the experts'
    beside them as expert_*)."""
    samples = [a.sample for a in collected.arrivals]
    nfe, correct = collected.per_trajectory("nfe"), collected.per_trajectory("correct")
    trajectories = sum(len(s.trajectories) for s in samples)
    lags = [a.lag for a in collected.arrivals]
    busy, idle = sum(s.busy_s for s in samples), sum(s.idle_s for s in samples)
    forwards = sum(s.forwards for s in samples)
    report = {
        "reward_mean": float(np.mean(collected.per_trajectory("reward"))), "accuracy": float(np.mean(correct)),
        "nfe_mean": float(np.mean(nfe)),
        "trajectories_per_s": trajectories / max(elapsed_s, 1e-9),
        "env_runner_busy_fraction": busy / max(busy + idle, 1e-9),
        "rows_per_forward": sum(s.forward_rows for s in samples) / max(1, forwards),
        "forwards_per_s": forwards / max(busy, 1e-9),  # per runner-second of rollout work
        "emulation_overrun": sum(s.emulation_overruns for s in samples) / max(1, forwards),
        "buffered_groups": buffered_groups,
        "weight_pull_s": float(np.mean([s.weight_sync_s for s in samples])),
        "staleness_mean": float(np.mean(lags)), "staleness_max": int(max(lags)),
        "dropped_groups": sum(a.sample.trajectories.num_groups for a in collected.arrivals if not a.used),
        "skipped_batch": int(skipped), "skipped_streak": totals.skipped_streak,
        "stalled_streak": totals.stalled_streak,
        "collapsed": int(collapsed),  # the run stops after this iteration
        "policy_version": policy_version,
        "trajectories_total": totals.trajectories,
        "env_runner_restarts": restarts,
        "healthy_env_runners": healthy_runners,
        "rows_in_flight": max(s.rows for s in samples),  # per runner: env.batch_size or the memory plan's
        "runner_peak_memory_gib": max(s.peak_memory_bytes for s in samples) / 2**30,  # the GPU's, torch's allocator
    }
    report.update(group_spread(collected))
    report.update({f"collapse_{kind}": int(seen == kind) for kind in COLLAPSES})  # collapse_seen's verdict
    if experts:
        report.update({f"expert_{key}": float(np.mean(collected.per_trajectory(field, experts=True)))
                       for key, field in (("reward_mean", "reward"), ("accuracy", "correct"), ("nfe_mean", "nfe"))})
    return report
