"""Structured configs of the environment side (OmegaConf dataclasses; every field is a CLI key).

Plain dataclasses with no heavy imports: a command parses and checks its whole configuration before it
loads torch, transformers or Ray.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskConfig:
    """The task: where prompts and reference answers come from and how an answer is verified (`task.*`)."""

    name: str = "cycles"  # cycles | map | jsonl | gsm8k | math500 | gsm8k_math (the paper's training mixture)
    num_symbols: int = 10  # cycles, map: permutation size; cycles answers are 3..num_symbols+2 tokens, +1 per `,`
    directions: str = "forward"  # cycles: forward | backward | both: the direction marks the data uses
    separator_prob: float = 0.5  # cycles: a `,` between two answer letters with this probability (free phrasing)
    pretrain_length_decay: float = 1.0  # cycles: pretraining keeps cycle length k w.p. decay^(k-1); 1 = natural
    path: str = ""  # jsonl: the file; gsm8k/math500: a dir of train/test .jsonl|.parquet or one file; "" = hub
    test_path: str = ""  # jsonl: a separate test file (then `path` is all training data and no hash split is made)
    verifier: str = "exact"  # jsonl: exact | numeric | math | module:function (imports and runs that code)
    prompt_key: str = "prompt"  # jsonl: the field that holds the prompt
    answer_key: str = "answer"  # jsonl: the field that holds the reference answer
    test_fraction: float = 0.1  # jsonl, or gsm8k/math500 from one file: share held out (by content hash) as test
    max_prompt_chars: int = 32_768  # a longer prompt in the data is an error (it would size a model or a batch)
    max_answer_chars: int = 32_768  # a longer reference answer in the data is an error


TASK_NAMES = ("cycles", "map", "jsonl", "gsm8k", "math500", "gsm8k_math")


def check_task(cfg: TaskConfig) -> None:
    if cfg.name not in TASK_NAMES:
        raise ValueError(f"unknown task {cfg.name!r}: choose one of {', '.join(TASK_NAMES)}")
    if cfg.name == "jsonl" and not cfg.path:
        raise ValueError("task=jsonl needs task.path=<a .jsonl file>")
    if cfg.test_path and cfg.name != "jsonl":
        raise ValueError(f"task.test_path is for task=jsonl, not task={cfg.name}")
    if not 0.0 <= cfg.test_fraction <= 1.0:
        raise ValueError(f"task.test_fraction must be in [0, 1], got {cfg.test_fraction}")
    if cfg.max_prompt_chars < 1 or cfg.max_answer_chars < 1:
        raise ValueError("task.max_prompt_chars and task.max_answer_chars must be >= 1")


@dataclass
class EnvConfig:
    """The canvas and how the dLLM runs it (the same `env.*` keys in every command)."""

    gen_length: int = 24  # L: the generation canvas
    block_length: int = 8  # BL: semi-AR block; BL == L is full diffusion
    temperature: float = 0.0  # token temperature (Gumbel-max in float64, as LLaDA); 0 = greedy
    batch_size: int = 0  # sequences in one batched dLLM forward (rows in flight in training); 0 = what the memory
    #                      plan fits (envs.memory), at most the evaluation's 250 / training's prompts x group size
    device: str = "auto"  # auto (cuda when this process sees a GPU, else cpu) | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16
    gpu_memory_fraction: float = 0.9  # share of the device's memory the memory plan may fill (weights included)
    device_memory_gb: float = 0.0  # the memory plan's device size in GB; 0 = the device's own (a GPU's, or free RAM)
    device_map: str = ""  # e.g. "auto": spread the dLLM over this actor's GPUs (overrides device)
    chat_template: str = "auto"  # auto (use the tokenizer's template if it has one) | on | off
    kv_cache: str = "none"  # none | prefix | dual: Fast-dLLM KV caches, refreshed once per block (native models)
    emulate_gpu: str = ""  # e.g. h200-llada8b: real logits, each forward timed as that GPU would (envs.emulation)
    emulate_tokens: int = 0  # emulate_gpu: time each row as this many tokens (the workload stood for); 0 = its own


KV_CACHES = ("none", "prefix", "dual")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_env(cfg: EnvConfig) -> None:
    """The MDP's own rules on its settings (the env checks them too; commands check them before any work)."""
    L, BL = cfg.gen_length, cfg.block_length
    if L <= 0 or BL <= 0:
        raise ValueError(f"env.gen_length ({L}) and env.block_length ({BL}) must be > 0")
    if L % BL:
        raise ValueError(f"env.gen_length={L} is not divisible by env.block_length={BL}")
    if cfg.kv_cache not in KV_CACHES:
        raise ValueError(f"unknown env.kv_cache {cfg.kv_cache!r}: use {', '.join(KV_CACHES)}")
    if cfg.temperature < 0:
        raise ValueError(f"env.temperature must be >= 0, got {cfg.temperature}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"unknown env.dtype {cfg.dtype!r}: use {', '.join(DTYPES)}")
    if cfg.batch_size < 0:
        raise ValueError(f"env.batch_size must be >= 0 (0 = what the memory plan fits), got {cfg.batch_size}")
    if not 0 < cfg.gpu_memory_fraction <= 1:
        raise ValueError(f"env.gpu_memory_fraction must be in (0, 1], got {cfg.gpu_memory_fraction}")
    if cfg.device_memory_gb < 0:
        raise ValueError(f"env.device_memory_gb must be >= 0 (0 = the device's own), got {cfg.device_memory_gb}")
    if cfg.emulate_gpu:
        from unmask.envs.emulation import profile

        profile(cfg.emulate_gpu)
    if cfg.emulate_tokens < 0:
        raise ValueError(f"env.emulate_tokens must be >= 0, got {cfg.emulate_tokens}")


@dataclass
class DLLMSettings:
    """The frozen dLLM, its task, the canvas and the seed: the keys every command that decodes shares, spelled the
    same everywhere (model, task.*, env.*, seed)."""

    model: str = "builtin"  # a local Hugging Face directory or hub id; builtin = the shipped dLLM
    trust_remote_code: bool = False  # let transformers run the model's own code from its directory or the hub
    task: TaskConfig = field(default_factory=TaskConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    seed: int = 0  # draws the prompts, the sampling noise and (training) the runners' data order


def check_dllm_settings(cfg: DLLMSettings) -> None:
    check_task(cfg.task)
    check_env(cfg.env)


@dataclass
class SamplerConfig:
    """One config for every sampler; each sampler reads only its own parameters (SAMPLER_PARAMS, the table at the end
    of `unmask eval --help`)."""

    name: str = "fast_dllm"  # which sampler (the table below); each reads only its own sampler.<param> keys
    steps: int = 0  # top_k/margin/entropy: total steps (LLaDA schedule); 0 = gen_length (1 token/step)
    k: int = 1  # random: tokens per step
    threshold: float = 0.9  # fast_dllm, left_threshold, left_run: lambda
    run_threshold: float = 0.4  # left_run: mu, the probability each position of the run from the leftmost needs
    factor: float = 1.0  # fast_dllm_factor: f
    gamma: float = 0.1  # eb: entropy bound
    delta: float = 0.25  # frechet: margin of the Fréchet bound (Fast-dLLM++; GSM8K 0.25-0.30, code 0.02-0.25)
    reference: str = "top_k"  # oracle: the sampler whose decode it follows, `name[:param=value,...]`
    block_length: int = 0  # oracle: its reference decodes the leftmost block of this many inside the canvas; 0 = BL
    checkpoint: str = ""  # policy: a saved policy directory (a train run's out_dir/checkpoints/final)
    policy_temperature: float = 1.0  # policy: tau_pi (paper: 0.5 semi-AR, 1.0 full diffusion)
    beta: float = 1.0  # policy: test-time scaling, unmask with probability min(1, beta * s)
    allow_mismatch: bool = False  # policy: run at an L or KV cache other than the one it was trained with
    alpha: float | None = None  # policy, alpha-conditioned: the trade-off to decode for (None: its grpo.alpha)


# Which SamplerConfig fields each sampler reads (the classes, envs.samplers and learner.sampler, take their
# `params` from here, so a command can reject a misplaced `sampler.<param>` before it imports torch).
SAMPLER_PARAMS: dict[str, tuple[str, ...]] = {
    "random": ("k",),
    "top_k": ("steps",),
    "margin": ("steps",),
    "entropy": ("steps",),
    "fast_dllm": ("threshold",),
    "left_threshold": ("threshold",),
    "left_run": ("threshold", "run_threshold"),
    "fast_dllm_factor": ("factor",),
    "eb": ("gamma",),
    "frechet": ("delta",),
    "oracle": ("reference", "block_length"),
    "policy": ("checkpoint", "policy_temperature", "beta", "allow_mismatch", "alpha"),
}


def check_sampler(cfg: SamplerConfig) -> None:
    """Reject an unknown sampler and settings that would silently sample nothing or everything."""
    if cfg.name not in SAMPLER_PARAMS:
        raise ValueError(f"unknown sampler {cfg.name!r}: choose one of {', '.join(sorted(SAMPLER_PARAMS))}")
    if cfg.k < 1:
        raise ValueError(f"sampler.k must be >= 1, got {cfg.k}")
    if cfg.steps < 0:
        raise ValueError(f"sampler.steps must be >= 0 (0 = gen_length), got {cfg.steps}")
    for key in ("threshold", "run_threshold"):
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            raise ValueError(f"sampler.{key} must be in [0, 1], got {getattr(cfg, key)}")
    if cfg.factor <= 0:
        raise ValueError(f"sampler.factor must be > 0, got {cfg.factor}")
    for key in ("gamma", "delta", "block_length"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"sampler.{key} must be >= 0, got {getattr(cfg, key)}")
    if cfg.policy_temperature <= 0 or cfg.beta <= 0:
        raise ValueError("sampler.policy_temperature and sampler.beta must be > 0")
    if cfg.alpha is not None and not cfg.alpha >= 0:
        raise ValueError(f"sampler.alpha must be >= 0, got {cfg.alpha}")
    if cfg.name == "oracle":
        reference = sampler_spec(cfg.reference)
        if reference.name == "oracle":
            raise ValueError("sampler.reference cannot be an oracle")
        check_sampler(reference)


def split_top(text: str) -> list[str]:
    """`a=1;b=(c:d=2;e=3)` -> ["a=1", "b=(c:d=2;e=3)"]: split at `;` (or `,`) outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            raise ValueError(f"unbalanced parentheses in {text!r}")
        if char in ";," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced parentheses in {text!r}")
    return [part for part in [*parts, text[start:]] if part]


def sampler_spec(spec: str) -> SamplerConfig:
    """`name` or `name:param=value;...` (e.g. `fast_dllm:threshold=0.9`, `left_run:threshold=0.9;run_threshold=0.4`)
    as a SamplerConfig, its parameters checked against the ones that sampler reads. Parameters are separated by `;`
    (a list on the command line splits at every comma; `,` still works inside a quoted string), and a sampler spec as
    a value nests in parentheses: `oracle:reference=(left_run:threshold=0.9;run_threshold=0.4);block_length=8`."""
    name, _, params = str(spec).partition(":")
    if name not in SAMPLER_PARAMS:
        raise ValueError(f"sampler spec {spec!r}: unknown sampler {name!r}: choose one of "
                         f"{', '.join(sorted(SAMPLER_PARAMS))}")
    fields = {f.name: f for f in dataclasses.fields(SamplerConfig)}
    values: dict[str, Any] = {}
    try:
        items = split_top(params)
    except ValueError as err:
        raise ValueError(f"sampler spec {spec!r}: {err}") from None
    for item in items:
        key, eq, value = item.partition("=")
        if value.startswith("(") and value.endswith(")"):
            value = value[1:-1]  # a nested spec (the oracle's reference): checked when it is built
        if not eq or key not in SAMPLER_PARAMS[name]:
            raise ValueError(f"sampler spec {spec!r}: {item!r} is not a parameter of {name} "
                             f"(its parameters: {', '.join(SAMPLER_PARAMS[name]) or 'none'})")
        kind = {"int": int, "float": float, "bool": lambda v: v.lower() == "true"}.get(
            str(fields[key].type).split(" ")[0], str)
        try:
            values[key] = kind(value)
        except ValueError:
            raise ValueError(f"sampler spec {spec!r}: {key}={value!r} is not a {fields[key].type}") from None
    return SamplerConfig(name=name, **values)


def check_finite(cfg: Any, prefix: str = "") -> None:
    """Every float setting of a config (nested dataclasses and lists included) is a finite number: a NaN
    passes every `<` and `>` check and would run as something else."""
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_finite(value, key + ".")
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{key} must be a finite number, got {item}")
