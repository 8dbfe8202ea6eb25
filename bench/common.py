"""What the real-model benchmarks share: a random-weight LLaDA- or Dream-shaped checkpoint that loads
through `load_dllm` like a released one, and one timed decode of a batch in the env."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import torch

from unmask.envs.config import SamplerConfig
from unmask.envs.mdp import UnmaskingEnv
from unmask.envs.models import DreamConfig, DreamModel, LLaDAConfig, LLaDAModelLM
from unmask.rollout.samplers import make_sampler


def random_checkpoint(out: str, arch: str, layers: int, d_model: int, vocab: int, head_dim: int, mlp_hidden: int,
                      dtype: torch.dtype = torch.float32) -> str:
    """A randomly initialised checkpoint (weights do not change the cost of a forward) with a character
    tokenizer padded to the full vocabulary, so every id decodes and text prompts encode. EOS = 0, mask = 1."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|mdm_mask|>"]
    table = {t: i for i, t in enumerate(specials + [chr(c) for c in range(32, 127)])}
    table |= {f"<t{i}>": i for i in range(len(table), vocab)}
    backend = Tokenizer(models.WordLevel(table, unk_token=specials[0]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=specials[0], pad_token=specials[0],
                                  mask_token=specials[1])
    heads = max(1, d_model // head_dim)
    ids = {"mask_token_id": 1, "eos_token_id": 0, "pad_token_id": 0}
    if arch == "llada":
        model = LLaDAModelLM(LLaDAConfig(d_model=d_model, n_heads=heads, n_kv_heads=heads, n_layers=layers,
                                         mlp_hidden_size=mlp_hidden, vocab_size=vocab, embedding_size=vocab, **ids))
    elif arch == "dream":
        model = DreamModel(DreamConfig(hidden_size=d_model, num_attention_heads=heads,
                                       num_key_value_heads=max(1, heads // 4), num_hidden_layers=layers,
                                       intermediate_size=mlp_hidden, vocab_size=vocab, bos_token_id=0, **ids))
    else:
        raise ValueError(f"unknown arch {arch!r}: use llada or dream")
    model.to(dtype).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def random_prompts(batch: int, tokens: int, seed: int = 0) -> list[list[int]]:
    """Prompts of printable-character ids (never EOS or mask)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 97, (tokens,), generator=g).tolist() for _ in range(batch)]


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed_decode(dllm, prompts, gen_length: int, block_length: int, steps: int, kv_cache: str
                 ) -> tuple[float, UnmaskingEnv]:
    """Seconds for one batch of episodes with LLaDA's even schedule (L/steps tokens per forward), and the
    finished env (its `nfe` per row; `nfe.max()` = forwards of the batch)."""
    env = UnmaskingEnv(dllm, gen_length, block_length, kv_cache=kv_cache)
    sampler = make_sampler(SamplerConfig(name="top_k", steps=steps))
    synchronize(dllm.device)
    start = time.perf_counter()
    obs = env.reset(prompts)
    while not env.done:
        obs = env.step(sampler.select(obs))
    synchronize(dllm.device)
    return time.perf_counter() - start, env


def module_from_git(commit: str, relative: str, folder: Path):
    """The module at `relative` (e.g. rollout/trajectories.py) as of `commit`, loaded from git under the name
    `old_<stem>` (an implementation a benchmark or test compares against, not a copy kept in the package); None
    without git or that commit (an installed package)."""
    root = Path(__file__).resolve().parents[1]
    try:
        source = subprocess.run(["git", "-C", str(root), "show", f"{commit}:{relative}"], capture_output=True,
                                text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = folder / f"old_{Path(relative).stem}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # @dataclass looks its module up while the class is made
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module
