"""Dream (Dream-org/Dream-v0-Instruct-7B, -Base-7B): a Qwen2-style transformer without a causal mask.

Loads the released config.json (model_type "Dream") and safetensors as they are: parameter names
`model.{embed_tokens, layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm,
mlp.{gate,up,down}_proj}, norm}` and `lm_head`; q/k/v carry biases; grouped-query attention. Mask token
151666. Dream keeps its AR initialisation's alignment: the output at position i predicts token i+1; the
config says so with `logit_shift=True`, and the dLLM adapter shifts the logits once, in one place.

Positions count real tokens only and padded keys are hidden, as Dream's own generation code does
(`tok_idx` and its pairwise mask, which `forward` also accepts as a 4D boolean mask); masks use a finite
minimum so padded query rows stay finite.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from unmask.envs.models.layers import Attention, KVCache, RMSNorm, init_dllm_weights, run_layers, swiglu


class DreamConfig(PreTrainedConfig):
    """The fields of Dream's config.json that decide the computation (defaults: Dream-v0-7B)."""

    model_type = "Dream"

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int | None = 4
    hidden_act: str = "silu"
    max_position_embeddings: int = 131072
    rope_theta: float = 1000000.0
    rope_scaling: dict | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    use_sliding_window: bool = False
    initializer_range: float = 0.02
    logit_shift: bool = True
    mask_token_id: int = 151666
    pad_token_id: int | None = 151643
    bos_token_id: int | None = 151643
    eos_token_id: int | None = 151643


def check_supported(config: DreamConfig) -> None:
    if config.hidden_act != "silu":
        raise ValueError(f"Dream config has hidden_act={config.hidden_act!r}; the native model supports 'silu'")
    if config.rope_scaling:
        raise ValueError("Dream config with rope_scaling is not supported by the native model")
    if config.use_sliding_window:
        raise ValueError("Dream config with use_sliding_window=true is not supported by the native model")


class DreamAttention(Attention):
    def __init__(self, config: DreamConfig):
        super().__init__(config.hidden_size, config.num_attention_heads,
                         config.num_key_value_heads or config.num_attention_heads, bias=True,
                         full_precision_rope=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x, rope, mask, past=None, replace_at=None):
        attended, kv = self.attend(x, rope, mask, past, replace_at)
        return self.o_proj(attended), kv


class DreamMLP(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return swiglu(self.gate_proj, self.up_proj, self.down_proj, x)


class DreamDecoderLayer(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.self_attn = DreamAttention(config)
        self.mlp = DreamMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, rope, mask, past=None, replace_at=None):
        attended, kv = self.self_attn(self.input_layernorm(x), rope, mask, past, replace_at)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class DreamBaseModel(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DreamDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class DreamModel(PreTrainedModel):
    """`forward(input_ids, attention_mask, position_ids, past_key_values, use_cache, replace_position)` ->
    unshifted logits for every fed position (and, with `use_cache`, every layer's keys/values)."""

    config_class = DreamConfig
    base_model_prefix = "model"
    _no_split_modules = ["DreamDecoderLayer"]
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # only with tie_word_embeddings
    native_dllm = True

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        check_supported(config)
        self.model = DreamBaseModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        init_dllm_weights(module, self.config.initializer_range)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values: KVCache | None = None,
                use_cache: bool = False, replace_position: int | None = None, logits_to_keep: int = 0,
                output_hidden_states: bool = False, **_) -> CausalLMOutputWithPast:
        x, cache = run_layers(self.model.layers, self.model.embed_tokens(input_ids),
                              head_dim=self.config.hidden_size // self.config.num_attention_heads,
                              theta=self.config.rope_theta, attention_mask=attention_mask,
                              position_ids=position_ids, past_key_values=past_key_values,
                              replace_position=replace_position, use_cache=use_cache)
        x = self.model.norm(x[:, -logits_to_keep:])  # 0 keeps every position
        # output_hidden_states: the last hidden state only (what lm_head reads), not every layer's
        return CausalLMOutputWithPast(logits=self.lm_head(x), past_key_values=cache,
                                      hidden_states=(x,) if output_hidden_states else None)
