"""Shared fixtures: a tiny, randomly initialised dLLM saved in HF format (no hub access needed)."""

from __future__ import annotations

import pytest
import torch

from envs.dllm import load_dllm
from envs.pretrain.config import ModelSize
from envs.pretrain.model import new_builtin_model
from envs.tasks.cycles import CycleTask
from envs.tokenizer import build_char_tokenizer

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
