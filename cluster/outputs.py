"""What a run leaves in its directory, iteration by iteration (Tune writes its own metrics and checkpoints beside):

    trajectories/iter_<k>/runner_<r>.parquet   every trajectory that arrived in iteration k (rollout.trajectories)
    checkpoints/policy_<version>_iter_<k>/     the policy every `checkpoint_every` iterations: its version, and the
                                               iteration k after which it was saved
    checkpoints/best/                          the policy after the iteration that ends the best `best_window`-iteration
                                               moving average of training reward (the paper's checkpoint-best), or,
                                               with `validate_every`, the best held-out validation reward
    checkpoints/final/                         the policy when the run stops, whatever stopped it (the algorithm's)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from unmask.cluster.collector import Collected
from unmask.cluster.config import OutputSettings
from unmask.envs.files import DiskFull, existing_ancestor
from unmask.rollout.trajectories import DumpWriter

DISK_HEADROOM = 64 << 20  # free bytes a run keeps in hand (RunOutputs.check_disk)
SavePolicy = Callable[..., Path]  # (out, iteration, **extra recorded in its config.json) -> out


class RunOutputs:
    """The run's directory, iteration by iteration. Dumps go to a DumpWriter's thread (written while the next iteration
    runs), policy checkpoints are written at once; `flush()` waits for the dumps, `close()` too and ends the thread."""

    def __init__(self, run_dir: Path | None, run_id: str, settings: OutputSettings, save_policy: SavePolicy):
        self.run_dir, self.run_id, self.settings, self.save_policy = run_dir, run_id, settings, save_policy
        self.dumps: DumpWriter | None = None  # started at the first dump
        self.last_bytes = 0  # what the last iteration's dumps took (in Arrow: about their size on disk)
        self.recent: list[tuple[float, float, float]] = []  # (reward, accuracy, NFE) of the last best_window iterations
        self.best_reward = -float("inf")  # the best moving average so far (checkpoints/best holds its policy)

    def write(self, collected: Collected, trained_logp: list[np.ndarray | None], iteration: int, version: int) -> None:
        """Iteration `iteration`'s dumps (trained_logp: per arrival, the proximal log-probs the learner trained it
        against, None if not trained on), its periodic checkpoint, and checkpoints/best if it ends a new best. The
        dumps are handed to the writer's thread; an earlier dump that failed is raised here (OSError)."""
        if self.run_dir is None:
            return
        if self.settings.dump_trajectories:
            by_runner: dict[int, list[pa.Table]] = {}
            for arrival, old_logp in zip(collected.arrivals, trained_logp, strict=True):
                batch = arrival.sample.trajectories
                table = batch.to_arrow(self.run_id, iteration, arrival.used, old_logp)
                by_runner.setdefault(batch.env_runner, []).append(table)
            folder = self.run_dir / "trajectories" / f"iter_{iteration:06d}"
            if self.dumps is None:
                self.dumps = DumpWriter()
            self.last_bytes = 0
            for runner, tables in by_runner.items():
                table = pa.concat_tables(tables)
                self.last_bytes += table.nbytes
                self.dumps.submit(table, folder / f"runner_{runner:03d}.parquet")
        checkpoints = self.run_dir / "checkpoints"
        if self.settings.checkpoint_every and iteration % self.settings.checkpoint_every == 0:
            self.save_policy(checkpoints / f"policy_{version:06d}_iter_{iteration:06d}", iteration)
        if self.settings.best_window and not self.settings.validate_every:
            self.keep_best(collected, checkpoints / "best", iteration)

    def keep_validated(self, validation: dict, iteration: int) -> bool:
        """checkpoints/best by held-out validation: the policy with the best validation reward so far (True: this one
        became it)."""
        if self.run_dir is None or validation["reward"] <= self.best_reward:
            return False
        self.best_reward = validation["reward"]
        self.save_policy(self.run_dir / "checkpoints" / "best", iteration, best={"validation": validation})
        return True

    def keep_best(self, collected: Collected, out: Path, iteration: int) -> None:
        """Once `best_window` iterations are in, the policy after the iteration that ends the best moving average of
        training reward so far, with that average's accuracy and NFE beside it, so a run's output is never worse
        than its best point (e.g. when it later collapses)."""
        window = self.settings.best_window
        self.recent = [*self.recent, tuple(float(np.mean(collected.per_trajectory(key)))  # the policy's own
                                           for key in ("reward", "correct", "nfe"))][-window:]
        if len(self.recent) < window:
            return
        reward, accuracy, nfe = (float(np.mean(column)) for column in zip(*self.recent))
        if reward > self.best_reward:
            self.best_reward = reward
            self.save_policy(out, iteration, best={"window": window, "reward_mean": reward,
                                                   "accuracy": accuracy, "nfe_mean": nfe})

    def check_disk(self) -> None:
        """Stop before the disk is full: below DISK_HEADROOM (and eight iterations' dumps) of free space the run raises
        DiskFull before it writes anything more, so that its last checkpoint, Tune's state and the seal are all whole
        (a disk that fills in the middle of Tune's own writes can leave nothing to resume from)."""
        if self.run_dir is None:
            return
        # before its first write the run's directory may not exist yet: its disk is its nearest existing parent's
        free, need = shutil.disk_usage(existing_ancestor(self.run_dir)).free, DISK_HEADROOM + 8 * self.last_bytes
        if free < need:
            raise DiskFull(f"the disk of {self.run_dir} has {free / 2**20:.0f} MiB free, under the {need / 2**20:.0f} "
                           "MiB a run keeps in hand for its checkpoints: it stopped before writing more (free some "
                           "space and resume)")

    def flush(self) -> None:
        """Wait until every dump handed over is on disk (a failed one is raised: OSError)."""
        if self.dumps is not None:
            self.dumps.flush()

    def close(self) -> None:
        """Flush and end the writer's thread (a later write starts a new one)."""
        dumps, self.dumps = self.dumps, None
        if dumps is not None:
            dumps.close()

    def get_state(self) -> dict:
        """Flushes first: a checkpoint is never taken while dumps of the iterations it covers are still in flight."""
        self.flush()
        return {"recent": list(self.recent), "reward": self.best_reward}

    def set_state(self, state: dict) -> None:
        self.recent, self.best_reward = list(state["recent"]), state["reward"]
