"""Character-level tokenizers for the built-in dLLMs.

A dLLM trained by `unmask pretrain` gets a tokenizer whose vocabulary is the set of characters in its
training data plus four specials. It is saved in Hugging Face's `tokenizer.json` format, so the same
`AutoTokenizer.from_pretrained` call loads it and the tokenizer of any hub model.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, MASK, EOS, UNK = "[PAD]", "[MASK]", "[EOS]", "[UNK]"
SPECIALS = (PAD, MASK, EOS, UNK)


def build_char_tokenizer(texts: Iterable[str], base: PreTrainedTokenizerFast | None = None
                         ) -> PreTrainedTokenizerFast:
    """One token per character seen in `texts` (sorted, so the vocabulary is reproducible). With `base`
    (a tokenizer built here), its ids are kept and only new characters are appended."""
    chars = sorted({ch for text in texts for ch in text})
    vocab = dict(sorted(base.get_vocab().items(), key=lambda kv: kv[1])) if base is not None else {}
    if base is not None and list(vocab.values()) != list(range(len(vocab))):
        raise ValueError("init_from's tokenizer is not a character tokenizer made by unmask pretrain")
    if not vocab:
        vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, mask_token=MASK, eos_token=EOS, unk_token=UNK
    )
