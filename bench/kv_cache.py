"""Benchmark: Fast-dLLM's prefix and dual KV caches vs full forwards, same model and prompts, side by side.

    python bench/kv_cache.py [arch=llada] [model=<dir>] [layers=8] [d_model=512] [vocab=32768]
        [prompt_tokens=128] [gen_length=256] [block_length=32] [steps=64] [batch=4] [device=cpu] [dtype=float32]

Without `model=` it writes a randomly initialised LLaDA- or Dream-shaped checkpoint of the given size
(weights do not change the cost of a forward) and loads it through `load_dllm`, as `unmask eval` would.
Prints env steps/s (one step = one dLLM forward for the batch), tokens/s and NFE/s per mode and the ratios
to full forwards; the prefix cache's goal is >= 2x at L=256, BL=32. Absolute figures only mean something
on the machine that printed them; on a GPU pass device=cuda dtype=bfloat16.
"""

from __future__ import annotations

import sys
import tempfile
import time

import torch

from envs.config import SamplerConfig
from envs.dllm import load_dllm
from envs.mdp import UnmaskingEnv
from envs.models import DreamConfig, DreamModel, LLaDAConfig, LLaDAModelLM


def random_checkpoint(arch: str, layers: int, d_model: int, vocab: int, out: str) -> str:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokens = {f"t{i}": i for i in range(vocab - 3)} | {"<eos>": vocab - 3, "<mask>": vocab - 2, "<unk>": vocab - 1}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(tokens, unk_token="<unk>")),
                                  eos_token="<eos>", pad_token="<eos>", mask_token="<mask>", unk_token="<unk>")
    heads = max(1, d_model // 64)
    ids = {"mask_token_id": vocab - 2, "eos_token_id": vocab - 3, "pad_token_id": vocab - 3}
    if arch == "llada":
        model = LLaDAModelLM(LLaDAConfig(d_model=d_model, n_heads=heads, n_kv_heads=heads, n_layers=layers,
                                         mlp_hidden_size=int(d_model * 8 / 3), vocab_size=vocab,
                                         embedding_size=vocab, **ids))
    else:
        model = DreamModel(DreamConfig(hidden_size=d_model, num_attention_heads=heads,
                                       num_key_value_heads=max(1, heads // 4), num_hidden_layers=layers,
                                       intermediate_size=int(d_model * 16 / 3), vocab_size=vocab,
                                       bos_token_id=vocab - 3, **ids))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def run(dllm, prompts, gen_length, block_length, steps, cache: str) -> tuple[float, int, torch.Tensor]:
    """Seconds and forwards of one batch of episodes with LLaDA's even schedule (steps/L tokens per forward)."""
    from envs.samplers import make_sampler

    env = UnmaskingEnv(dllm, gen_length, block_length, kv_cache=cache)
    sampler = make_sampler(SamplerConfig(name="top_k", steps=steps))
    if dllm.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    obs, forwards = env.reset(prompts), 1
    while not env.done:
        obs = env.step(sampler.select(obs))
        forwards += 0 if env.done else 1
    if dllm.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, forwards, env.canvas()


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    arch, device, dtype = args.get("arch", "llada"), args.get("device", "cpu"), args.get("dtype", "float32")
    L, BL, steps = int(args.get("gen_length", 256)), int(args.get("block_length", 32)), int(args.get("steps", 64))
    batch, prompt_tokens = int(args.get("batch", 4)), int(args.get("prompt_tokens", 128))
    with tempfile.TemporaryDirectory() as tmp:
        path = args.get("model") or random_checkpoint(arch, int(args.get("layers", 8)), int(args.get("d_model", 512)),
                                                      int(args.get("vocab", 32768)), tmp)
        dllm = load_dllm(path, device=device, dtype=dtype, chat_template="off")
    params = sum(p.numel() for p in dllm.model.parameters())
    g = torch.Generator().manual_seed(0)
    vocab = dllm.model.config.vocab_size
    prompts = [torch.randint(0, min(vocab, dllm.mask_id), (prompt_tokens,), generator=g).tolist() for _ in range(batch)]
    print(f"{type(dllm.model).__name__} {params / 1e6:.1f}M params, device={device} dtype={dtype} "
          f"threads={torch.get_num_threads()}; batch={batch} prompt={prompt_tokens} L={L} BL={BL} steps={steps}")
    run(dllm, prompts, L, BL, 2 * (L // BL), cache="dual")  # warm-up
    results = {}
    for cache in ("none", "prefix", "dual"):
        seconds, forwards, _ = run(dllm, prompts, L, BL, steps, cache)
        results[cache] = forwards / seconds
        print(f"kv_cache={cache:<7} {seconds:8.2f} s  {forwards:4d} env steps  "
              f"{forwards / seconds:7.2f} env steps/s  {batch * L / seconds:9.1f} tokens/s  "
              f"{batch * forwards / seconds:7.2f} NFE/s")
    print(f"-> speed-up over full forwards: prefix {results['prefix'] / results['none']:.2f}x (goal >= 2x), "
          f"dual {results['dual'] / results['none']:.2f}x env steps/s")


if __name__ == "__main__":
    main(sys.argv[1:])
