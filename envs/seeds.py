"""One seeding of a process's global random number generators (Python's, NumPy's, torch's), for the processes of a
training run: the learner's (its policy's initial weights) and each env runner's.

RLlib's own `debugging(seed=...)` seeds the same three, but on a CPU build of torch it also switches the whole process
to `torch.use_deterministic_algorithms(True)` (importing torch's compiler stack, ~1 CPU-second per process). Our
randomness is explicit (generators seeded per runner, per prompt), so the global seeds are all a run needs."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_globals(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
