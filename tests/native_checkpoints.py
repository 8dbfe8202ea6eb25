"""Tiny random-weight checkpoints in the official LLaDA and Dream layouts, written WITHOUT our model code.

The parameter names, config.json fields and shard/index layout follow the released GSAI-ML/LLaDA-8B-Instruct
and Dream-org/Dream-v0-Instruct-7B files (only the sizes are small), so loading them through
`load_dllm` proves that the released checkpoints would load: every tensor lands in the native model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer

LLADA_SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<|mdm_mask|>"]
LLADA_TEMPLATE = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>"
    "\\n\\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + "
    "content %}{% endif %}{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
)
DREAM_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHARS = [chr(c) for c in range(32, 127)] + ["\n"]


def llada_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {ch: i for i, ch in enumerate(CHARS)}
    for token in LLADA_SPECIALS:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", mask_token="<|mdm_mask|>")
    tok.add_special_tokens({"additional_special_tokens": LLADA_SPECIALS[2:5]})
    tok.chat_template = LLADA_TEMPLATE
    return tok


def dream_tokenizer() -> Qwen2Tokenizer:
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, bos_token=None)  # <|endoftext|> = eos = pad
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "mask_token": "<|mask|>"})
    tok.chat_template = DREAM_TEMPLATE
    return tok


def random_tensors(seed: int, dtype: torch.dtype):
    """`rand(*shape, scale=0.08)`: small seeded random weights in `dtype`."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.08):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    return rand


def save_sharded(path: Path, tensors: dict[str, torch.Tensor], shards: int = 2) -> None:
    """Safetensors shards plus `model.safetensors.index.json`, as the released checkpoints are stored."""
    names = sorted(tensors)
    weight_map, total = {}, 0
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n].contiguous() for n in names[i::shards]}
        save_file(part, str(path / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_llada(path, d=64, heads=4, layers=2, mlp=96, seed=0, dtype=torch.float32) -> Path:
    """An LLaDA-8B-shaped checkpoint scaled down: same keys, same config fields (with the remote-code
    `auto_map` the released file has), mask id = the tokenizer's `<|mdm_mask|>`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = llada_tokenizer()
    tok.save_pretrained(path)
    vocab = len(tok) + 3  # the released embedding is padded past the tokenizer's last id too
    rand = random_tensors(seed, dtype)
    t = {"model.transformer.wte.weight": rand(vocab, d, scale=1.0), "model.transformer.ln_f.weight": 1 + rand(d),
         "model.transformer.ff_out.weight": rand(vocab, d)}
    for i in range(layers):
        b = f"model.transformer.blocks.{i}."
        t |= {b + "attn_norm.weight": 1 + rand(d), b + "q_proj.weight": rand(d, d), b + "k_proj.weight": rand(d, d),
              b + "v_proj.weight": rand(d, d), b + "attn_out.weight": rand(d, d), b + "ff_norm.weight": 1 + rand(d),
              b + "ff_proj.weight": rand(mlp, d), b + "up_proj.weight": rand(mlp, d), b + "ff_out.weight": rand(d, mlp)}
    save_sharded(path, t)
    config = {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": d,
        "embedding_dropout": 0.0, "embedding_size": vocab, "eos_token_id": tok.eos_token_id, "flash_attention": False,
        "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
        "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
        "layer_norm_with_affine": True, "mask_token_id": tok.mask_token_id, "max_sequence_length": 4096,
        "mlp_hidden_size": mlp, "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None,
        "n_heads": heads, "n_kv_heads": heads, "n_layers": layers, "pad_token_id": tok.pad_token_id,
        "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True,
        "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False,
        "transformers_version": "4.46.3", "use_cache": False, "vocab_size": vocab, "weight_tying": False,
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def write_dream(path, d=64, heads=4, kv_heads=2, layers=2, ffn=96, seed=0, dtype=torch.float32) -> Path:
    """A Dream-v0-7B-shaped checkpoint scaled down (GQA, q/k/v biases, untied head), with the released
    tokenizer_config's remote `DreamTokenizer` class name."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = dream_tokenizer()
    tok.save_pretrained(path)
    tok_config = json.loads((path / "tokenizer_config.json").read_text())
    tok_config |= {"tokenizer_class": "DreamTokenizer",
                   "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]}}
    (path / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    vocab, kv = len(tok) + 4, kv_heads * (d // heads)
    rand = random_tensors(seed, dtype)
    t = {"model.embed_tokens.weight": rand(vocab, d, scale=1.0), "model.norm.weight": 1 + rand(d),
         "lm_head.weight": rand(vocab, d)}
    for i in range(layers):
        b = f"model.layers.{i}."
        t |= {b + "input_layernorm.weight": 1 + rand(d), b + "post_attention_layernorm.weight": 1 + rand(d),
              b + "self_attn.q_proj.weight": rand(d, d), b + "self_attn.q_proj.bias": rand(d),
              b + "self_attn.k_proj.weight": rand(kv, d), b + "self_attn.k_proj.bias": rand(kv),
              b + "self_attn.v_proj.weight": rand(kv, d), b + "self_attn.v_proj.bias": rand(kv),
              b + "self_attn.o_proj.weight": rand(d, d), b + "mlp.gate_proj.weight": rand(ffn, d),
              b + "mlp.up_proj.weight": rand(ffn, d), b + "mlp.down_proj.weight": rand(d, ffn)}
    save_sharded(path, t)
    eos = tok.eos_token_id
    config = {
        "architectures": ["DreamModel"], "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": eos, "eos_token_id": eos, "hidden_act": "silu", "hidden_size": d, "initializer_range": 0.02,
        "intermediate_size": ffn, "mask_token_id": tok.mask_token_id, "max_position_embeddings": 131072,
        "max_window_layers": layers, "model_type": "Dream", "num_attention_heads": heads,
        "num_hidden_layers": layers, "num_key_value_heads": kv_heads, "pad_token_id": eos, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.46.2", "use_cache": False, "use_mrope": False,
        "use_sliding_window": False, "vocab_size": vocab,
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def saved_tensors(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for file in sorted(Path(path).glob("model-*.safetensors")):
        out |= load_file(str(file))
    return out


def write_gsm8k(path, n: int = 6) -> Path:
    """A GSM8K-format directory (train.jsonl, test.jsonl) of small word problems."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for split, offset in (("train", 0), ("test", 100)):
        rows = [{"question": f"Sam has {a} pens and buys {a + 1} more. How many pens?",
                 "answer": f"{a} + {a + 1} = {2 * a + 1}\n#### {2 * a + 1}"} for a in range(offset, offset + n)]
        (path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
