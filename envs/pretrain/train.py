"""Train a small dLLM with the masked-diffusion objective (LLaDA's SFT recipe, scaled down).

Per example: t ~ U(0, 1) (stratified over the batch); every answer position, EOS padding included,
is masked with probability t; the prompt is never masked. The loss is the cross-entropy on masked
positions weighted by 1/t and divided by the canvas length L:

    loss = E_t [ (1 / (t * L)) * sum_{i masked} -log p(x_i | x_t) ]

which is the masked-diffusion ELBO of LLaDA (Nie et al. 2025, eq. 3 / SFT eq. 5).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tqdm import tqdm
from transformers import AutoModelForMaskedLM, AutoTokenizer

from unmask.envs.dllm import check_model_path, layout_batch, loading, real_positions
from unmask.envs.files import Interrupted, publish_dir, sigterm_as_interrupt
from unmask.envs.optim import adamw
from unmask.envs.pretrain.config import PretrainConfig, check_pretrain
from unmask.envs.pretrain.model import new_builtin_model
from unmask.envs.tasks import Task, make_task
from unmask.envs.tokenizer import build_char_tokenizer


def training_texts(task: Task, cfg: PretrainConfig) -> tuple[list[str], callable]:
    """Texts for the vocabulary, and a function drawing a batch of (prompt, answer) training pairs: fresh examples of
    a generated family (cycles, map), or a sample of a file's training split."""
    rng = random.Random(f"pretrain/{cfg.seed}")
    if hasattr(task, "pretrain_example"):

        def draw(n: int) -> list[tuple[str, str]]:
            pairs = []
            while len(pairs) < n:
                ex = task.pretrain_example(rng)
                pairs.append((ex.prompt, ex.answer))
            return pairs

        return [task.alphabet], draw
    train = task.examples("train", n=-1)
    if not train:
        raise ValueError(f"task {cfg.task.name!r} has no training examples")

    def draw_file(n: int) -> list[tuple[str, str]]:
        return [(ex.prompt, ex.answer) for ex in rng.choices(train, k=n)]

    everything = train + task.examples("test", n=-1)  # the vocabulary covers every character of the file
    return [t for ex in everything for t in (ex.prompt, ex.answer)], draw_file


def masked_diffusion_loss(model, ids: torch.Tensor, attn: torch.Tensor, canvas: torch.Tensor,
                          mask_id: int, generator: torch.Generator, min_t: float = 1e-3) -> torch.Tensor:
    """The 1/t-weighted masked cross-entropy above; `canvas` marks the L answer positions."""
    batch, gen_length = ids.shape[0], int(canvas[0].sum())
    u = (torch.arange(batch) + torch.rand(batch, generator=generator)) / batch  # stratified U(0,1)
    t = (min_t + (1 - min_t) * u)[:, None]
    masked = canvas & (torch.rand(ids.shape, generator=generator) < t)
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    logits = model(input_ids=noisy, attention_mask=attn, position_ids=real_positions(attn)).logits
    ce = F.cross_entropy(logits[masked], ids[masked], reduction="none")
    weights = (1.0 / t).expand_as(ids)[masked]
    return (ce * weights).sum() / (batch * gen_length)


def grow_positions(model, context: int, at: int = -1) -> None:
    """Give a saved model a longer context: insert `context - old` learned position rows at index `at`
    (-1: at the end). Rows after `at` move up with their learned values, so a task whose prompt grew in
    the middle keeps everything after the insertion where the model learned it. New rows start as the
    row before them plus small noise (they must become distinguishable from it)."""
    embeddings = getattr(model.base_model, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if not isinstance(table, torch.nn.Embedding):
        raise ValueError(f"init_from model ({model.config.model_type}) has no learned position table to grow; "
                         "pretrain a new model for this task instead")
    old = table.num_embeddings
    at = old if at < 0 else at
    if not 1 <= at <= old:
        raise ValueError(f"grow_positions_at must be -1 or in 1..{old}, got {at}")
    weight = table.weight.data
    new_rows = weight[at - 1].expand(context - old, -1).clone()
    new_rows += 0.02 * torch.randn_like(new_rows)
    grown = torch.nn.Embedding(context, weight.shape[1])
    grown.weight.data = torch.cat([weight[:at], new_rows, weight[at:]])
    embeddings.position_embeddings = grown
    # BERT's non-persistent id buffers are sized to the old context
    if hasattr(embeddings, "position_ids"):
        embeddings.register_buffer("position_ids", torch.arange(context).unsqueeze(0), persistent=False)
    if hasattr(embeddings, "token_type_ids"):
        embeddings.register_buffer("token_type_ids", torch.zeros(1, context, dtype=torch.long), persistent=False)
    model.config.max_position_embeddings = context


def build_model(cfg: PretrainConfig, tokenizer, context: int):
    """A fresh built-in-size dLLM, or `init_from` with its vocabulary and context grown to fit."""
    if not cfg.init_from:
        ids = {"pad": tokenizer.pad_token_id, "mask": tokenizer.mask_token_id, "eos": tokenizer.eos_token_id}
        return new_builtin_model(len(tokenizer), context, cfg.size, ids)
    with loading(cfg.init_from):
        model = AutoModelForMaskedLM.from_pretrained(check_model_path(cfg.init_from))
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    if model.config.max_position_embeddings < context:
        grow_positions(model, context, cfg.grow_positions_at)
    return model


def make_batch(pairs: list[tuple[str, str]], tokenizer, gen_length: int) -> tuple[torch.Tensor, ...]:
    """(ids, attention mask, canvas) of [left padding | prompt | answer + EOS padding]; `canvas` marks the
    gen_length answer positions, the only ones the loss masks."""
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p, _ in pairs]
    ids, attn = layout_batch(prompts, gen_length, tokenizer.pad_token_id, tokenizer.mask_token_id)
    width = ids.shape[1] - gen_length
    ids[:, width:] = tokenizer.eos_token_id
    for row, (_, answer) in enumerate(pairs):
        ans = tokenizer(answer, add_special_tokens=False)["input_ids"][: gen_length - 1]
        ids[row, width : width + len(ans)] = torch.tensor(ans, dtype=torch.long)
    canvas = torch.zeros_like(ids, dtype=torch.bool)
    canvas[:, width:] = True
    return ids, attn, canvas


class Schedule:
    """Warm-up + cosine to 10% (envs.optim.warmup_cosine) over the budget that ends the run, steps or minutes:
    progress is the further along of step / max_steps and elapsed / minutes, and the warm-up takes the same share of
    the run (warmup_steps of the steps the run will make, estimated from its pace when the minutes end it first), so
    a slow machine warms up over a slow start instead of spending its budget there."""

    def __init__(self, cfg: PretrainConfig):
        self.cfg, self.start = cfg, time.time()

    def elapsed(self) -> float:
        return time.time() - self.start

    def out_of_budget(self, step: int) -> bool:
        return step >= self.cfg.max_steps or self.elapsed() >= self.cfg.max_minutes * 60

    def expected_steps(self, step: int) -> float:
        """The steps this run will make: max_steps, or fewer when its pace runs out of minutes first."""
        if step < 1:
            return self.cfg.max_steps
        return min(self.cfg.max_steps, step / max(self.elapsed(), 1e-9) * self.cfg.max_minutes * 60)

    def eta(self, step: int) -> float:
        """Seconds left: whichever budget, steps or minutes, runs out first."""
        by_time = self.cfg.max_minutes * 60 - self.elapsed()
        by_steps = (self.cfg.max_steps - step) * self.elapsed() / max(step, 1)
        return max(0.0, min(by_time, by_steps))

    def lr(self, step: int) -> float:
        cfg = self.cfg
        progress = min(1.0, max(step / cfg.max_steps, self.elapsed() / (cfg.max_minutes * 60)))
        warmup = min(0.5, cfg.warmup_steps / max(self.expected_steps(step), 1))
        if progress < warmup:
            return cfg.lr * progress / warmup
        decay = (progress - warmup) / max(1e-9, 1 - warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * decay)))


def pretrain(cfg: PretrainConfig) -> dict:
    """Train and save a built-in-size dLLM (HF format, safetensors) with its tokenizer to `cfg.out_dir`. Ctrl-C or
    SIGTERM saves the model so far (a complete one) and raises Interrupted."""
    check_pretrain(cfg)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    task = make_task(cfg.task)
    vocab_texts, draw = training_texts(task, cfg)
    # init_from keeps the model's token ids; characters it has never seen are appended to its vocabulary
    tokenizer = build_char_tokenizer(vocab_texts, load_init_tokenizer(cfg.init_from) if cfg.init_from else None)
    longest_prompt, longest_answer = longest_example(task, cfg, draw)
    if longest_answer >= cfg.env.gen_length:
        raise ValueError(f"env.gen_length={cfg.env.gen_length} is too short for answers of {longest_answer} "
                         "characters (one EOS must fit)")
    context = longest_prompt + cfg.env.gen_length
    if context > cfg.max_context:  # before any batch: the model's size follows from it
        raise ValueError(f"the longest prompt ({longest_prompt:,} characters) + env.gen_length needs a context of "
                         f"{context:,} positions, more than max_context={cfg.max_context:,} "
                         "(raise it, or keep such prompts out with task.max_prompt_chars)")
    model = build_model(cfg, tokenizer, longest_prompt + cfg.env.gen_length).train()
    optimizer = adamw(model.parameters(), cfg.lr, cfg.weight_decay, (0.9, 0.98))
    schedule = Schedule(cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    step, ema, last_save, recent = 0, None, schedule.start, []
    n_params = sum(p.numel() for p in model.parameters())
    print(f"pretrain: {n_params:,} parameters, vocab {len(tokenizer)}, context {model.config.max_position_embeddings}",
          flush=True)

    def record(**extra) -> dict:
        summary = {"steps": step, "final_loss_ema": ema, "seconds": round(schedule.elapsed(), 1),
                   "parameters": n_params, "command": "unmask pretrain " + " ".join(sys.argv[2:]),
                   "config": OmegaConf.to_container(OmegaConf.structured(cfg)), **extra}
        if cfg.init_from:  # the shape came from the earlier model; keep its recipe as the first stage
            summary["config"]["size"] = "from init_from"
            earlier = Path(cfg.init_from) / "pretrain.json"
            summary["init_from_pretrain"] = json.loads(earlier.read_text()) if earlier.exists() else None
        return summary

    bar = tqdm(total=cfg.max_steps, disable=not cfg.progress, desc="pretrain", unit="step",
               bar_format="{desc} {n_fmt} steps [{elapsed}] {postfix}")
    try:
        with sigterm_as_interrupt():
            while not schedule.out_of_budget(step):
                ids, attn, canvas = make_batch(draw(cfg.batch_size), tokenizer, cfg.env.gen_length)
                for group in optimizer.param_groups:
                    group["lr"] = schedule.lr(step)
                loss = masked_diffusion_loss(model, ids, attn, canvas, tokenizer.mask_token_id, generator,
                                             cfg.min_mask_ratio)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
                recent.append(loss.item())
                step += 1
                bar.update(1)
                bar.set_postfix_str(f"loss {ema:.4f}  lr {schedule.lr(step):.1e}  eta {schedule.eta(step):.0f}s",
                                    refresh=False)
                if step % cfg.log_every == 0:  # the loss of these log_every steps, not a lagging average
                    print(f"step {step} loss {sum(recent) / len(recent):.4f} lr {schedule.lr(step):.2e} "
                          f"grad {grad_norm:.2f} elapsed {schedule.elapsed():.0f}s", flush=True)
                    recent = []
                if cfg.save_every_minutes and time.time() - last_save > cfg.save_every_minutes * 60:
                    save_model(model, tokenizer, Path(cfg.out_dir), record(partial=True))
                    last_save = time.time()
    except KeyboardInterrupt:
        bar.close()
        save_model(model.eval(), tokenizer, Path(cfg.out_dir), record(partial=True, interrupted=True))
        raise Interrupted(f"interrupted at step {step}: saved the model so far to {cfg.out_dir}") from None
    bar.close()
    summary = record()
    save_model(model.eval(), tokenizer, Path(cfg.out_dir), summary)
    return summary


def load_init_tokenizer(path: str):
    """init_from's tokenizer; a path that is not a saved model is a one-line error."""
    with loading(path):
        return AutoTokenizer.from_pretrained(check_model_path(path))


def longest_example(task: Task, cfg: PretrainConfig, draw) -> tuple[int, int]:
    """(longest prompt, longest answer) in characters, which size the model's context: for a generated family a
    sample's longest prompt and the family's longest answer; for a file over every example, test split included."""
    if hasattr(task, "pretrain_example"):
        return max(len(p) for p, _ in draw(512)), task.max_answer_length()
    everything = task.examples("train", n=-1) + task.examples("test", n=-1)
    return max(len(ex.prompt) for ex in everything), max(len(ex.answer) for ex in everything)


def save_model(model, tokenizer, out: Path, summary: dict) -> None:
    """The model, its tokenizer and pretrain.json (written last: the record of a complete save)."""
    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "pretrain.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")

    publish_dir(out, fill, last="pretrain.json")
