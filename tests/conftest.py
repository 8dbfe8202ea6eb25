"""Shared fixtures: a tiny, randomly initialised dLLM saved in HF format (no hub access needed)."""

from __future__ import annotations

import os

import pytest
import torch

from unmask.envs.dllm import load_dllm
from unmask.envs.pretrain.config import ModelSize
from unmask.envs.pretrain.model import new_builtin_model
from unmask.envs.tasks.cycles import CycleTask
from unmask.envs.tokenizer import build_char_tokenizer

# Ray starts its workers at nice 15, yielding to everything else on the machine: with the slow tier's test files side by
# side on a small machine, one test's actors then starve behind another test's own process for minutes. The suite runs
# them at the same priority (every Ray this session starts, in-process or in a subprocess, inherits it).
os.environ.setdefault("RAY_worker_niceness", "0")
# Nor does a Ray the suite starts prestart idle workers for its first driver: most of them were never used (on a 2-core
# machine a few CPU-seconds per Ray start); an actor or task starts its worker when it needs one, as without them.
os.environ.setdefault("RAY_prestart_worker_first_driver", "0")

# Side by side (the slow tier's worker processes, `-n`) the cores are shared already: each test process, and what it
# starts (CLI subprocesses, job drivers; Ray's actors take one thread of their own), runs torch on one thread. A second
# thread mostly spins on these small tensors: the fast tier took 100 CPU-seconds on two threads, 61 on one.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

TINY = ModelSize(hidden_size=32, num_layers=1, num_heads=2, ffn_size=64)


def save_tiny_model(path, max_positions: int = 64, texts=("abcdefghij?<>",), seed: int = 0):
    torch.manual_seed(seed)
    tok = build_char_tokenizer(texts)
    ids = {"pad": tok.pad_token_id, "mask": tok.mask_token_id, "eos": tok.eos_token_id}
    model = new_builtin_model(len(tok), max_positions, TINY, ids)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny_dllm")))


@pytest.fixture(scope="session")
def tiny_dllm(tiny_model_dir):
    return load_dllm(tiny_model_dir)


@pytest.fixture(scope="session")
def cycles():
    return CycleTask(num_symbols=10)


@pytest.fixture
def local_ray():
    """One local Ray for every test that needs one: started at first use and kept for the session (a test that needs
    a cluster of its own shuts it down; the next test that asks starts it again)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield


@pytest.fixture
def no_ray():
    """No Ray is running in this process (a test that checks a command starts none)."""
    import ray

    ray.shutdown()
    yield


def pytest_addoption(parser):
    parser.addoption("--external", action="store_true",
                     help="run the external tier: parity with the official model code "
                          "(docs/development/tests.md: Parity)")


# The slow tier's longest files (each alone: ~60-120 s of wall), which scripts/test.sh starts first: started last,
# by xdist's default order (most tests first), one of them ran alone at the end while the other workers sat idle.
LONGEST_FIRST = ("test_reproduce.py", "test_train.py", "test_cluster_ready.py", "test_rllib_api.py", "test_sweep.py",
                 "test_resume.py", "test_jobs.py")


def pytest_collection_modifyitems(config, items):
    """The GPU tier (`gpu`) skips, with its reason, where torch sees no CUDA device. The external tier needs files from
    outside the repository: it runs only when asked (--external), and then fails, never skips, without them. The
    longest files come first (LONGEST_FIRST; scripts/test.sh keeps this order with --no-loadscope-reorder)."""
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file, and of the other files, stays
    gpu_tests = [item for item in items if "gpu" in item.keywords]
    if gpu_tests:
        import torch

        if not torch.cuda.is_available():
            skip = pytest.mark.skip(reason="no CUDA device: the GPU tier runs on a GPU machine (pytest -m gpu)")
            for item in gpu_tests:
                item.add_marker(skip)
    if config.getoption("--external"):
        return
    kept = [item for item in items if "external" not in item.keywords]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if "external" in item.keywords])
        items[:] = kept


def pytest_sessionfinish(session, exitstatus):
    import sys

    if "ray" in sys.modules:
        sys.modules["ray"].shutdown()
