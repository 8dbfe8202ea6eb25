"""What `unmask train` and `unmask sweep` print: one line per iteration instead of Tune's status table."""

from __future__ import annotations

import sys

from ray.tune import Callback

COLLAPSE_WARNING_STREAK = 3  # skipped updates in a row before the console says so


class ProgressPrinter(Callback):
    def __init__(self, label_trials: bool = False):
        self.label_trials = label_trials  # sweeps: prefix each line with the trial

    def on_trial_result(self, iteration, trials, trial, result, **info):
        m = result.get("unmask", {})
        if m:
            prefix = f"{trial}  " if self.label_trials else ""
            print(f"{prefix}iter {result['training_iteration']:4d}  reward {m['reward_mean']:.3f}  "
                  f"acc {m['accuracy']:.3f}  nfe {m['nfe_mean']:.2f}  traj/s {m['trajectories_per_s']:.1f}  "
                  f"busy {m['env_runner_busy_fraction']:.2f}  lag {m['staleness_mean']:.2f}  "
                  f"flat {m.get('flat_groups', 0):.2f}  "
                  f"v{int(m['policy_version'])}  {result['time_total_s']:.0f}s", flush=True)
            streak, stalled = int(m.get("skipped_streak", 0)), int(m.get("stalled_streak", 0))
            if streak >= COLLAPSE_WARNING_STREAK:
                print(f"{prefix}WARNING: {streak} updates in a row skipped, every advantage 0 (reward "
                      f"{m['reward_mean']:.3f}, NFE {m['nfe_mean']:.2f}): the policy is not learning; if NFE is "
                      "at L it has collapsed to unmasking nothing", file=sys.stderr, flush=True)
            elif stalled >= COLLAPSE_WARNING_STREAK:
                print(f"{prefix}WARNING: {stalled} iterations in a row every policy rollout spent the whole forward "
                      f"budget and solved nothing (NFE {m['nfe_mean']:.2f}): the policy has collapsed to unmasking "
                      "(almost) nothing", file=sys.stderr, flush=True)
