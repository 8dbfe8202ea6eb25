"""Masked-diffusion sampling as an MDP with the frozen dLLM as the environment (arXiv 2512.09106 §3.1).

State: prompt + a canvas of L positions, masked at the start, split into blocks of BL decoded left to
right. Each step is ONE dLLM forward over prompt + canvas; it yields, per position, the token that
would be written and its confidence features (envs.confidence). A sampler answers with a boolean
unmask decision over the masked positions of the current block; the env writes those tokens, never
remasks, moves to the next block once the current one is fully unmasked, and the episode ends when
no position is masked. NFE counts one forward per still-unfinished sequence; finished rows leave the
batch and cost nothing more.

A step that unmasks nothing (possible for a stochastic policy in training) still costs an NFE. As in
the paper's code, a block gets at most BL forwards (so NFE <= L); positions still masked then are
*abandoned*: they keep the mask token (an answer with one before its first EOS cannot verify; after it, the answer is
already complete), and they are no longer `masked`
(nothing may unmask them) but `abandoned`. With `fill_at_budget` (a training option) they are written instead,
with the last forward's predictions: the trajectory still pays NFE = the block's whole budget, but its answer is
scored, so a policy that unmasks too little still sees which of its rollouts were right.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unmask.envs.confidence import CANVAS, FEATURES, HIDDEN, HISTORY, History, Prediction, neighbour_repeat, predict
from unmask.envs.config import EnvConfig, check_env
from unmask.envs.dllm import DLLM, layout_batch
from unmask.envs.engine import ForwardEngine


class SamplerError(ValueError):
    """A sampler's decision that breaks the MDP's rules."""


@dataclass
class Observation:
    """Everything a sampler may look at, per row ([B] or [B, L] tensors), valid until the next step (the env
    updates its tensors in place; keep a copy of what you keep). Only the features the sampler reads are
    there (`reset(features=...)`), the others are None. With a KV cache, columns a cached forward does not
    recompute (finished blocks; with `dual`, also later blocks) keep their values from the block's refresh:
    train a policy with the cache setting it will be evaluated with."""

    confidence: torch.Tensor | None  # float32 top-1 probability
    token_prob: torch.Tensor | None  # float64 probability of the token that would be written
    margin: torch.Tensor | None  # float64
    entropy: torch.Tensor | None  # float64
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
    tokens: torch.Tensor | None = None  # long: the token each position would be written with (argmax or Gumbel-max)
    stable_steps: torch.Tensor | None = None  # float32: forwards its predicted token has not changed (History)
    confidence_ema: torch.Tensor | None = None  # float32: exponential average of its confidence (History)
    confidence_delta: torch.Tensor | None = None  # float32: its confidence's last change (History)
    repeat: torch.Tensor | None = None  # bool: its token would equal a neighbour's (envs.confidence.neighbour_repeat)
    # [B, L, d] the dLLM's last hidden state at each position, from the same forward (the model's dtype; a policy
    # reads a fixed view of it: envs.confidence.HiddenView)
    hidden: torch.Tensor | None = None

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length


class UnmaskingEnv:
    """A batch of unmasking episodes over one frozen dLLM. Rows finish independently; with `start_rows` a
    finished row takes a new episode (continuous batching), in another block and step than its neighbours."""

    def __init__(self, dllm: DLLM, gen_length: int, block_length: int, temperature: float = 0.0, seed: int = 0,
                 kv_cache: str = "none", fill_at_budget: bool = False):
        check_env(EnvConfig(gen_length=gen_length, block_length=block_length, temperature=temperature,
                            kv_cache=kv_cache))
        self.dllm, self.L, self.BL = dllm, gen_length, block_length
        self.temperature, self.fill_at_budget = temperature, fill_at_budget
        self.engine = ForwardEngine(dllm, gen_length, block_length, kv_cache)
        self.generator = torch.Generator(device=dllm.device).manual_seed(seed)

    @classmethod
    def from_config(cls, dllm: DLLM, env: EnvConfig, seed: int = 0, fill_at_budget: bool = False) -> UnmaskingEnv:
        return cls(dllm, env.gen_length, env.block_length, env.temperature, seed=seed, kv_cache=env.kv_cache,
                   fill_at_budget=fill_at_budget)

    # ---- episodes ------------------------------------------------------------------------------------
    def reset(self, prompts: list[list[int]], features: tuple[str, ...] = FEATURES) -> Observation:
        """New episodes in every row; `features` are the confidence features the sampler reads."""
        if not prompts:
            raise ValueError("reset needs at least one prompt")
        self.dllm.check_fits(max(len(p) for p in prompts), self.L)
        device = self.dllm.device
        ids, attn = layout_batch(prompts, self.L, self.dllm.pad_id, self.dllm.mask_id)
        self.ids, self.attn = ids.to(device), attn.to(device)
        width = max(len(p) for p in prompts)
        self.pad_width = [width - len(p) for p in prompts]  # on the host, as laid out: `padded` reads no device
        B = len(prompts)
        self.masked = torch.ones(B, self.L, dtype=torch.bool, device=device)
        self.abandoned = torch.zeros_like(self.masked)
        self.valid = torch.zeros_like(self.masked)
        self.unmask_step = torch.full((B, self.L), -1, dtype=torch.long, device=device)
        self.nfe = torch.zeros(B, dtype=torch.long, device=device)
        self.block_index = torch.zeros_like(self.nfe)
        self.block_step = torch.zeros_like(self.nfe)
        self.position_block = torch.arange(self.L, device=device) // self.BL
        self.history = History(B, self.L, device) if set(features) & set(HISTORY) else None
        self.reads_canvas = bool(set(features) & set(CANVAS))
        self.reads_hidden = bool(set(features) & set(HIDDEN))
        self.hidden = None  # [B, L, d], allocated at the first forward that computes it (d and dtype are the model's)
        per_forward = [f for f in features if f in FEATURES] + (["confidence"] if self.history else [])
        self.features = tuple(dict.fromkeys(per_forward))
        self.pred = Prediction(tokens=torch.zeros(B, self.L, dtype=torch.long, device=device), **{
            name: torch.zeros(B, self.L, device=device, dtype=torch.float32 if name == "confidence" else torch.float64)
            for name in self.features})
        self.engine.reset(B)
        return self.observe()

    def start_rows(self, rows: list[int], prompts: list[list[int]]) -> None:
        """New episodes in finished rows (continuous batching); they are observed at the next `observe()`. A
        prompt longer than the batch's widens the left padding of every row (real positions do not change), and
        with a KV cache every running row then refreshes its cache at its next forward, earlier than alone."""
        rows_t = torch.tensor(rows, dtype=torch.long, device=self.masked.device)
        if self.masked[rows_t].any():
            raise ValueError("start_rows: a row that is still running cannot take a new episode")
        self.dllm.check_fits(max(len(p) for p in prompts), self.L)
        width = self.ids.shape[1] - self.L
        longest = max(len(p) for p in prompts)
        if longest > width:  # every row gets more left padding; cached keys sit at other columns: refresh all
            grow = longest - width
            pad = self.ids.new_full((len(self.ids), grow), self.dllm.pad_id)
            self.ids = torch.cat([pad, self.ids], dim=1)
            self.attn = torch.cat([torch.zeros_like(pad), self.attn], dim=1)
            self.engine.reset(len(self.ids))  # the caches have the old width
            self.pad_width = [w + grow for w in self.pad_width]
            width = longest
        ids, attn = layout_batch(prompts, self.L, self.dllm.pad_id, self.dllm.mask_id, width=width)
        self.ids[rows_t], self.attn[rows_t] = ids.to(self.ids.device), attn.to(self.ids.device)
        for row, prompt in zip(rows, prompts):
            self.pad_width[row] = width - len(prompt)
        self.masked[rows_t] = True
        self.abandoned[rows_t] = False
        self.unmask_step[rows_t] = -1
        for state in (self.nfe, self.block_index, self.block_step):
            state[rows_t] = 0
        self.engine.forget(rows_t)

    def step(self, unmask: torch.Tensor) -> Observation:
        """Write the predicted tokens at `unmask` ([B, L] bool, a subset of `obs.valid`), then observe."""
        self.apply(unmask)
        return self.observe()

    def apply(self, unmask: torch.Tensor) -> None:
        """The rules: write the decided tokens, never remask, spend the block's budget, move to the next block."""
        unmask = unmask.to(self.masked.device, torch.bool)
        if unmask.shape != self.masked.shape:
            raise SamplerError(f"decision has shape {tuple(unmask.shape)}, expected {tuple(self.masked.shape)}")
        if (unmask & ~self.valid).any():
            raise SamplerError("decision unmasks a position that is not a masked position of the current block")
        canvas = self.ids[:, -self.L:]
        canvas.copy_(torch.where(unmask, self.pred.tokens, canvas))
        self.masked &= ~unmask
        self.unmask_step.copy_(torch.where(unmask, self.nfe[:, None] - 1, self.unmask_step))
        ran = self.valid.any(-1)  # the rows that were observed: each spent a forward on its block
        self.block_step += ran
        in_block = self.in_block  # as observed: block_index has not moved since
        block_left = (self.masked & in_block).any(-1)
        out_of_steps = ran & block_left & (self.block_step >= self.BL)
        if out_of_steps.any():  # what the block did not finish: abandoned (its mask tokens stay), or filled
            left = self.masked & in_block & out_of_steps[:, None]
            if self.fill_at_budget:
                canvas.copy_(torch.where(left, self.pred.tokens, canvas))
                self.unmask_step.copy_(torch.where(left, self.nfe[:, None] - 1, self.unmask_step))
            else:
                self.abandoned |= left
            self.masked &= ~left
        advance = ran & ~(self.masked & in_block).any(-1) & self.masked.any(-1)
        self.block_index += advance
        self.block_step.masked_fill_(advance, 0)
        self.valid.zero_()

    @property
    def padded(self) -> bool:
        """Whether any row has left padding (finished rows too): known on the host, so the forwards of a batch
        without padding skip the attention mask without reading the device."""
        return any(self.pad_width)

    @property
    def done(self) -> bool:
        return not bool(self.masked.any())

    @property
    def active(self) -> torch.Tensor:
        return self.masked.any(-1)

    def canvas(self) -> torch.Tensor:
        return self.ids[:, -self.L:].clone()

    # ---- one dLLM forward ----------------------------------------------------------------------------
    def observe(self) -> Observation:
        """One forward for every active row (the engine decides how): the next decision's features."""
        active = self.active
        steps_done = self.nfe.clone()
        attn = self.attn if self.padded else None
        hidden = {"hidden": True} if self.reads_hidden else {}  # asked only when read: no cost otherwise
        for rows, first_column, logits, state in self.engine.logits(self.ids, attn, active, self.block_index,
                                                                      **hidden):
            part = predict(logits, self.temperature, self.dllm.mask_id, self.generator, self.features)
            whole = len(rows) == len(self.ids) and logits.shape[1] == self.L
            columns = slice(first_column, first_column + logits.shape[1])
            for name in ("tokens", *self.features):
                if whole:  # every row and column computed afresh: the new tensors are the buffers
                    setattr(self.pred, name, getattr(part, name))
                else:
                    getattr(self.pred, name)[rows, columns] = getattr(part, name)
            if state is not None:
                if whole:
                    self.hidden = state
                else:
                    if self.hidden is None or self.hidden.shape[0] != len(self.ids):
                        self.hidden = state.new_zeros(len(self.ids), self.L, state.shape[-1])
                    self.hidden[rows, columns] = state
        self.nfe += active
        if self.history is not None:
            self.history.update(self.pred.tokens, self.pred.confidence, active, steps_done == 0)
        self.in_block = self.position_block[None, :] == self.block_index[:, None]
        torch.logical_and(self.masked & self.in_block, active[:, None], out=self.valid)
        p, h = self.pred, self.history
        repeat = neighbour_repeat(p.tokens, self.ids[:, -self.L:], self.masked) if self.reads_canvas else None
        return Observation(
            confidence=p.confidence, token_prob=p.token_prob, margin=p.margin, entropy=p.entropy,
            masked=self.masked, abandoned=self.abandoned, valid=self.valid, t=steps_done.float() / self.L,
            nfe=self.nfe, block_step=self.block_step, block_index=self.block_index, active=active,
            block_length=self.BL, gen_length=self.L, tokens=p.tokens, repeat=repeat, hidden=self.hidden,
            **{name: None if h is None else getattr(h, name) for name in HISTORY},
        )
