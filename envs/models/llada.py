"""LLaDA (GSAI-ML/LLaDA-8B-Instruct, -Base, -1.5): a LLaMA-style transformer without a causal mask.

Loads the released config.json (model_type "llada") and safetensors as they are: parameter names
`model.transformer.{wte, blocks.N.{attn_norm, q_proj, k_proj, v_proj, attn_out, ff_norm, ff_proj, up_proj,
ff_out}, ln_f, ff_out}`, no biases, untied output head. Mask token 126336.

One deliberate difference from the released code: positions count real tokens only (left padding does
not shift them), so a prompt gets the same logits alone or in a padded batch. The released code always
counts from 0, which equals ours for unpadded (batch-size-1) generation, the setting of its evaluation.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from unmask.envs.models.layers import Attention, KVCache, RMSNorm, init_dllm_weights, run_layers, swiglu


class LLaDAConfig(PreTrainedConfig):
    """The fields of LLaDA's config.json that decide the computation (defaults: LLaDA-8B). Other keys of
    the released file (init_*, dropouts, precision, flash_attention, ...) are kept but do not matter."""

    model_type = "llada"
    attribute_map = {"hidden_size": "d_model", "num_attention_heads": "n_heads", "num_hidden_layers": "n_layers"}

    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int | None = 32
    n_layers: int = 32
    mlp_hidden_size: int | None = 12288
    mlp_ratio: int = 4
    vocab_size: int = 126464
    embedding_size: int | None = 126464
    max_sequence_length: int = 4096
    rope_theta: float = 500000.0
    rope_full_precision: bool = True
    rms_norm_eps: float = 1e-5
    activation_type: str = "silu"
    block_type: str = "llama"
    layer_norm_type: str = "rms"
    include_bias: bool = False
    include_qkv_bias: bool = False
    weight_tying: bool = False
    scale_logits: bool = False
    input_emb_norm: bool = False
    init_std: float = 0.02
    mask_token_id: int = 126336
    eos_token_id: int | None = 126081
    pad_token_id: int | None = 126081


def check_supported(config: LLaDAConfig) -> None:
    """Refuse, in one line, variants of the OLMo-derived code this implementation does not cover."""
    wanted = {"block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu", "include_bias": False,
              "include_qkv_bias": False, "scale_logits": False, "input_emb_norm": False}
    for key, value in wanted.items():
        if getattr(config, key, value) != value:
            raise ValueError(f"LLaDA config has {key}={getattr(config, key)!r}; the native model supports {value!r}")
    if getattr(config, "alibi", False) or not getattr(config, "rope", True):
        raise ValueError("LLaDA config without RoPE (alibi or rope=false) is not supported by the native model")
    for key in ("attention_layer_norm", "multi_query_attention", "clip_qkv"):
        if getattr(config, key, None):
            raise ValueError(f"LLaDA config has {key}={getattr(config, key)!r}; the native model does not support it")
    if not getattr(config, "layer_norm_with_affine", True):
        raise ValueError("LLaDA config has layer_norm_with_affine=false; the native model supports true")


class LLaDABlock(Attention):
    """attn_norm -> attention -> attn_out, residual; ff_norm -> SwiGLU(ff_proj gate, up_proj) -> ff_out, residual.
    The block is the attention module itself because the checkpoint keeps q/k/v_proj at block level."""

    def __init__(self, config: LLaDAConfig):
        d, kv_heads = config.d_model, config.n_kv_heads or config.n_heads
        super().__init__(d, config.n_heads, kv_heads, bias=False, full_precision_rope=config.rope_full_precision)
        hidden = config.mlp_hidden_size or config.mlp_ratio * d
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_norm = RMSNorm(d, config.rms_norm_eps)
        self.ff_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.ff_out = nn.Linear(hidden, d, bias=False)

    def forward(self, x, rope, mask, past=None, replace_at=None):
        attended, kv = self.attend(self.attn_norm(x), rope, mask, past, replace_at)
        x = x + self.attn_out(attended)
        x = x + swiglu(self.ff_proj, self.up_proj, self.ff_out, self.ff_norm(x))
        return x, kv


class LLaDAModel(nn.Module):
    def __init__(self, config: LLaDAConfig):
        super().__init__()
        modules = {
            "wte": nn.Embedding(config.embedding_size or config.vocab_size, config.d_model),
            "blocks": nn.ModuleList(LLaDABlock(config) for _ in range(config.n_layers)),
            "ln_f": RMSNorm(config.d_model, config.rms_norm_eps),
        }
        if not config.weight_tying:
            modules["ff_out"] = nn.Linear(config.d_model, config.embedding_size or config.vocab_size, bias=False)
        self.transformer = nn.ModuleDict(modules)
        self.weight_tying = config.weight_tying


class LLaDAModelLM(PreTrainedModel):
    """`forward(input_ids, attention_mask, position_ids, past_key_values, use_cache, replace_position)` ->
    logits over the vocabulary for every fed position (and, with `use_cache`, every layer's keys/values)."""

    config_class = LLaDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["LLaDABlock"]
    native_dllm = True

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        check_supported(config)
        self.model = LLaDAModel(config)
        self.post_init()

    def _init_weights(self, module):
        init_dllm_weights(module, self.config.init_std)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values: KVCache | None = None,
                use_cache: bool = False, replace_position: int | None = None, logits_to_keep: int = 0,
                output_hidden_states: bool = False, **_) -> CausalLMOutputWithPast:
        t = self.model.transformer
        x, cache = run_layers(t.blocks, t.wte(input_ids), head_dim=self.config.d_model // self.config.n_heads,
                              theta=self.config.rope_theta, attention_mask=attention_mask,
                              position_ids=position_ids, past_key_values=past_key_values,
                              replace_position=replace_position, use_cache=use_cache)
        x = t.ln_f(x[:, -logits_to_keep:])  # 0 keeps every position
        logits = x @ t.wte.weight.T if self.model.weight_tying else t.ff_out(x)
        # output_hidden_states: the last hidden state only (what the vocabulary projection reads), not every layer's
        return CausalLMOutputWithPast(logits=logits, past_key_values=cache,
                                      hidden_states=(x,) if output_hidden_states else None)
