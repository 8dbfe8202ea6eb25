"""`unmask <command> ... --plan`: the memory plan of a config before any GPU-hour is spent. No weights are loaded and
Ray is not started: the model's shape comes from its config.json (a local directory, the Hugging Face cache, or the
shapes of LLaDA-8B and Dream-7B known by name), the prompts' lengths from the task's data and the tokenizer when it
is at hand (else their characters, an upper bound), the device's memory from this machine or env.device_memory_gb."""

from __future__ import annotations

from pathlib import Path

from unmask.envs.config import DLLMSettings
from unmask.envs.memory import NAMED_SHAPES, ModelShape, plan_memory, shape_from_path, shape_of

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "envs" / "builtin_model"
KNOWN_SHAPES = {  # hub ids whose config the plan knows without the hub (envs.memory.NAMED_SHAPES)
    "GSAI-ML/LLaDA-8B-Instruct": "llada-8b", "GSAI-ML/LLaDA-8B-Base": "llada-8b", "GSAI-ML/LLaDA-1.5": "llada-8b",
    "Dream-org/Dream-v0-Instruct-7B": "dream-7b", "Dream-org/Dream-v0-Base-7B": "dream-7b",
}
EVAL_ROWS = 250  # rollout.generation.EVAL_ROWS (not imported: it imports torch)


def model_shape(model: str) -> tuple[ModelShape, str]:
    """The model's shape and where it was read from."""
    local = BUILTIN_DIR if model in ("builtin", "") else Path(model).expanduser()
    if local.is_dir():
        return shape_from_path(local), f"{local / 'config.json'}"
    if model in NAMED_SHAPES or model in KNOWN_SHAPES:
        name = model if model in NAMED_SHAPES else KNOWN_SHAPES[model]
        return NAMED_SHAPES[name], f"the known shape of {name}"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json")
    except Exception:  # noqa: BLE001 - not a hub id, or no cache: the error below names both
        cached = None
    if isinstance(cached, str):
        import json

        return shape_of(json.loads(Path(cached).read_text()), model), f"{cached} (the Hugging Face cache)"
    raise ValueError(f"cannot plan for model {model!r}: no local directory, no cached config.json, and not one of "
                     f"{', '.join(KNOWN_SHAPES)}")


def prompt_tokens(cfg: DLLMSettings, split: str, count: int) -> tuple[int, str]:
    """The longest prompt (tokens) of the examples a run reads, and how it was measured."""
    from unmask.envs.tasks import make_task

    task = make_task(cfg.task)
    examples = task.examples(split, count, seed=cfg.seed)
    texts = [ex.prompt + task.response_prefix for ex in examples]
    if not texts:
        raise ValueError(f"the task has no {split} examples to size the prompts from")
    try:
        from transformers import AutoTokenizer

        local = BUILTIN_DIR if cfg.model in ("builtin", "") else cfg.model
        tokenizer = AutoTokenizer.from_pretrained(str(local), local_files_only=True,
                                                  trust_remote_code=cfg.trust_remote_code)
        chat = getattr(tokenizer, "chat_template", None) and cfg.env.chat_template != "off"
        if chat:
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                   add_generation_prompt=True) for t in texts]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        return max(lengths), f"{len(texts)} prompts, tokenized"
    except Exception:  # noqa: BLE001 - no tokenizer at hand: characters bound the tokens of a BPE vocabulary
        return max(len(t) for t in texts), f"{len(texts)} prompts, in characters (the tokenizer is not at hand)"


def target_device(cfg: DLLMSettings, gpus_per_runner: float | None) -> str:
    """Where the dLLM will run: a runner's GPU when Ray gives it one, else env.device as this machine resolves it."""
    if gpus_per_runner:
        return "cuda"
    if cfg.env.device != "auto":
        return cfg.env.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_memory(cfg: DLLMSettings, device: str) -> tuple[int, str]:
    if cfg.env.device_memory_gb:
        return int(cfg.env.device_memory_gb * 1e9), f"{cfg.env.device_memory_gb:g} GB (env.device_memory_gb)"
    import torch

    from unmask.envs.memory import device_bytes

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("the plan is for a GPU this machine does not have: give its memory with env.device_memory_gb "
                         "(80 for an H100, 141 for an H200)")
    memory = device_bytes(device)
    return memory, f"{memory / 1e9:.1f} GB ({'this GPU' if device.startswith('cuda') else 'free host memory'})"


def plan_text(cfg) -> str:
    """The plan of a command's config: what one env actor holds and the rows of each of its batches."""
    train = hasattr(cfg, "rollout") and hasattr(cfg, "num_env_runners")
    gpus = cfg.num_gpus_per_env_runner if train else None
    device = target_device(cfg, gpus)
    dtype = cfg.env.dtype if cfg.env.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    shape, source = model_shape(cfg.model)
    memory, memory_source = device_memory(cfg, device)
    split, count = ("train", cfg.rollout.train_pool) if train else (getattr(cfg, "split", "test"),
                                                                     getattr(cfg, "num_examples", 500))
    longest, measured = prompt_tokens(cfg, split, count)
    share = gpus if gpus and gpus < 1 else 1.0
    common = dict(dtype=dtype, gen_length=cfg.env.gen_length, prompt_length=longest, kv_cache=cfg.env.kv_cache,
                  device_bytes=memory, memory_fraction=cfg.env.gpu_memory_fraction * share,
                  temperature=cfg.env.temperature, overhead_bytes=512 << 20 if device.startswith("cuda") else 0)

    def rows(wanted: int, group: int = 1) -> str:
        if cfg.env.batch_size:
            return f"{min(cfg.env.batch_size, wanted)} (env.batch_size)"
        fit = plan_memory(shape, group_size=group, **common).rows_fit
        if fit < 1:
            return "0: the model does not fit (see above)"
        return f"{min(fit, wanted)} of {wanted}" + (" (the plan's limit)" if fit < wanted else "")

    lines = [f"memory plan of one {'env runner' if train else 'process'} (nothing loaded, no Ray): "
             f"{cfg.model} on {device} in {dtype}",
             f"  model shape: {source} ({shape.params / 1e9:.2f} B parameters)",
             f"  device memory: {memory_source}, env.gpu_memory_fraction={cfg.env.gpu_memory_fraction:g}"
             + (f" x {share:g} of a GPU per runner" if share < 1 else ""),
             f"  longest prompt: {longest} ({measured})"]
    if train:
        members = cfg.rollout.group_size + len(cfg.rollout.expert.thresholds)
        lines += plan_memory(shape, group_size=members, **common).lines()
        lines += ["rows per forward:",
                  f"  training    {rows(cfg.rollout.prompts_per_sample * members, members)} "
                  f"({cfg.rollout.prompts_per_sample} prompts x {members})",
                  f"  validation  {rows(cfg.validate_examples)}" if cfg.validate_every else "  validation  off",
                  f"  final eval  {rows(min(EVAL_ROWS, cfg.eval.num_examples or 1))}"]
        total_gpus = cfg.num_env_runners * (gpus or 0) + cfg.num_gpus_per_learner
        lines.append(f"resources: {cfg.num_env_runners} env runner(s) x ({cfg.num_cpus_per_env_runner:g} CPU, "
                     f"{gpus or 0:g} GPU) + learner (1 CPU, {cfg.num_gpus_per_learner:g} GPU) = "
                     f"{1 + cfg.num_env_runners * cfg.num_cpus_per_env_runner:g} CPUs, {total_gpus:g} GPUs")
    else:
        lines += plan_memory(shape, **common).lines()
        lines += ["rows per forward:", f"  evaluation  {rows(min(EVAL_ROWS, max(1, count)))}"]
    return "\n".join(lines)
