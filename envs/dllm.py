"""dLLM adapters: one interface (token ids + attention mask -> logits) over any masked diffusion LM.

The environment only ever calls `DLLM.logits`. Everything model-specific (special token ids, Dream's
one-position logit shift, the context size, position ids under left padding) is resolved here once.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForMaskedLM

from unmask.envs.config import EnvConfig
from unmask.envs.files import check_hub, is_local_path

BUILTIN_MODEL_DIR = Path(__file__).parent / "builtin_model"
BUILTIN_NAMES = ("builtin", "")


class ModelLoadError(ValueError):
    """A model path or id that cannot be loaded; the message is one line for the CLI."""


def layout_batch(
    prompts: list[list[int]], gen_length: int, pad_id: int, mask_id: int, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """[left padding | prompt | gen_length masks] per row, and the attention mask that hides the padding;
    the prompt part is `width` wide (default: the longest prompt)."""
    width = max(len(p) for p in prompts) if width is None else width
    ids = torch.full((len(prompts), width + gen_length), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) : width] = torch.tensor(prompt, dtype=torch.long)
        attn[row, width - len(prompt) :] = 1
    ids[:, width:] = mask_id
    return ids, attn


def real_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens: left padding does not shift a prompt's positions."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """`real_positions`, or 0..N-1 in every row (the same values) for a batch without padding (mask None)."""
    if attention_mask is None:
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape)
    return real_positions(attention_mask)


def check_fits(prompt_length: int, gen_length: int, context: int | None) -> None:
    """A prompt of `prompt_length` tokens plus the canvas must fit the model's context."""
    if context is not None and prompt_length + gen_length > context:
        raise ValueError(f"prompt ({prompt_length} tokens) + env.gen_length ({gen_length}) exceeds the model's "
                         f"context of {context} tokens")


MAX_CHARS_PER_TOKEN = 64  # no tokenizer's token spans more characters than this (BPE vocabularies: a few dozen)


def encode_prompts(tokenizer, prompts: list[str], response_prefix: str = "", chat_template: bool = False,
                   context: int | None = None) -> list[list[int]]:
    """Token ids per prompt. Instruct models get their chat template (the prompt is the user turn);
    `response_prefix` is the start of the assistant's answer (the paper's `<reasoning>`). A prompt with more characters
    than the model's `context` could hold as tokens is refused in one line before it reaches the tokenizer (which can
    abort the process on a text of megabytes)."""
    longest = max((len(p) for p in prompts), default=0)
    if context and longest > context * MAX_CHARS_PER_TOKEN:
        raise ValueError(f"a prompt of {longest:,} characters cannot fit the model's context of {context:,} tokens "
                         "(lower task.max_prompt_chars to keep such prompts out)")
    if chat_template:
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True) for p in prompts]
    texts = [p + response_prefix for p in prompts]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []  # one batched call
    unk, unk_text = tokenizer.unk_token_id, tokenizer.unk_token
    for text, ids in zip(texts, encoded, strict=True):
        # more unknown-token ids than the text spells out literally (some tokenizers reuse a real special
        # token such as <|endoftext|> as unk): the model would silently see only part of the prompt
        if unk is not None and ids.count(unk) > text.count(unk_text):
            raise ValueError(f"prompt {text[:40]!r} has text the model's tokenizer cannot represent "
                             f"({unk_text}): is the task the one this model was made for?")
    return encoded


class DLLM:
    """A frozen masked diffusion LM seen as a function from token ids to per-position logits."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, mask_id: int, eos_id: int, pad_id: int,
                 logit_shift: bool = False, max_length: int | None = None, name: str = "model",
                 stop_ids: set[int] | None = None, chat_template: bool = False):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.mask_id, self.eos_id, self.pad_id = mask_id, eos_id, pad_id
        self.stop_ids = {eos_id} | set(stop_ids or ())  # an answer ends at the first of these
        self.logit_shift = logit_shift
        self.max_length = max_length
        self.name = name
        self.placement: dict = {}  # where and in what precision it runs, as load_dllm chose (recorded in eval.json)
        self.chat_template = chat_template
        params = inspect.signature(model.forward).parameters
        self._takes_position_ids = "position_ids" in params
        self.supports_kv_cache = "past_key_values" in params and getattr(model, "native_dllm", False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_fits(self, prompt_length: int, gen_length: int) -> None:
        check_fits(prompt_length, gen_length, self.max_length)

    def encode_prompts(self, prompts: list[str], response_prefix: str = "") -> list[list[int]]:
        """Token ids per prompt (`encode_prompts` with this model's tokenizer and chat-template setting)."""
        return encode_prompts(self.tokenizer, prompts, response_prefix, self.chat_template, self.max_length)

    def decode_answer(self, ids: list[int]) -> str:
        """The answer text: everything before the first EOS (LLaDA's convention; instruct models also stop
        at their end-of-turn token). A position still holding the mask token decodes to the mask string,
        so an unfinished answer never verifies."""
        end = next((i for i, token in enumerate(ids) if token in self.stop_ids), len(ids))
        return self.tokenizer.decode(ids[:end], skip_special_tokens=False)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, last: int = 0,
               hidden: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits aligned so that logits[:, i] predicts token i: of every position, or of the `last` ones
        only (native models then skip the vocabulary projection of the prompt). `attention_mask` None: no row
        is padded, and the model gets no mask (the caller knows from its layout: no device read, and SDPA may
        use its flash kernel); every forward method here takes it so. `hidden`: (logits, the last hidden state
        [B, N, d] aligned the same way), the vector the vocabulary projection reads at each position, from the same
        forward (`hidden_width` is d)."""
        kwargs = {}
        if self._takes_position_ids:
            kwargs["position_ids"] = positions(input_ids, attention_mask)
        kwargs |= self._keep(last) | self._native_hidden(hidden)
        with self._capture(hidden) as state:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return self._outputs(out, state, last, hidden)

    # ---- the last hidden state (a policy input: envs.confidence.HiddenView) --------------------------------
    @property
    def hidden_width(self) -> int:
        """d, the width of the last hidden state (the vocabulary projection's input)."""
        if getattr(self.model, "native_dllm", False):
            return int(self.model.config.hidden_size)
        head = self.model.get_output_embeddings()
        if head is None or not hasattr(head, "in_features"):
            raise ValueError(f"model {self.name!r} has no linear output embedding: its hidden state cannot be read")
        return int(head.in_features)

    @contextlib.contextmanager
    def _capture(self, wanted: bool):
        """For a transformers model, the input of its output embedding (the vocabulary projection) during one
        forward, kept by a hook; native models return it themselves (`output_hidden_states`)."""
        state: dict = {}
        native = getattr(self.model, "native_dllm", False)
        if not wanted or native:
            state["native"] = native and wanted
            yield state
            return
        head = self.model.get_output_embeddings()
        if head is None:
            raise ValueError(f"model {self.name!r} has no output embedding: its hidden state cannot be read")
        handle = head.register_forward_pre_hook(lambda _module, args: state.__setitem__("hidden", args[0]))
        try:
            yield state
        finally:
            handle.remove()

    def _outputs(self, out, state: dict, last: int, hidden: bool, shifted_cached: bool = False):
        """logits (aligned), and with `hidden` the hidden state aligned the same way."""
        if shifted_cached:  # logits_with_cache: the fed part began one position early for Dream's shift
            logits = out.logits[:, :-1] if self.logit_shift else out.logits
        else:
            logits = self._align(out.logits, last)
        if not hidden:
            return logits
        h = out.hidden_states[-1] if state.get("native") else state["hidden"]
        if shifted_cached:
            h = h[:, :-1] if self.logit_shift else h
        else:
            h = self._align(h, last)
        return logits, h

    def _keep(self, last: int) -> dict:
        if not last or not self.supports_kv_cache:
            return {}
        return {"logits_to_keep": last + 1 if self.logit_shift else last}

    def _native_hidden(self, hidden: bool) -> dict:
        return {"output_hidden_states": True} if hidden and getattr(self.model, "native_dllm", False) else {}

    def _align(self, out: torch.Tensor, last: int = 0) -> torch.Tensor:
        if self.logit_shift:  # Dream predicts token i+1 at position i (AR initialisation).
            if last and out.shape[1] > last:  # the `last` positions' logits are a view: no copy of [rows, L, V]
                return out[:, -last - 1 : -1]
            out = torch.cat([out[:, :1], out[:, :-1]], dim=1)
        return out[:, -last:] if last else out

    # ---- Fast-dLLM KV caches (native models) ---------------------------------------------------------
    @torch.no_grad()
    def logits_and_cache(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, last: int = 0,
                         hidden: bool = False) -> tuple:
        """A full forward (exactly `logits`) that also returns every layer's keys/values of every position,
        for `logits_with_cache` to reuse until the next refresh: (logits, cache), or with `hidden`
        (logits, cache, hidden state)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=positions(input_ids, attention_mask), use_cache=True, **self._keep(last),
                         **self._native_hidden(hidden))
        result = self._outputs(out, {"native": True}, last, hidden)
        return (*result, out.past_key_values) if hidden else (result, out.past_key_values)

    @torch.no_grad()
    def logits_with_cache(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, cache: list,
                          start: int, end: int | None = None, hidden: bool = False
                          ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits of positions start..end-1 from a forward that feeds only part of the sequence and takes
        every other position's keys/values from `cache` (stale by design: computed at the last refresh).

        Prefix cache (`end=None`): feeds start.. to the end of the sequence; only cache[:, :, :start] is used.
        Dual cache (`end` given): feeds start..end-1; the cache covers the whole sequence, and the fed
        positions overwrite their cached entries in place. Dream's shift needs the output of position
        start-1, so for Dream the fed part begins one position earlier. `hidden`: (logits, hidden state)."""
        first = start - 1 if self.logit_shift else start
        stop = input_ids.shape[1] if end is None else end
        fed = positions(input_ids, attention_mask)[:, first:stop]
        extra = self._native_hidden(hidden)
        if end is None:
            out = self.model(input_ids=input_ids[:, first:], attention_mask=attention_mask, position_ids=fed,
                             past_key_values=[(k[:, :, :first], v[:, :, :first]) for k, v in cache], **extra)
        else:
            out = self.model(input_ids=input_ids[:, first:stop], attention_mask=attention_mask,
                             position_ids=fed, past_key_values=cache, replace_position=first, **extra)
        return self._outputs(out, {"native": True}, 0, hidden, shifted_cached=True)


def first_id(*candidates) -> int | None:
    """The first id that is set; configs may hold a list of EOS ids (the first is the canonical one)."""
    for value in candidates:
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return None


def resolve_device(device: str) -> str:
    """env.device=auto: cuda when this process sees a GPU (for an env runner, the one Ray gave it), else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """env.dtype=auto: bfloat16 on CUDA (LLaDA-8B weighs 16 GB in it, 32 GB in float32), float32 on the CPU."""
    if dtype == "auto":
        return "bfloat16" if torch.device(device).type == "cuda" else "float32"
    return dtype


def check_device(device: str) -> None:
    """Fail early and in one line on a device this machine does not have."""
    try:
        dev = torch.device(resolve_device(device))
    except RuntimeError:
        raise ModelLoadError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ModelLoadError(f"device {device!r} is not available on this machine")


def resolve_model_path(model: str) -> str:
    return str(BUILTIN_MODEL_DIR) if model in BUILTIN_NAMES else model


def check_model_path(model: str) -> str:
    """The local directory or hub id `model` names; a local path that is not a model directory is an error."""
    path = resolve_model_path(model)
    if not is_local_path(path):
        check_hub(path, "model")
    if is_local_path(path):
        local = Path(path).expanduser()
        if not local.exists():
            raise ModelLoadError(f"model path {path!r} does not exist")
        if not local.is_dir():
            raise ModelLoadError(f"model path {path!r} is a file, not a model directory")
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"model path {path!r} is not a model directory (it has no config.json)")
        try:
            config = json.loads((local / "config.json").read_text())
        except (OSError, ValueError, UnicodeDecodeError) as err:
            raise ModelLoadError(f"model {path!r}: config.json is not valid JSON ({err})") from None
        if not isinstance(config, dict):
            raise ModelLoadError(f"model {path!r}: config.json is not a JSON object")
    return path


@contextlib.contextmanager
def loading(model: str):
    """Whatever loading a checkpoint raises (missing or truncated files, an unknown architecture, a broken
    tokenizer) becomes one line naming the model."""
    try:
        yield
    except (OSError, ValueError, KeyError, ImportError, RuntimeError, SafetensorError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"cannot load model {model!r}: {first_line}") from None


def check_model_files(model: str, env: EnvConfig, trust_remote_code: bool = False):
    """What `load_env_dllm` would refuse, found without loading the weights (what a driver checks before it
    starts env runners that load them): the model's files, config and tokenizer, its special tokens, the
    chat-template and KV-cache settings. Returns (tokenizer, context length, chat template on?)."""
    from transformers import AutoConfig

    from unmask.envs import models

    models.register()
    path = check_model_path(model)
    with loading(model):
        tokenizer = models.load_tokenizer(path, trust_remote_code=trust_remote_code)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if first_id(getattr(config, "mask_token_id", None), tokenizer.mask_token_id) is None:
        raise ModelLoadError(f"model {model!r} defines no mask token id")
    if env.kv_cache != "none" and config.model_type not in (models.LLaDAConfig.model_type,
                                                            models.DreamConfig.model_type):
        raise ModelLoadError(f"env.kv_cache={env.kv_cache} needs a native LLaDA or Dream model; {model!r} is "
                             f"a {config.model_type!r}")
    return tokenizer, context_length(config), uses_chat_template(tokenizer, env.chat_template, model)


def context_length(config) -> int | None:
    return getattr(config, "max_position_embeddings", None) or getattr(config, "max_sequence_length", None)


def load_env_dllm(model: str, env: EnvConfig, *, trust_remote_code: bool = False, device: str = "") -> DLLM:
    """`load_dllm` with the placement, precision and prompt settings of an `env` config (`device`
    overrides `env.device`, e.g. the GPU Ray gave an env runner), emulating a GPU's timing if it says so."""
    dllm = load_dllm(model, device=device or env.device, dtype=env.dtype, trust_remote_code=trust_remote_code,
                     chat_template=env.chat_template, device_map=env.device_map)
    dllm.placement["asked"] = {"device": device or env.device, "dtype": env.dtype}
    if env.emulate_gpu:
        from unmask.envs.emulation import EmulatedForwards, profile

        dllm.emulation = EmulatedForwards(dllm, profile(env.emulate_gpu), env.emulate_tokens)
    return dllm


def load_dllm(model: str = "builtin", *, device: str = "auto", dtype: str = "auto",
              trust_remote_code: bool = False, logit_shift: bool | None = None, chat_template: str = "auto",
              device_map: str = "") -> DLLM:
    """Load a dLLM from a local directory or a hub id. LLaDA and Dream checkpoints load into the native
    implementations in `envs.models` (no remote code); any other masked LM through `AutoModelForMaskedLM`
    (remote code only with `trust_remote_code`). On a GPU the weights load straight onto it (no copy staged in
    host memory: eight runners of a node would otherwise hold eight copies in RAM at once); `device_map` (e.g.
    "auto") spreads a model over the GPUs of one env actor. device and dtype `auto`: resolve_device, resolve_dtype;
    what was chosen is `dllm.placement`."""
    from unmask.envs import models

    models.register()  # the native LLaDA and Dream classes answer for their model types

    path = check_model_path(str(model))
    check_device(device)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16")
    on_gpu = torch.device(device).type == "cuda"
    placement = {"device_map": device_map or (device if on_gpu else None)}
    placement = {k: v for k, v in placement.items() if v}
    with loading(model):
        tokenizer = models.load_tokenizer(path, trust_remote_code=trust_remote_code)
        hf_model = AutoModelForMaskedLM.from_pretrained(
            path, dtype=torch_dtype, trust_remote_code=trust_remote_code, **placement
        )
    config = hf_model.config
    mask_id = first_id(getattr(config, "mask_token_id", None), tokenizer.mask_token_id)
    eos_id = first_id(getattr(config, "eos_token_id", None), tokenizer.eos_token_id)
    pad_id = first_id(tokenizer.pad_token_id, getattr(config, "pad_token_id", None), eos_id)
    if mask_id is None or eos_id is None:
        raise ModelLoadError(f"model {model!r} defines no mask or EOS token id")
    stop_ids = {first_id(t) for t in (getattr(config, "eos_token_id", None), tokenizer.eos_token_id) if t is not None}
    stop_ids |= set(models.end_of_turn_ids(tokenizer))
    shift = bool(getattr(config, "logit_shift", False)) if logit_shift is None else logit_shift
    max_length = context_length(config)
    if not placement:
        hf_model = hf_model.to(device)
    dllm = DLLM(hf_model, tokenizer, mask_id=mask_id, eos_id=eos_id, pad_id=pad_id,
                logit_shift=shift, max_length=max_length, name=model or "builtin", stop_ids=stop_ids,
                chat_template=uses_chat_template(tokenizer, chat_template, model))
    dllm.placement = {"device": str(dllm.device), "dtype": dtype, "device_map": device_map,
                      "loaded_onto_device": bool(placement)}
    return dllm


def uses_chat_template(tokenizer, setting: str, model: str) -> bool:
    """env.chat_template: auto (the tokenizer's template if it has one), on (it must have one) or off."""
    if setting not in ("auto", "on", "off"):
        raise ModelLoadError(f"unknown env.chat_template {setting!r}: use auto, on or off")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if setting == "on" and not has_template:
        raise ModelLoadError(f"env.chat_template=on but the tokenizer of {model!r} has no chat template")
    return has_template and setting != "off"
