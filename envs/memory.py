"""How many rows one env runner's frozen dLLM can forward at once: a memory plan from the model's config alone.

No weights are loaded and torch is not imported: the plan is arithmetic over the config's shapes, so a driver can size
`env.batch_size` before it starts the actors that load an 8B model. Every term is a tensor the env's code really
allocates (envs.dllm, envs.engine, envs.confidence, envs.mdp, envs.models); `MemoryPlan` names each one.

The peak is a maximum over the PHASES of one env step, not a sum of everything: the layer activations are gone
before the vocabulary projection runs, and the logits' float32 copy in `predict` exists only after the forward. Per
row of a batched forward (N = prompt + L tokens, b = the model dtype's bytes, V = vocabulary):
- layers: the largest single layer's live tensors (hidden states, q/k/v, GQA's repeated k/v, the attention output,
  RoPE's float32 temporaries, SwiGLU's three [N, ffn] tensors) plus, with a KV cache, every layer's keys/values.
- head: the vocabulary projection's output (native models keep the last L positions, Dream L + 1 for its shift;
  BERT-style models project all N; Dream's shift is a view of it, `DLLM._align`).
- share: the first step forwards each group's shared sequence once and copies its logits to every member
  (`ForwardEngine._shared`: logits[inverse]); both exist at once (and with a KV cache, both copies of the cache).
- predict: the logits plus `predict`'s float32 copy [rows, L, V] (a second one for margin, a third for entropy;
  float64 Gumbel-max temporaries with temperature > 0). `predict` goes in row chunks of at most
  MAX_TEMPORARY_ELEMENTS elements, so beyond one chunk these temporaries are a fixed cost, not a per-row one.
Later steps differ from the first: no shared forward, every row forwarded, and with a KV cache some rows refresh
while the others keep theirs (rows reach a new block at different steps; continuous batching): the refreshed rows'
new cache is built next to the live one, and a cached forward of some rows copies their rows of it (`take`), so the
cache counts twice in those phases (an upper bound: the refreshed or copied rows are fewer than all).

Not planned: the allocator's fragmentation and caching (what `memory_fraction` leaves free), the policy network and
the recorded trajectories (small, and on the host), library workspaces (cuBLAS, BLAS packing, the attention
kernels' per-thread buffers: a few MiB on the CPU), and the head's input [kept, hidden] (hidden / V of the logits).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

GIB, MIB = 1 << 30, 1 << 20
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
KV_CACHES = ("none", "prefix", "dual")
FEATURES = ("token_prob", "confidence", "margin", "entropy", "stable_steps", "confidence_ema", "confidence_delta",
            "repeat")  # envs.confidence: FEATURES + HISTORY + CANVAS
HISTORY = ("stable_steps", "confidence_ema", "confidence_delta")
MAX_TEMPORARY_ELEMENTS = 1 << 27  # envs.confidence.MAX_TEMPORARY_ELEMENTS (the test checks they agree)
CUDA_CONTEXT_BYTES = 512 * MIB  # the CUDA context and kernels of a torch process, before any tensor
FLOAT32 = 4

# config.json values of the released checkpoints: the defaults of envs.models.llada.LLaDAConfig (LLaDA-8B) and
# envs.models.dream.DreamConfig (Dream-v0-7B); written out so that planning imports neither torch nor transformers.
LLADA_8B_CONFIG = {"model_type": "llada", "d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32,
                   "mlp_hidden_size": 12288, "mlp_ratio": 4, "vocab_size": 126464, "embedding_size": 126464,
                   "max_sequence_length": 4096, "weight_tying": False, "include_qkv_bias": False}
DREAM_7B_CONFIG = {"model_type": "Dream", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                   "max_position_embeddings": 131072, "tie_word_embeddings": False}
# transformers' defaults for the fields read here (BertConfig, ModernBertConfig), for a config.json that omits them
BERT_DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                 "vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2, "tie_word_embeddings": True}
MODERNBERT_DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 22, "num_attention_heads": 12,
                       "intermediate_size": 1152, "vocab_size": 50368, "max_position_embeddings": 8192,
                       "norm_bias": False, "attention_bias": False, "mlp_bias": False, "decoder_bias": True,
                       "classifier_bias": False, "tie_word_embeddings": True}


@dataclass(frozen=True)
class ModelShape:
    """What the memory of a forward depends on. `bias`: q/k/v projections carry biases (Dream; BERT).
    `other_biases`: further parameter groups with a bias, for the parameter count of BERT-style models
    ("attention_out", "mlp", "norm", "head", "decoder"). `gated_mlp`: gate + up + down (SwiGLU, GeGLU) rather than
    BERT's up + down. `type_vocab_size`: BERT's token-type table."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    tied_embeddings: bool
    max_positions: int
    logits_for_all_positions: bool
    bias: bool = False
    gated_mlp: bool = True
    other_biases: tuple[str, ...] = ()
    type_vocab_size: int = 0
    name: str = ""

    @property
    def native(self) -> bool:
        """LLaDA or Dream in envs.models: `logits_to_keep`, KV caches."""
        return self.model_type in ("llada", "Dream")

    @property
    def params(self) -> int:
        """The parameter count, exactly as the model class builds it (tied matrices once)."""
        d, ffn, V = self.hidden_size, self.ffn_size, self.vocab_size
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        head = 0 if self.tied_embeddings else V * d
        if self.native:
            qkv_bias = q_dim + 2 * kv_dim if self.bias else 0
            layer = d * q_dim + 2 * d * kv_dim + qkv_bias + d * d + 3 * d * ffn + 2 * d
            return V * d + self.num_layers * layer + d + head
        if self.model_type == "bert":
            embeddings = (V + self.max_positions + self.type_vocab_size) * d + 2 * d
            layer = 4 * (d * d + d) + 2 * d + (d * ffn + ffn) + (ffn * d + d) + 2 * d
            untied_bias = 0 if self.tied_embeddings else V  # decoder.bias is tied to predictions.bias with the rest
            return embeddings + self.num_layers * layer + (d * d + d) + 2 * d + V + head + untied_bias
        # modernbert: layer 0 has no attention norm (the embeddings' norm precedes it)
        has = set(self.other_biases)
        norm = d * (2 if "norm" in has else 1)
        attention = d * 3 * d + (3 * d if self.bias else 0) + d * d + (d if "attention_out" in has else 0)
        mlp = d * 2 * ffn + ffn * d + (2 * ffn + d if "mlp" in has else 0)
        layers = self.num_layers * (attention + norm + mlp) + (self.num_layers - 1) * norm
        head_dense = d * d + (d if "head" in has else 0)
        return V * d + norm + layers + norm + head_dense + norm + head + (V if "decoder" in has else 0)


def shape_of(config: dict, name: str = "") -> ModelShape:
    """The shape of a model from its config.json (as a dict); missing fields take the config class's default."""
    kind = config.get("model_type")
    if kind == "llada":
        c = LLADA_8B_CONFIG | config
        d, heads = c["d_model"], c["n_heads"]
        return ModelShape("llada", c["n_layers"], d, heads, c["n_kv_heads"] or heads, d // heads,
                          c["mlp_hidden_size"] or c["mlp_ratio"] * d, c["embedding_size"] or c["vocab_size"],
                          bool(c["weight_tying"]), c["max_sequence_length"], logits_for_all_positions=False,
                          bias=bool(c["include_qkv_bias"]), name=name or "llada")
    if kind == "Dream":
        c = DREAM_7B_CONFIG | config
        d, heads = c["hidden_size"], c["num_attention_heads"]
        return ModelShape("Dream", c["num_hidden_layers"], d, heads, c["num_key_value_heads"] or heads, d // heads,
                          c["intermediate_size"], c["vocab_size"], bool(c["tie_word_embeddings"]),
                          c["max_position_embeddings"], logits_for_all_positions=False, bias=True,
                          name=name or "Dream")
    if kind == "bert":
        c = BERT_DEFAULTS | config
        d, heads = c["hidden_size"], c["num_attention_heads"]
        return ModelShape("bert", c["num_hidden_layers"], d, heads, heads, d // heads, c["intermediate_size"],
                          c["vocab_size"], bool(c["tie_word_embeddings"]), c["max_position_embeddings"],
                          logits_for_all_positions=True, bias=True, gated_mlp=False,
                          other_biases=("attention_out", "mlp", "norm", "head", "decoder"),
                          type_vocab_size=c["type_vocab_size"], name=name or "bert")
    if kind == "modernbert":
        c = MODERNBERT_DEFAULTS | config
        d, heads = c["hidden_size"], c["num_attention_heads"]
        flags = {"attention_out": c["attention_bias"], "mlp": c["mlp_bias"], "norm": c["norm_bias"],
                 "head": c["classifier_bias"], "decoder": c["decoder_bias"]}
        return ModelShape("modernbert", c["num_hidden_layers"], d, heads, heads, d // heads, c["intermediate_size"],
                          c["vocab_size"], bool(c["tie_word_embeddings"]), c["max_position_embeddings"],
                          logits_for_all_positions=True, bias=bool(c["attention_bias"]),
                          other_biases=tuple(k for k, on in flags.items() if on), name=name or "modernbert")
    raise ValueError(f"cannot plan memory for model_type {kind!r}: known types are llada, Dream, bert, modernbert")


def shape_from_path(path: str | Path) -> ModelShape:
    """`shape_of` the config.json in a model directory."""
    file = Path(path).expanduser() / "config.json"
    if not file.is_file():
        raise ValueError(f"cannot plan memory for {str(path)!r}: it has no config.json")
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot plan memory for {str(path)!r}: config.json is not valid JSON ({err})") from None
    return shape_of(config, name=Path(path).name)


NAMED_SHAPES = {"llada-8b": shape_of(LLADA_8B_CONFIG, "llada-8b"), "dream-7b": shape_of(DREAM_7B_CONFIG, "dream-7b")}


@dataclass
class MemoryPlan:
    """Bytes one env actor needs (device memory: weights, then what one env step allocates for `rows` rows).

    Per row of a batched forward (N = prompt_length + gen_length tokens):
        logits_bytes_per_row         the vocabulary projection's output [kept, V] in the model dtype; kept = L (LLaDA's
                                     `logits_to_keep`), L + 1 (Dream: the shift needs one more), N (BERT-style)
        shared_copy_bytes_per_row    `logits[inverse]` [L, V]: a group's shared first forward copied to each member
        kv_cache_bytes_per_row       every layer's keys and values [2, kv_heads, N, head_dim] (RoPE'd keys, values)
        activation_bytes_per_row     the largest layer's live tensors (see `layer_activation_bytes`), RoPE tables
        state_bytes_per_row          the env's own buffers: ids, attention mask, masks, predictions, history
        predict_bytes_per_row        `predict`'s temporaries [L, V]: float32 copy (+ one for margin, + one for entropy),
                                     or 6 float64 + 1 float32 for Gumbel-max (temperature > 0)
    `predict` goes in chunks of `predict_chunk_rows` rows, so its temporaries never exceed that many rows' worth.
    `phases` says how these add up at each point of a step; `peak_bytes` and `rows_fit` take the largest.
    Attention scores are not planned with `flash_attention` (SDPA's flash/memory-efficient kernels, and torch's CPU
    flash kernel, tile them); without it, SDPA's math path holds two float32 [heads, N, N] per row."""

    model: str
    dtype: str
    gen_length: int
    prompt_length: int
    kv_cache: str
    group_size: int
    device_bytes: int
    memory_fraction: float
    weights_bytes: int
    overhead_bytes: int
    logits_bytes_per_row: int
    shared_copy_bytes_per_row: int
    kv_cache_bytes_per_row: int
    activation_bytes_per_row: int
    state_bytes_per_row: int
    predict_bytes_per_row: int
    predict_chunk_rows: int
    features: tuple[str, ...] = ("confidence",)
    temperature: float = 0.0
    flash_attention: bool = True
    params: int = 0  # the model's parameters (weights_bytes / the dtype's bytes)
    tokens: int = 0  # N = prompt_length + gen_length: what a full forward feeds per row

    @property
    def budget_bytes(self) -> int:
        return int(self.memory_fraction * self.device_bytes)

    @property
    def predict_fixed_bytes(self) -> int:
        """The most `predict`'s temporaries take, whatever the rows: one chunk's worth."""
        return self.predict_chunk_rows * self.predict_bytes_per_row

    def phases(self, rows: int, first_step: bool = False) -> dict[str, int]:
        """Live bytes (weights and overhead excluded) at each phase of one env step over `rows` rows. The first step
        (reset) forwards each group once; later steps forward every row, and with a KV cache may refresh some rows
        while the whole batch's cache is alive."""
        if rows <= 0:
            return {"layers": 0, "head": 0, "predict": 0}
        shared = first_step and self.group_size > 1
        forwarded = math.ceil(rows / self.group_size) if shared else rows
        kv, state = self.kv_cache_bytes_per_row, self.state_bytes_per_row * rows
        live_cache = 0 if first_step else rows * kv  # the cache of rows a refresh is not rebuilding
        aligned = self.logits_bytes_per_row  # what DLLM.logits returns (Dream's shift: a view of it)
        out = {
            "layers": state + live_cache + forwarded * (kv + self.activation_bytes_per_row),
            "head": state + live_cache + forwarded * (kv + self.logits_bytes_per_row),
        }
        if shared:
            out["share"] = state + forwarded * (kv + aligned) + rows * self.shared_copy_bytes_per_row
            if kv:
                out["share cache"] = state + (forwarded + rows) * kv + rows * self.shared_copy_bytes_per_row
        logits = self.shared_copy_bytes_per_row if shared else aligned
        out["predict"] = (state + rows * (kv + logits)
                          + min(rows, self.predict_chunk_rows) * self.predict_bytes_per_row)
        return out

    def step_bytes(self, rows: int, first_step: bool = False) -> int:
        """Peak bytes one env step allocates for `rows` rows (weights and overhead excluded)."""
        return max(self.phases(rows, first_step).values())

    def peak_bytes(self, rows: int) -> int:
        """Peak device bytes of an actor running `rows` rows through a whole episode."""
        steps = max(self.step_bytes(rows, first_step=True), self.step_bytes(rows, first_step=False))
        return self.weights_bytes + self.overhead_bytes + steps

    @property
    def per_row_bytes(self) -> int:
        """What one more row costs once the batch is past one `predict` chunk (the largest phase's slope)."""
        big = max(self.predict_chunk_rows, self.group_size) * 64
        return math.ceil((self.peak_bytes(2 * big) - self.peak_bytes(big)) / big)

    @property
    def rows_fit(self) -> int:
        """The most rows whose peak fits `memory_fraction` of the device; 0 when not even one does."""
        if self.peak_bytes(1) > self.budget_bytes:
            return 0
        low, high = 1, 2
        while self.peak_bytes(high) <= self.budget_bytes:
            low, high = high, high * 2
        while high - low > 1:  # peak_bytes(low) fits, peak_bytes(high) does not
            middle = (low + high) // 2
            low, high = (middle, high) if self.peak_bytes(middle) <= self.budget_bytes else (low, middle)
        return low

    def lines(self) -> list[str]:
        """The plan as short text: one line per component, then the rows that fit."""
        rows = self.rows_fit
        cache = f"kv_cache={self.kv_cache}" + (f", groups of {self.group_size}" if self.group_size > 1 else "")
        out = [f"{self.model} {self.dtype}: prompt {self.prompt_length} + gen {self.gen_length} tokens, {cache}",
               f"  budget       {gib(self.budget_bytes)} ({self.memory_fraction:g} x {gib(self.device_bytes)})",
               f"  weights      {gib(self.weights_bytes)}",
               f"  overhead     {gib(self.overhead_bytes)}",
               f"  predict      {size(self.predict_fixed_bytes)} at most (chunks of {self.predict_chunk_rows} rows)"]
        for label, value in (("logits", self.logits_bytes_per_row),
                             ("shared copy", self.shared_copy_bytes_per_row),
                             ("kv cache", self.kv_cache_bytes_per_row),
                             ("activations", self.activation_bytes_per_row), ("env state", self.state_bytes_per_row),
                             ("predict tmp", self.predict_bytes_per_row)):
            if value:
                out.append(f"  {label:<12} {size(value)} per row")
        out.append(f"  => {size(self.per_row_bytes)} per row at the peak; {rows} rows fit"
                   + (f" (peak {gib(self.peak_bytes(rows))})" if rows else ""))
        return out

    def table(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict:
        return asdict(self) | {"budget_bytes": self.budget_bytes, "predict_fixed_bytes": self.predict_fixed_bytes,
                               "per_row_bytes": self.per_row_bytes, "rows_fit": self.rows_fit,
                               "peak_bytes": self.peak_bytes(self.rows_fit)}


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def size(n: int) -> str:
    if n >= GIB:
        return gib(n)
    return f"{n / MIB:.1f} MiB" if n >= MIB else f"{n / 1024:.1f} KiB"


def layer_activation_bytes(shape: ModelShape, tokens: int, dtype_bytes: int, *, kv_cached: bool,
                           flash_attention: bool = True) -> int:
    """Live bytes of one sequence's largest layer (`tokens` tokens): the most of its attention and MLP phases.

    Native (envs.models.layers): the block's input x (run_layers still holds it) and its norm h; the q/k/v projections
    and RoPE's temporaries while q is rotated (LLaDA rotates in float32: the product, the float copy, the negated and
    the rotated half; Dream: three model-dtype tensors); at SDPA the rotated q, k, v, GQA's repeat_interleave'd k/v and
    the output; in the MLP the new x, `attended` (a local of the block), its norm, and SwiGLU's silu(gate), up and
    their product [ffn]. Without a KV cache this layer's k/v and the previous layer's (run_layers' `kv` holds it until
    the layer returns) are live too; with one they are the cache's tensors, counted there. The RoPE tables (cos, sin,
    float32) live through the forward. BERT-style models (counted alike, not measured by the tests): hidden, q/k/v
    (ModernBERT: the fused qkv and the rotated q, k), the attention output; BERT's intermediate and its GELU,
    ModernBERT's fused [2 ffn] input and GEGLU's two [ffn]."""
    d, ffn, b = shape.hidden_size, shape.ffn_size, dtype_bytes
    q_dim, kv_dim = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    scores = 0 if flash_attention else 2 * shape.num_heads * tokens * FLOAT32  # per token: [heads, N] float32, twice
    if shape.native:
        kv = 0 if kv_cached else 2 * kv_dim * b  # this layer's k, v
        previous_kv = kv if shape.num_layers > 1 else 0  # run_layers' `kv` holds the previous layer's until it returns
        repeat = 2 * q_dim * b if shape.num_kv_heads < shape.num_heads else 0
        if shape.model_type == "llada":  # apply_rotary(full_precision=True)
            rotate = (3 if b == FLOAT32 else 3.5) * q_dim * FLOAT32
        else:
            rotate = 3 * q_dim * b
        rotating = 2 * d * b + q_dim * b + 2 * kv_dim * b + rotate + previous_kv
        attending = 2 * d * b + q_dim * b + kv + repeat + q_dim * b + scores + previous_kv
        mlp = 4 * d * b + kv + 3 * ffn * b + previous_kv
        rope = 2 * shape.head_dim * FLOAT32
        return math.ceil(tokens * (max(rotating, attending, mlp) + rope))
    if shape.model_type == "modernbert":
        attention = (2 * d + 3 * q_dim + 2 * q_dim + q_dim) * b + scores
        mlp = (2 * d + 4 * ffn) * b
        rope = 2 * shape.head_dim * FLOAT32
        return tokens * (max(attention, mlp) + rope)
    attention = (d + 3 * q_dim + q_dim) * b + scores  # bert
    mlp = (d + 2 * ffn) * b
    return tokens * max(attention, mlp)


def plan_memory(shape: ModelShape, *, dtype: str, gen_length: int, prompt_length: int, kv_cache: str = "none",
                device_bytes: int, memory_fraction: float = 0.9, features: tuple[str, ...] = ("confidence",),
                temperature: float = 0.0, group_size: int = 1, flash_attention: bool = True,
                overhead_bytes: int = CUDA_CONTEXT_BYTES) -> MemoryPlan:
    """The memory plan of one env actor that hosts `shape` in `dtype` and runs canvases of `gen_length` after prompts
    of up to `prompt_length` tokens. `group_size`: rows that share a prompt (GRPO's group; their first forward is
    shared). `overhead_bytes`: memory the process holds before any tensor (the CUDA context; 0 on CPU)."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}: use {', '.join(DTYPE_BYTES)}")
    if kv_cache not in KV_CACHES:
        raise ValueError(f"unknown kv_cache {kv_cache!r}: use {', '.join(KV_CACHES)}")
    if kv_cache != "none" and not shape.native:
        raise ValueError(f"kv_cache={kv_cache} needs a native LLaDA or Dream model, not a {shape.model_type!r}")
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise ValueError(f"unknown feature {unknown[0]!r}: choose from {', '.join(FEATURES)}")
    if gen_length <= 0 or prompt_length < 0 or group_size < 1 or device_bytes <= 0 or not 0 < memory_fraction <= 1:
        raise ValueError("plan_memory needs gen_length > 0, prompt_length >= 0, group_size >= 1, device_bytes > 0 "
                         "and 0 < memory_fraction <= 1")
    if prompt_length + gen_length > shape.max_positions:
        raise ValueError(f"prompt ({prompt_length} tokens) + gen_length ({gen_length}) exceeds the model's context "
                         f"of {shape.max_positions} tokens")
    b, L, V = DTYPE_BYTES[dtype], gen_length, shape.vocab_size
    tokens = prompt_length + L
    kept = tokens if shape.logits_for_all_positions else L + (1 if shape.model_type == "Dream" else 0)
    logits = kept * V * b
    kv = 0 if kv_cache == "none" else shape.num_layers * 2 * shape.num_kv_heads * shape.head_dim * tokens * b
    activations = layer_activation_bytes(shape, tokens, b, kv_cached=kv_cache != "none",
                                         flash_attention=flash_attention)
    # predict: x = float32 copy; margin keeps it beside exp(x); entropy adds xlogy's; Gumbel-max: float64 copy, noise,
    # shifted, exp, log(u) and -log(u) at once, beside the float32 copy
    per_element = FLOAT32 * (1 + ("margin" in features) + ("entropy" in features))
    if temperature > 0:
        per_element = max(per_element, FLOAT32 + 6 * 8)
    # env buffers: ids + attention mask (int64); masked/abandoned/valid/in_block (bool); unmask_step, the predicted
    # tokens old and new (int64); the features (float32 confidence, float64 others) old and new; History's five
    history = 4 * FLOAT32 + 8 if set(features) & set(HISTORY) else 0
    per_forward = {f for f in features if f in FEATURES[:4]} | ({"confidence"} if history else set())
    feature_bytes = sum(FLOAT32 if f == "confidence" else 8 for f in per_forward)
    state = 2 * tokens * 8 + L * (4 + 3 * 8 + 2 * feature_bytes + history)
    return MemoryPlan(
        model=shape.name or shape.model_type, dtype=dtype, gen_length=L, prompt_length=prompt_length,
        kv_cache=kv_cache, group_size=group_size, device_bytes=device_bytes, memory_fraction=memory_fraction,
        weights_bytes=shape.params * b, overhead_bytes=overhead_bytes, logits_bytes_per_row=logits,
        shared_copy_bytes_per_row=L * V * b if group_size > 1 else 0, kv_cache_bytes_per_row=kv,
        activation_bytes_per_row=activations, state_bytes_per_row=state, predict_bytes_per_row=L * V * per_element,
        predict_chunk_rows=max(1, MAX_TEMPORARY_ELEMENTS // (L * V)), features=tuple(features),
        temperature=temperature, flash_attention=flash_attention,
        params=shape.params, tokens=tokens,
    )


# ---- sizing batches at run time (env.batch_size = 0) -------------------------------------------------------------
def device_bytes(device) -> int:
    """The memory of the device a dLLM runs on: a GPU's whole memory, or for the CPU the host memory available now."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_properties(dev.index if dev.index is not None else 0).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def plan_for(dllm, env, prompt_length: int, group_size: int = 1, features: tuple[str, ...] = ("confidence",),
             share: float = 1.0) -> MemoryPlan:
    """The plan of a loaded `dllm` (envs.dllm.DLLM) under `env` (EnvConfig): its own config's shape and dtype, the
    device it is on (env.device_memory_gb when given), `share` of env.gpu_memory_fraction (a runner holding a fraction
    of a GPU gets that fraction)."""
    parameter = next(dllm.model.parameters())
    on_gpu = parameter.device.type == "cuda"
    memory = int(env.device_memory_gb * 1e9) if env.device_memory_gb else device_bytes(parameter.device)
    return plan_memory(shape_of(dllm.model.config.to_dict(), dllm.name), dtype=str(parameter.dtype).removeprefix(
        "torch."), gen_length=env.gen_length, prompt_length=prompt_length, kv_cache=env.kv_cache,
        device_bytes=memory, memory_fraction=env.gpu_memory_fraction * min(1.0, share),
        features=tuple(f for f in features if f in FEATURES), temperature=env.temperature, group_size=group_size,
        overhead_bytes=CUDA_CONTEXT_BYTES if on_gpu else 0)


_unplanned: set[str] = set()  # model types already warned about


def batch_rows(dllm, env, prompt_length: int, wanted: int, group_size: int = 1,
               features: tuple[str, ...] = ("confidence",), share: float = 1.0) -> int:
    """Sequences per batched forward: env.batch_size when given, else as many of `wanted` as the memory plan fits.
    A dLLM whose weights and one row do not fit is a one-line error; an architecture the plan does not know runs
    `wanted` at once, said once on stderr (give env.batch_size)."""
    if env.batch_size:
        return max(1, min(env.batch_size, wanted))
    try:
        plan = plan_for(dllm, env, prompt_length, group_size, features, share)
    except ValueError as err:
        if "cannot plan memory" not in str(err):
            raise
        kind = str(dllm.model.config.model_type)
        if kind not in _unplanned:
            _unplanned.add(kind)
            print(f"unmask: {err}; running {wanted} rows per forward (set env.batch_size to choose)", file=sys.stderr)
        return max(1, wanted)
    rows = plan.rows_fit
    if rows < 1:
        raise ValueError(f"{dllm.name} does not fit: {gib(plan.weights_bytes)} of weights and "
                         f"{size(plan.per_row_bytes)} per row against {gib(plan.budget_bytes)} "
                         f"(env.gpu_memory_fraction of {gib(plan.device_bytes)}): use a larger device, bfloat16, a "
                         "shorter env.gen_length or env.kv_cache=none")
    return max(1, min(rows, wanted))
