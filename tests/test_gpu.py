"""The GPU tier (`pytest -m gpu`): what only a CUDA device can show. Skipped, with its reason, without one
(tests/conftest.py); bench/gpu_validation.py measures the same at full size (docs/results/gpu-validation.md)."""

import json
import subprocess
import sys

import pytest
import torch

from tests.native_checkpoints import write_gsm8k, write_llada

pytestmark = pytest.mark.gpu


def test_eval_puts_the_model_straight_onto_the_gpu_in_bfloat16(tmp_path):
    model = write_llada(tmp_path / "llada")
    res = subprocess.run([sys.executable, "-m", "unmask.cli", "eval", f"model={model}", "task=gsm8k",
                          f"task.path={write_gsm8k(tmp_path / 'gsm8k')}", "env.gen_length=16", "env.block_length=8",
                          "num_examples=4", f"out_dir={tmp_path}", "progress=false"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    placement = json.loads((tmp_path / "eval.json").read_text())["placement"]
    assert placement["device"].startswith("cuda") and placement["dtype"] == "bfloat16"
    assert placement["loaded_onto_device"]


def test_an_unpadded_forward_syncs_nothing_with_the_host(tmp_path):
    from unmask.envs.dllm import load_dllm

    dllm = load_dllm(str(write_llada(tmp_path / "llada")), device="cuda")
    ids = torch.randint(2, 90, (4, 24), device="cuda")
    dllm.logits(ids, None, last=16)  # warm-up: kernels and the allocator
    torch.cuda.set_sync_debug_mode("error")
    try:
        logits = dllm.logits(ids, None, last=16)  # no mask: SDPA may take its flash kernel
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert logits.shape[:2] == (4, 16)


def test_the_memory_plan_matches_a_step_s_peak_on_the_gpu(tmp_path):
    from unmask.envs.config import EnvConfig
    from unmask.envs.dllm import load_dllm
    from unmask.envs.mdp import UnmaskingEnv
    from unmask.envs.memory import plan_for

    dllm = load_dllm(str(write_llada(tmp_path / "llada")), device="cuda")
    env_cfg = EnvConfig(gen_length=64, block_length=8)
    prompts = [list(range(2 + i, 22 + i)) for i in range(32)]  # distinct: no shared first forward
    env = UnmaskingEnv.from_config(dllm, env_cfg)
    env.reset(prompts[:1])
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    env.reset(prompts)
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - before
    planned = plan_for(dllm, env_cfg, prompt_length=20).step_bytes(32, first_step=True)
    assert 0.8 <= measured / planned <= 1.2, (measured, planned)
