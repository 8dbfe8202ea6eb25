"""The one place where dLLM logits become per-position predictions and confidence features.

Precision, as the reference code has it and without a full-vocabulary float64 tensor where none is needed:
- LLaDA's `generate.py` takes the softmax in the model's dtype; Fast-dLLM's threshold code in float64. Here the
  top-1 probability is p1 = 1 / (1 + r) with r = sum over the other tokens of exp(l - l_max), summed in float32
  (every term < 1, so r keeps its relative precision) and divided in float64: near-1 confidences stay apart
  (1 - p1 ~ r, not rounded away), and samplers rank and threshold them in float64, the precision computed in.
- Temperature > 0 is LLaDA's Gumbel-max, in float64 over the vocabulary (low-precision Gumbel-max hurts
  quality, arXiv 2409.02908), in row chunks so the float64 temporaries stay bounded.
Only the features a sampler reads are computed (`features`); the mask token is never a valid prediction.

History features follow each position across the forwards of an episode (`History`, kept by the env): how many
forwards its predicted token has stayed the same, an exponential average of its confidence, and the last change of
its confidence: what CreditDecoding, KLASS and Learn2PD read beyond the current step.

One feature is the model's state itself: `hidden`, the last hidden state at each position (the vector the vocabulary
projection reads), from the same forward. A policy reads a fixed view of it (`HiddenView`): the state standardised per
position, then projected onto k orthonormal directions drawn once from a fixed seed for the model's width d (k = d:
the standardised state itself). The view depends on nothing but d and k, so a dump, the learner and another process
see the same numbers the policy saw.

One feature reads the canvas: `repeat`, whether a position's token would equal a neighbour's. Positions decoded in
parallel are drawn from their separate marginals; where a position is a free choice (a `,` or the letter it would
precede) its neighbour's marginal mixes both readings, and the two written together repeat one token (`cc`, `,,`,
"the the"): the signature of a parallel commit that no joint reading allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FEATURES = ("token_prob", "confidence", "margin", "entropy")  # of one forward
HISTORY = ("stable_steps", "confidence_ema", "confidence_delta")  # across an episode's forwards (History)
CANVAS = ("repeat",)  # of one forward and the canvas (neighbour_repeat)
HIDDEN = ("hidden",)  # the dLLM's last hidden state, [B, L, d] (HiddenView: what a policy reads of it)
HIDDEN_SEED = 2512_09106  # the projection's seed: one fixed view per (d, k), whatever the run's seed
EMA_DECAY = 0.5  # confidence_ema: the weight of the past


@dataclass
class Prediction:
    """What one dLLM forward says about each position ([B, L]); features nobody asked for are None."""

    tokens: torch.Tensor  # token that would be written: argmax, or Gumbel-max when temperature > 0
    token_prob: torch.Tensor | None = None  # float64: probability of that token (LLaDA's / Fast-dLLM's confidence)
    confidence: torch.Tensor | None = None  # float32: top-1 probability (the policy's input; = token_prob greedy)
    margin: torch.Tensor | None = None  # float64: top-1 minus top-2 probability (Dream's topk_margin)
    entropy: torch.Tensor | None = None  # float64: entropy of the softmax in nats (Dream's `entropy` alg)


MAX_TEMPORARY_ELEMENTS = 1 << 27  # 1 GiB of float64 (0.5 GiB of float32) per temporary: rows go in chunks beyond


def predict(logits: torch.Tensor, temperature: float = 0.0, mask_id: int | None = None,
            generator: torch.Generator | None = None, features: tuple[str, ...] = FEATURES) -> Prediction:
    """Greedy or Gumbel-max token choice plus the requested confidence features, from logits [B, L, V]."""
    rows_per_chunk = max(1, MAX_TEMPORARY_ELEMENTS // max(1, logits[0].numel()))
    if logits.shape[0] <= rows_per_chunk:
        return _predict(logits, temperature, mask_id, generator, features)
    parts = [_predict(chunk, temperature, mask_id, generator, features) for chunk in logits.split(rows_per_chunk)]
    return Prediction(**{name: None if getattr(parts[0], name) is None else torch.cat([getattr(p, name) for p in parts])
                         for name in Prediction.__dataclass_fields__})


def _predict(logits: torch.Tensor, temperature: float, mask_id: int | None, generator: torch.Generator | None,
             features: tuple[str, ...]) -> Prediction:
    x = logits.to(torch.float32, copy=True)
    if mask_id is not None:
        x[..., mask_id] = -torch.inf
    best_id = x.argmax(-1, keepdim=True)
    tokens = _gumbel_max(logits, temperature, mask_id, generator) if temperature > 0 else best_id[..., 0]
    x -= x.gather(-1, best_id)  # d = l - l_max <= 0
    weights = x.exp() if "margin" in features else x.exp_()  # exp(d): the top token's is 1
    entropy_sum = torch.special.xlogy(weights, weights).sum(-1).double() if "entropy" in features else None
    token_weight = weights.gather(-1, tokens[..., None])[..., 0].double() if temperature > 0 else None
    weights.scatter_(-1, best_id, 0.0)
    z = 1.0 + weights.sum(-1).double()  # the softmax normaliser over exp(l_max): 1 + every other token
    pred = Prediction(tokens=tokens)
    if "token_prob" in features:  # greedy: the written token is the top one, exp(d) = 1
        pred.token_prob = 1.0 / z if token_weight is None else token_weight / z
    if "confidence" in features:
        pred.confidence = (1.0 / z).float()
    if "margin" in features:
        pred.margin = (1.0 - x.topk(2, dim=-1).values[..., 1].double().exp()) / z
    if entropy_sum is not None:
        pred.entropy = torch.log(z) - entropy_sum / z  # H = log Z - sum_i p_i d_i
    return pred


def _gumbel_max(logits: torch.Tensor, temperature: float, mask_id: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """LLaDA's add_gumbel_noise: argmax(exp(l) / (-log u)^T) == argmax(l + T * Gumbel), a sample from
    softmax(l / T), in float64. Subtracting the max first keeps exp finite and leaves the argmax alone."""
    x = logits.to(torch.float64, copy=True)
    if mask_id is not None:
        x[..., mask_id] = -torch.inf
    u = torch.rand(x.shape, dtype=torch.float64, device=x.device, generator=generator)
    shifted = x - x.amax(-1, keepdim=True)
    return (shifted.exp() / (-torch.log(u)) ** temperature).argmax(-1)


def neighbour_repeat(tokens: torch.Tensor, canvas: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: the token a position would be written with equals a neighbour's within the canvas (the written
    token where it is written, the predicted one where it is still masked)."""
    seen = torch.where(masked, tokens, canvas)
    same = seen[:, 1:] == seen[:, :-1]
    repeat = torch.zeros_like(masked)
    repeat[:, 1:] |= same
    repeat[:, :-1] |= same
    return repeat


class History:
    """Per-position history of an episode's forwards ([B, L] each, float32):
        stable_steps      forwards since the predicted token last changed (0 at the first, and after a change)
        confidence_ema    EMA_DECAY * ema + (1 - EMA_DECAY) * confidence (the confidence itself at the first)
        confidence_delta  confidence now minus at the previous forward (0 at the first)"""

    def __init__(self, rows: int, length: int, device: torch.device):
        zeros = torch.zeros(rows, length, device=device)
        self.stable_steps, self.confidence_ema, self.confidence_delta = zeros, zeros.clone(), zeros.clone()
        self.tokens = torch.zeros(rows, length, dtype=torch.long, device=device)
        self.confidence = zeros.clone()

    def update(self, tokens: torch.Tensor, confidence: torch.Tensor, ran: torch.Tensor, first: torch.Tensor) -> None:
        """After a forward: `ran` [B] the rows it computed, `first` [B] those observed for the first time."""
        keep = (tokens == self.tokens).float()
        stable = torch.where(first[:, None], 0.0, (self.stable_steps + 1) * keep)
        ema = torch.where(first[:, None], confidence, EMA_DECAY * self.confidence_ema + (1 - EMA_DECAY) * confidence)
        delta = torch.where(first[:, None], 0.0, confidence - self.confidence)
        for name, value in (("stable_steps", stable), ("confidence_ema", ema), ("confidence_delta", delta),
                            ("tokens", tokens), ("confidence", confidence)):
            setattr(self, name, torch.where(ran[:, None], value, getattr(self, name)))


class HiddenView:
    """k numbers per position from the dLLM's last hidden state h [..., d]: layer_norm(h) (no affine; every model's
    states at one scale, each component of unit variance) times P [d, k], orthonormal columns from a Gaussian drawn
    with HIDDEN_SEED (QR in float64 on the CPU: the same P on every machine). k = d: no projection (the full state)."""

    def __init__(self, width: int, dims: int):
        if not 0 < dims <= width:
            raise ValueError(f"policy.hidden_dims={dims} must be in 1..{width}, the dLLM's hidden width")
        self.width, self.dims = width, dims
        self.projection = None
        if dims < width:
            gaussian = torch.randn(width, dims, dtype=torch.float64,
                                   generator=torch.Generator().manual_seed(HIDDEN_SEED + width))
            self.projection = torch.linalg.qr(gaussian).Q.float()  # [d, k], orthonormal columns
        self._on: dict[torch.device, torch.Tensor] = {}

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [..., k] float32."""
        if hidden.shape[-1] != self.width:
            raise ValueError(f"the policy reads a hidden state of width {self.width}; this dLLM's is "
                             f"{hidden.shape[-1]}")
        z = torch.nn.functional.layer_norm(hidden.float(), (self.width,))
        if self.projection is None:
            return z
        if hidden.device not in self._on:
            self._on[hidden.device] = self.projection.to(hidden.device)
        return z @ self._on[hidden.device]
