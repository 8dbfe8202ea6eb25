"""The env as it was before the rollout engine (kept only so bench/rollout_engine.py can compare with it).

Frozen copy of envs/mdp.py and envs/confidence.py at the commit before the engine split: float64 softmax
over the whole vocabulary, every feature every step, fresh [B, L] tensors and observation copies per step,
no shared forwards. Not used by the project.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from envs.config import EnvConfig, check_env
from envs.dllm import DLLM, layout_batch


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
class SamplerError(ValueError):
    """A sampler's decision that breaks the MDP's rules."""


@dataclass
class Observation:
    """Everything a sampler may look at, per row ([B] or [B, L] tensors). With a KV cache, columns a
    cached forward does not recompute (finished blocks; with `dual`, also later blocks) keep their values
    from the block's refresh: train a policy with the cache setting it will be evaluated with."""

    confidence: torch.Tensor  # top-1 probability
    token_prob: torch.Tensor  # probability of the token that would be written
    margin: torch.Tensor
    entropy: torch.Tensor
    masked: torch.Tensor  # bool: still masked (may be unmasked at a later step)
    abandoned: torch.Tensor  # bool: given up when its block ran out of forwards (the canvas keeps [MASK])
    valid: torch.Tensor  # bool: masked and inside the current block (and the row is active)
    t: torch.Tensor  # forwards already spent / L (the policy's time input, in [0, 1))
    nfe: torch.Tensor  # forwards spent including this one
    block_step: torch.Tensor  # forwards already spent on the current block
    block_index: torch.Tensor
    active: torch.Tensor  # bool [B]: rows that still have masked positions
    block_length: int
    gen_length: int

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length


class LegacyEnv:
    """A batch of unmasking episodes over one frozen dLLM."""

    def __init__(self, dllm: DLLM, gen_length: int, block_length: int, temperature: float = 0.0, seed: int = 0,
                 kv_cache: str = "none"):
        check_env(EnvConfig(gen_length=gen_length, block_length=block_length, temperature=temperature,
                            kv_cache=kv_cache))
        if kv_cache != "none" and not dllm.supports_kv_cache:
            raise ValueError(f"env.kv_cache={kv_cache} needs a native LLaDA or Dream model; {dllm.name!r} is not one")
        self.dllm, self.L, self.BL = dllm, gen_length, block_length
        self.temperature = temperature
        self.kv_cache = kv_cache
        self.generator = torch.Generator(device=dllm.device).manual_seed(seed)

    @classmethod
    def from_config(cls, dllm: DLLM, env: EnvConfig, seed: int = 0) -> LegacyEnv:
        return cls(dllm, env.gen_length, env.block_length, env.temperature, seed=seed, kv_cache=env.kv_cache)

    # ---- episode -------------------------------------------------------------------------------
    def reset(self, prompts: list[list[int]]) -> Observation:
        if not prompts:
            raise ValueError("reset needs at least one prompt")
        self.dllm.check_fits(max(len(p) for p in prompts), self.L)
        device = self.dllm.device
        ids, attn = layout_batch(prompts, self.L, self.dllm.pad_id, self.dllm.mask_id)
        self.ids, self.attn = ids.to(device), attn.to(device)
        B = len(prompts)
        self.masked = torch.ones(B, self.L, dtype=torch.bool, device=device)
        self.abandoned = torch.zeros_like(self.masked)
        self.unmask_step = torch.full((B, self.L), -1, dtype=torch.long, device=device)
        self.nfe = torch.zeros(B, dtype=torch.long, device=device)
        self.block_index = torch.zeros_like(self.nfe)
        self.block_step = torch.zeros_like(self.nfe)
        self.position_block = torch.arange(self.L, device=device) // self.BL
        self.pred = None
        self.kv = None  # KV cache: per layer (keys, values) [B, kv_heads, prompt + L, head_dim]
        self.cached_block = torch.full_like(self.nfe, -1)  # block each row's cache was refreshed for
        return self._forward()

    def step(self, unmask: torch.Tensor) -> Observation:
        """Write the predicted tokens at `unmask` ([B, L] bool, a subset of `obs.valid`)."""
        unmask = unmask.to(self.masked.device, torch.bool)
        if unmask.shape != self.masked.shape:
            raise SamplerError(f"decision has shape {tuple(unmask.shape)}, expected {tuple(self.masked.shape)}")
        if (unmask & ~self.valid).any():
            raise SamplerError("decision unmasks a position that is not a masked position of the current block")
        canvas = self.ids[:, -self.L:]
        canvas[unmask] = self.pred.tokens[unmask]
        self.masked &= ~unmask
        self.unmask_step[unmask] = (self.nfe[:, None] - 1).expand_as(unmask)[unmask]
        ran = self.active
        self.block_step[ran] += 1
        in_block = self.position_block[None, :] == self.block_index[:, None]
        block_left = (self.masked & in_block).any(-1)
        out_of_steps = ran & block_left & (self.block_step >= self.BL)
        if out_of_steps.any():  # abandon what the block did not finish; its mask tokens stay
            give_up = self.masked & in_block & out_of_steps[:, None]
            self.abandoned |= give_up
            self.masked &= ~give_up
        advance = ran & ~(self.masked & in_block).any(-1) & self.masked.any(-1)
        self.block_index[advance] += 1
        self.block_step[advance] = 0
        return self._forward()

    @property
    def done(self) -> bool:
        return not bool(self.masked.any())

    @property
    def active(self) -> torch.Tensor:
        return self.masked.any(-1)

    def canvas(self) -> torch.Tensor:
        return self.ids[:, -self.L:].clone()

    # ---- one dLLM forward ----------------------------------------------------------------------
    def _forward(self) -> Observation:
        active = self.active
        B, L, device = self.masked.shape[0], self.L, self.masked.device
        steps_done = self.nfe.clone()
        fields = {}
        for name in ("tokens", "token_prob", "confidence", "margin", "entropy"):
            full = torch.zeros(B, L, device=device, dtype=torch.long if name == "tokens" else torch.float32)
            if self.pred is not None and self.kv_cache != "none":  # columns a cached forward does not recompute
                full[active] = getattr(self.pred, name)[active]
            fields[name] = full
        for rows, first_column, logits in self._logits(active):
            part = predict(logits, self.temperature, self.dllm.mask_id, self.generator)
            columns = slice(first_column, first_column + logits.shape[1])
            for name, full in fields.items():
                full[rows, columns] = getattr(part, name).to(full.dtype)
        self.nfe[active] += 1
        self.pred = Prediction(**fields)
        in_block = self.position_block[None, :] == self.block_index[:, None]
        self.valid = self.masked & in_block & active[:, None]
        return Observation(
            confidence=self.pred.confidence, token_prob=self.pred.token_prob, margin=self.pred.margin,
            entropy=self.pred.entropy, masked=self.masked.clone(), abandoned=self.abandoned.clone(),
            valid=self.valid.clone(),
            t=steps_done.float() / L, nfe=self.nfe.clone(), block_step=self.block_step.clone(),
            block_index=self.block_index.clone(), active=active, block_length=self.BL, gen_length=L,
        )

    def _logits(self, active: torch.Tensor):
        """(rows, first canvas column, logits of the columns it covers) for every group of rows forwarded
        together: all active rows at once, or, with a KV cache, rows grouped by their block.

        Fast-dLLM's caches: the first forward of a block is a full one that stores every layer's keys and
        values; the block's later forwards attend to them instead of recomputing them. `prefix` feeds the
        current block and everything after it (the prompt and finished blocks come from the cache); `dual`
        feeds only the current block (the later, still masked blocks come from the cache too)."""
        if not active.any():
            return
        if self.kv_cache == "none":
            rows = active.nonzero(as_tuple=True)[0]
            yield rows, 0, self.dllm.logits(self.ids[rows], self.attn[rows], last=self.L)
            return
        prompt_width = self.ids.shape[1] - self.L
        refresh = active & (self.cached_block != self.block_index)
        for cached in (False, True):
            group = active & (~refresh if cached else refresh)
            for block in self.block_index[group].unique().tolist():
                rows = (group & (self.block_index == block)).nonzero(as_tuple=True)[0]
                start = prompt_width + block * self.BL
                if cached:
                    keep = slice(None) if self.kv_cache == "dual" else slice(0, start)  # prefix: copy no more
                    cache = [(take(k[:, :, keep], rows), take(v[:, :, keep], rows)) for k, v in self.kv]
                    end = start + self.BL if self.kv_cache == "dual" else None
                    logits = self.dllm.logits_with_cache(self.ids[rows], self.attn[rows], cache, start, end)
                    yield rows, block * self.BL, logits
                    continue
                if len(rows) == len(self.ids):
                    self.kv = None  # free the old cache before the new one is built
                logits, cache = self.dllm.logits_and_cache(self.ids[rows], self.attn[rows], last=self.L)
                if len(rows) == len(self.ids):
                    self.kv = cache
                else:
                    if self.kv is None:
                        self.kv = [(k.new_zeros(len(self.ids), *k.shape[1:]), v.new_zeros(len(self.ids), *v.shape[1:]))
                                   for k, v in cache]
                    for (k_all, v_all), (k, v) in zip(self.kv, cache):
                        layer_rows = rows.to(k_all.device)  # device_map: layers may live on other GPUs
                        k_all[layer_rows], v_all[layer_rows] = k, v
                self.cached_block[rows] = block
                yield rows, 0, logits


def take(tensor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows of a cache tensor; the tensor itself (no copy) when every row is wanted."""
    return tensor if len(rows) == tensor.shape[0] else tensor[rows.to(tensor.device)]
