"""Native dLLM architectures (LLaDA, Dream) that load the official checkpoints without remote code.

Importing this package registers them with transformers' Auto API under the checkpoints' own
`model_type`s ("llada", "Dream"), so `AutoModelForMaskedLM.from_pretrained("GSAI-ML/LLaDA-8B-Instruct")`
(or a local copy) builds our implementation from the released config.json and safetensors, as vLLM
and SGLang do, instead of running the Hub's remote code (written for transformers 4.x).
"""

from __future__ import annotations

import json

import transformers
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

from unmask.envs.models.dream import DreamConfig, DreamModel
from unmask.envs.models.llada import LLaDAConfig, LLaDAModelLM


def register() -> None:
    """(Re-)claim the model types: importing the official remote code registers its own classes under the
    same names, so `load_dllm` calls this before every load."""
    for config, model in ((LLaDAConfig, LLaDAModelLM), (DreamConfig, DreamModel)):
        AutoConfig.register(config.model_type, config, exist_ok=True)
        AutoModelForMaskedLM.register(config, model, exist_ok=True)
        AutoModel.register(config, model, exist_ok=True)


register()

END_OF_TURN = ("<|eot_id|>", "<|im_end|>", "<|endoftext|>")
# Remote-code tokenizers that are a copy of a library class: loaded as that class, without running code.
REMOTE_TOKENIZER_TWINS = {"DreamTokenizer": "Qwen2Tokenizer"}


def end_of_turn_ids(tokenizer) -> list[int]:
    """Ids of the end-of-turn tokens an instruct model writes before its EOS padding."""
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in END_OF_TURN if t in vocab]


def tokenizer_class_of(path: str) -> str | None:
    from transformers.utils import cached_file

    try:
        file = cached_file(path, "tokenizer_config.json", _raise_exceptions_for_missing_entries=False)
    except OSError:
        return None
    if not file:
        return None
    with open(file, encoding="utf-8") as fh:
        return json.load(fh).get("tokenizer_class")


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """The model's tokenizer. Without its files transformers builds one of special tokens alone, which would turn
    every prompt into [UNK]: refused here, naming the cause."""
    twin = REMOTE_TOKENIZER_TWINS.get(tokenizer_class_of(path) or "")
    if twin and not trust_remote_code:
        tokenizer = getattr(transformers, twin).from_pretrained(path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        raise ValueError(f"its tokenizer has no vocabulary, only {len(tokenizer)} special tokens: are its tokenizer "
                         "files (tokenizer.json, tokenizer_config.json, vocab.txt, ...) missing?")
    return tokenizer


__all__ = ["DreamConfig", "DreamModel", "LLaDAConfig", "LLaDAModelLM", "end_of_turn_ids", "load_tokenizer",
           "register"]
