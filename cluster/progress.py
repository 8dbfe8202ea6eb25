"""What `unmask train` and `unmask sweep` print: one line per iteration instead of Tune's status table."""

from __future__ import annotations

import sys

from ray.tune import Callback

from unmask.cluster.metrics import stalled_why

COLLAPSE_WARNING_STREAK = 3  # skipped or stuck iterations in a row before the console says so
COLLAPSE_WARNING_EVERY = 25  # ... and again every this many while the streak lasts (not every iteration)


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
                  f"flat {m.get('flat_groups', 0):.2f}  same {m.get('identical_groups', 0):.2f}  "
                  f"v{int(m['policy_version'])}  {result['time_total_s']:.0f}s", flush=True)
            if result["training_iteration"] == 1:
                print(f"{prefix}rows in flight per env runner: {int(m.get('rows_in_flight', 0))} (env.batch_size, or "
                      "the memory plan's)", flush=True)
            validated, it = m.get("validation_iteration"), result["training_iteration"]
            if validated == validated and validated is not None and (validated == it or validated == 0 and it == 1):
                best = " -> checkpoints/best" if m.get("validation_best") else ""
                print(f"{prefix}validation after iteration {int(validated)}: reward {m['validation_reward']:.3f}  "
                      f"acc {m['validation_accuracy']:.3f}  nfe {m['validation_nfe']:.2f}{best}", flush=True)
            streak = max(int(m.get("skipped_streak", 0)), int(m.get("stalled_streak", 0)))
            if streak == COLLAPSE_WARNING_STREAK or streak > 0 and streak % COLLAPSE_WARNING_EVERY == 0:
                print(f"{prefix}WARNING: {stalled_why(m)}", file=sys.stderr, flush=True)
