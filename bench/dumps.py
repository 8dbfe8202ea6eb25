"""What the trajectory dumps cost the training loop per iteration, before and after they moved off its critical path,
side by side in one run.

    python bench/dumps.py [repeats=5] [rest=1.5]

One iteration's arrivals shaped like LLaDA-8B on GSM8K training at L = 256: 8 prompts x G = 8 trajectories from two
runners (4 prompts each), T = L = 256 steps padded, 100-200 steps taken per trajectory, with the paper's input alone
(no extra_inputs) and with two extra inputs (stable_steps-like and confidence_delta-like); synthetic but shaped like
real ones (each position unmasked once, in order), so Parquet compresses them about as it would.

BEFORE: the per-row to_arrow of commit e1b45e8 (rollout/trajectories.py, loaded from git) and the synchronous write,
both in the loop (what RunOutputs.write did). AFTER: the columnar to_arrow and DumpWriter.submit, which is all the loop
waits for; the write runs on the writer's thread while the loop sleeps `rest` seconds, standing in for the next
iteration's collect and update (tens of seconds on LLaDA-8B, spent waiting on other processes). After the rest,
`flush` says whether the writer kept up. Medians of `repeats` iterations, after one untimed.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import module_from_git

from unmask.rollout.trajectories import DumpWriter, TrajectoryBatch

OLD_COMMIT = "e1b45e8"
PROMPTS, G, L, RUNNERS = 8, 8, 256, 2


def per_row_module(tmp: Path):
    """rollout/trajectories.py as of OLD_COMMIT, from git (the per-row to_arrow)."""
    module = module_from_git(OLD_COMMIT, "rollout/trajectories.py", tmp)
    if module is None:
        sys.exit(f"bench/dumps.py needs git and commit {OLD_COMMIT} (the per-row to_arrow it compares against)")
    return module


def runner_batch(rng: np.random.Generator, runner: int, extra: int) -> TrajectoryBatch:
    """One runner's sample: PROMPTS / RUNNERS prompts x G trajectories, each position unmasked once, in order."""
    n = PROMPTS // RUNNERS * G
    nfe = rng.integers(100, 201, n).astype(np.int32)
    steps = np.arange(L)[None, :, None]
    unmask_at = np.sort(rng.random((n, L)) * nfe[:, None], axis=1).astype(np.int64)[:, None, :]  # [n, 1, L]
    taken = steps < nfe[:, None, None]
    mask = (steps <= unmask_at) & taken
    held = np.minimum(steps, unmask_at) / L  # stable_steps-like: whole forwards / L
    extra_inputs = np.stack([held, rng.standard_normal((n, L, L)) * 0.1], axis=-1)[..., :extra] * taken[..., None]
    return TrajectoryBatch(
        confidences=(rng.random((n, L, L)) * taken).astype(np.float32), extra_inputs=extra_inputs.astype(np.float32),
        mask=mask, abandoned=np.zeros((n, L, L), bool), valid=mask, action=(steps == unmask_at) & taken,
        t=(1 - np.arange(L) / L * np.ones((n, 1))).astype(np.float32), logp=-rng.random((n, L), np.float32),
        final_abandoned=np.zeros((n, L), bool), reward=rng.random(n, np.float32), correct=rng.random(n) < 0.7,
        nfe=nfe, sample_id=np.tile(np.arange(G, dtype=np.int32), n // G), expert=np.zeros(n, bool),
        alpha=np.ones(n, np.float32), prompt_id=[f"gsm8k-train-{runner * 100 + i // G}" for i in range(n)],
        group_id=[f"r{runner}-g{i // G}" for i in range(n)], completion=["The answer is 72."] * n,
        env_runner=runner, policy_version=3)


def before(old, batches: list[TrajectoryBatch], logps: list[np.ndarray], folder: Path) -> tuple[float, float]:
    """The old RunOutputs.write's dumps: per-row to_arrow, then the synchronous write; (to_arrow s, write s)."""
    start = time.perf_counter()
    tables = [old.TrajectoryBatch.to_arrow(b, "run", 1, True, logp) for b, logp in zip(batches, logps)]
    converted = time.perf_counter()
    for b, table in zip(batches, tables):
        old.write_parquet_atomic(table, folder / f"runner_{b.env_runner:03d}.parquet")
    return converted - start, time.perf_counter() - converted


def after(writer: DumpWriter, batches: list[TrajectoryBatch], logps: list[np.ndarray], folder: Path
          ) -> tuple[float, float]:
    """RunOutputs.write's dumps now: columnar to_arrow, then hand the table over; (to_arrow s, submit s)."""
    start = time.perf_counter()
    tables = [b.to_arrow("run", 1, True, logp) for b, logp in zip(batches, logps)]
    converted = time.perf_counter()
    for b, table in zip(batches, tables):
        writer.submit(table, folder / f"runner_{b.env_runner:03d}.parquet")
    return converted - start, time.perf_counter() - converted


def megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.iterdir()) / 1e6


def main(argv: list[str]) -> None:
    a = {"repeats": "5", "rest": "1.5"} | dict(arg.split("=", 1) for arg in argv)
    repeats, rest = int(a["repeats"]), float(a["rest"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old = per_row_module(tmp)
        print(f"{PROMPTS} prompts x G = {G} from {RUNNERS} runners, L = T = {L}, 100-200 steps taken; median of "
              f"{repeats}, ms of the training loop per iteration (AFTER: the write runs during a {rest:g} s rest)")
        for extra in (0, 2):
            rng = np.random.default_rng(extra)
            batches = [runner_batch(rng, r, extra) for r in range(1, RUNNERS + 1)]
            logps = [rng.standard_normal((len(b), L)).astype(np.float32) for b in batches]
            rows = sum(int(b.nfe.sum()) for b in batches)
            old_s, new_s, kept_up = [], [], []
            writer = DumpWriter()
            for i in range(repeats + 1):  # the first is untimed
                old_folder, new_folder = tmp / f"before_{extra}_{i}", tmp / f"after_{extra}_{i}"
                old_s.append(before(old, batches, logps, old_folder))
                new_s.append(after(writer, batches, logps, new_folder))
                time.sleep(rest)
                start = time.perf_counter()
                writer.flush()
                kept_up.append(time.perf_counter() - start)
            writer.close()
            same = all((old_folder / f.name).read_bytes() == f.read_bytes() for f in new_folder.iterdir())
            mb = megabytes(new_folder)
            (old_arrow, old_write), (new_arrow, submit) = ([statistics.median(s[j] for s in times[1:]) * 1e3
                                                            for j in range(2)] for times in (old_s, new_s))
            old_total, new_total = old_arrow + old_write, new_arrow + submit
            print(f"\nextra_inputs with {extra} features: {rows} rows, {mb:.1f} MB of Parquet per iteration "
                  f"(files byte-identical before/after: {'yes' if same else 'NO'})")
            print(f"  BEFORE  to_arrow {old_arrow:7.1f} ms + write  {old_write:7.1f} ms = {old_total:7.1f} ms")
            print(f"  AFTER   to_arrow {new_arrow:7.1f} ms + submit {submit:7.1f} ms = {new_total:7.1f} ms")
            print(f"  ratio   to_arrow {old_arrow / new_arrow:6.1f}x faster, the loop's dump time "
                  f"{old_total / new_total:6.1f}x shorter; flush after the rest waited "
                  f"{statistics.median(kept_up[1:]) * 1e3:.1f} ms (~0: the writer kept up)")


if __name__ == "__main__":
    main(sys.argv[1:])
