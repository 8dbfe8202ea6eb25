"""A fresh built-in dLLM: a bidirectional Hugging Face encoder, trained by `unmask pretrain` as a masked diffusion LM.
Standard HF encoders are already bidirectional, so no custom code is needed and the checkpoint loads with plain
`AutoModelForMaskedLM` anywhere (envs.dllm.load_dllm)."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForMaskedLM, ModernBertConfig, ModernBertForMaskedLM

from unmask.envs.pretrain.config import ModelSize


def new_builtin_model(vocab_size: int, max_positions: int, size: ModelSize, ids: dict) -> torch.nn.Module:
    """A fresh, randomly initialised built-in dLLM of `size` (ids: the pad, mask and eos token ids)."""
    if size.arch == "modernbert":
        config = ModernBertConfig(
            vocab_size=vocab_size, hidden_size=size.hidden_size, intermediate_size=size.ffn_size,
            num_hidden_layers=size.num_layers, num_attention_heads=size.num_heads,
            max_position_embeddings=max_positions, global_attn_every_n_layers=1,
            hidden_dropout=0.0, attention_dropout=0.0, mlp_dropout=0.0, embedding_dropout=0.0,
            pad_token_id=ids["pad"], eos_token_id=ids["eos"], bos_token_id=ids["eos"],
            cls_token_id=ids["eos"], sep_token_id=ids["eos"], mask_token_id=ids["mask"],
        )
        return ModernBertForMaskedLM(config)
    if size.arch != "bert":
        raise ValueError(f"unknown size.arch {size.arch!r}: use bert or modernbert")
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=size.hidden_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        intermediate_size=size.ffn_size,
        max_position_embeddings=max_positions,
        type_vocab_size=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=ids["pad"],
        mask_token_id=ids["mask"],
        eos_token_id=ids["eos"],
    )
    return BertForMaskedLM(config)
