"""The one place where dLLM logits become per-position predictions and confidence features."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Prediction:
    """What one dLLM forward says about each position (all [B, L])."""

    tokens: torch.Tensor  # token that would be written: argmax, or Gumbel-max when temperature > 0
    token_prob: torch.Tensor  # softmax probability of that token (LLaDA's / Fast-dLLM's confidence)
    confidence: torch.Tensor  # top-1 softmax probability (the policy's input; = token_prob when greedy)
    margin: torch.Tensor  # top-1 minus top-2 probability (Dream's topk_margin)
    entropy: torch.Tensor  # entropy of the softmax in nats (Dream's `entropy` alg uses its negative)


MAX_FLOAT64_ELEMENTS = 1 << 27  # 1 GiB per float64 temporary: rows are processed in chunks beyond this


def predict(logits: torch.Tensor, temperature: float = 0.0, mask_id: int | None = None,
            generator: torch.Generator | None = None) -> Prediction:
    """Greedy or Gumbel-max token choice plus confidence features, from logits [B, L, V].

    Softmax is taken in float64 as in LLaDA's and Fast-dLLM's `generate`; Gumbel noise too, because
    low-precision Gumbel-max hurts quality (arXiv 2409.02908). The mask token itself is never a
    valid prediction. Large inputs (an 8B model's 126k vocabulary over 256 positions is 32M values per
    row) go through in row chunks, so the float64 temporaries stay bounded.
    """
    rows_per_chunk = max(1, MAX_FLOAT64_ELEMENTS // max(1, logits[0].numel()))
    if logits.shape[0] <= rows_per_chunk:
        return _predict(logits, temperature, mask_id, generator)
    parts = [_predict(chunk, temperature, mask_id, generator) for chunk in logits.split(rows_per_chunk)]
    return Prediction(**{name: torch.cat([getattr(part, name) for part in parts])
                         for name in Prediction.__dataclass_fields__})


def _predict(logits: torch.Tensor, temperature: float, mask_id: int | None,
             generator: torch.Generator | None) -> Prediction:
    logits = logits.to(torch.float64, copy=True)
    if mask_id is not None:
        logits[..., mask_id] = -torch.inf
    probs = torch.softmax(logits, dim=-1)
    top2 = probs.topk(2, dim=-1).values
    if temperature > 0:
        # LLaDA's add_gumbel_noise: argmax(exp(l) / (-log u)^T) == argmax(l + T * Gumbel), a sample
        # from softmax(l / T). Subtracting the max first keeps exp finite and leaves the argmax alone.
        u = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
        shifted = logits - logits.amax(-1, keepdim=True)
        tokens = (shifted.exp() / (-torch.log(u)) ** temperature).argmax(-1)
    else:
        tokens = logits.argmax(-1)
    token_prob = probs.gather(-1, tokens[..., None])[..., 0]
    entropy = -(probs * torch.log(probs.clamp_min(1e-300))).sum(-1)
    return Prediction(
        tokens=tokens,
        token_prob=token_prob.float(),
        confidence=top2[..., 0].float(),
        margin=(top2[..., 0] - top2[..., 1]).float(),
        entropy=entropy.float(),
    )
