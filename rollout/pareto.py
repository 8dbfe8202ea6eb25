"""Evaluate a grid of samplers in semi-AR and full-diffusion mode: the accuracy-vs-NFE picture. Saved policies
join the grid; an alpha-conditioned one is drawn as one curve over `policy_alphas`. The oracle (envs.samplers) of
the most accurate references draws the limit line: about the fewest forwards any unmasking order needs."""

from __future__ import annotations

import dataclasses

import torch
from tqdm import tqdm

from unmask.envs.config import SAMPLER_PARAMS, EnvConfig, SamplerConfig
from unmask.envs.dllm import load_env_dllm
from unmask.envs.tasks import make_task
from unmask.learner.policy import load_policy
from unmask.learner.sampler import PolicySampler
from unmask.rollout.config import ParetoConfig, check_pareto, oracle_blocks, pareto_block_lengths
from unmask.rollout.evaluate import Episode, examples_to_evaluate, run_each, summarize
from unmask.rollout.samplers import make_sampler


def default_grid(gen_length: int, num_blocks: int, size: str = "default") -> list[SamplerConfig]:
    """The heuristics and their settings, from slow-and-careful to fast."""
    steps = [s for s in (gen_length, gen_length // 2, gen_length // 4, gen_length // 8)
             if s >= num_blocks and s % num_blocks == 0]
    grid = [SamplerConfig(name="top_k", steps=s) for s in steps]
    grid += [SamplerConfig(name="fast_dllm", threshold=x) for x in (0.99, 0.95, 0.9, 0.8, 0.7, 0.5)]
    grid += [SamplerConfig(name="left_threshold", threshold=x) for x in (0.99, 0.9, 0.8, 0.7, 0.5)]
    grid += [SamplerConfig(name="left_run", threshold=0.9, run_threshold=x) for x in (0.5, 0.4, 0.3)]
    grid += [SamplerConfig(name="frechet", delta=d) for d in (0.5, 0.25, 0.1, 0.02)]
    if size == "small":
        return grid
    grid += [SamplerConfig(name="fast_dllm_factor", factor=f) for f in (0.25, 0.5, 1.0, 2.0)]
    grid += [SamplerConfig(name="margin", steps=s) for s in steps[:3]]
    grid += [SamplerConfig(name="entropy", steps=s) for s in steps[:3]]
    grid += [SamplerConfig(name="eb", gamma=g) for g in (0.01, 0.1, 0.5, 1.0)]
    grid += [SamplerConfig(name="random", k=k) for k in (1, 2, 4)]
    return grid


def oracle_line(gen_length: int, block_length: int, oracle_block_length: int) -> list[SamplerConfig]:
    """The limit line: the oracle of references from one token per step to Fast-dLLM at 0.5, each decoding blocks of
    `oracle_block_length` (at most the panel's BL) inside the canvas; none for 0."""
    if not oracle_block_length:
        return []
    references = ["top_k", f"top_k:steps={gen_length // 2}", *(f"fast_dllm:threshold={x}" for x in (0.9, 0.7, 0.5))]
    blocks = min(block_length, oracle_block_length)
    return [SamplerConfig(name="oracle", reference=r, block_length=0 if blocks == block_length else blocks)
            for r in references]


def policy_settings(checkpoint: str, alphas: list[float]) -> list[SamplerConfig]:
    """A saved policy's points: one, or for an alpha-conditioned policy one per trade-off in `alphas` (one curve)."""
    one = SamplerConfig(name="policy", checkpoint=checkpoint)
    if not load_policy(checkpoint).config.alpha_conditioned:
        return [one]
    return [dataclasses.replace(one, alpha=float(alpha)) for alpha in alphas]


def run_pareto(cfg: ParetoConfig, dllm=None) -> list[dict]:
    """One row per (block length, sampler setting)."""
    check_pareto(cfg)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    task = make_task(cfg.task)
    examples = examples_to_evaluate(task, cfg.split, cfg.num_examples, cfg.seed)
    dllm = dllm or load_env_dllm(cfg.model, cfg.env, trust_remote_code=cfg.trust_remote_code)
    jobs = []  # every sampler is built (and every policy loaded) before the first episode runs
    for block_length in pareto_block_lengths(cfg):
        env_cfg = dataclasses.replace(cfg.env, block_length=block_length)
        grid = default_grid(env_cfg.gen_length, env_cfg.gen_length // block_length, cfg.heuristic_grid)
        grid += [setting for checkpoint in cfg.policies for setting in policy_settings(checkpoint, cfg.policy_alphas)]
        grid += oracle_line(env_cfg.gen_length, block_length, oracle_blocks(cfg))
        for sampler_cfg in grid:
            generator = torch.Generator(device=dllm.device).manual_seed(cfg.seed)
            sampler = make_sampler(sampler_cfg, generator)
            sampler.check_env(env_cfg)
            jobs.append((env_cfg, sampler_cfg, sampler))
    # per panel, the samplers that may share one batched env run together (their first forward on a prompt once for
    # all, later ones while their decisions agree); the others (random draws, the oracle, policies) one by one
    episodes: dict[int, list] = {}
    with tqdm(total=len(jobs), desc="pareto", disable=not cfg.progress) as bar:
        for env_cfg in {id(e): e for e, _, _ in jobs}.values():
            panel = [i for i, (e, _, _) in enumerate(jobs) if e is env_cfg]
            episodes.update(zip(panel, run_each(dllm, task, examples, [jobs[i][2] for i in panel], env_cfg,
                                                seed=cfg.seed, on_done=bar.update), strict=True))
    rows = []
    for i, (env_cfg, sampler_cfg, sampler) in enumerate(jobs):
        mode = "full diffusion" if env_cfg.block_length == env_cfg.gen_length else "semi-AR"
        series = sampler.series if isinstance(sampler, PolicySampler) else sampler_cfg.name
        rows.append({"mode": mode, "block_length": env_cfg.block_length, "sampler": series,
                     "setting": sampler.describe(), **summarize(episodes[i], env_cfg.gen_length)})
    return rows


def spec_of(cfg: SamplerConfig) -> str:
    """A heuristic's settings as the sampler spec that builds it again: `name:param=value;...`."""
    params = SAMPLER_PARAMS[cfg.name]
    return cfg.name + (":" + ";".join(f"{p}={getattr(cfg, p)}" for p in params) if params else "")


def alpha_reward(episodes: list[Episode], gen_length: int, alpha: float) -> float:
    """The mean GRPO reward of a decode at trade-off alpha (multiplicative: correct * ((L - NFE + 1) / L)^alpha)."""
    from unmask.learner.grpo import reward

    correct = torch.tensor([e.correct for e in episodes])
    nfe = torch.tensor([e.generation.nfe for e in episodes])
    return float(reward(correct, nfe, gen_length, alpha).mean())


def choose_teacher(dllm, task, examples, env: EnvConfig, alpha: float, block_length: int = 0, seed: int = 0,
                   grid: str = "default") -> tuple[str, list[dict]]:
    """teachers=[auto]: every heuristic of the pareto grid decodes `examples` (held-out training prompts) in `env`
    (deciding in blocks of `block_length` inside the canvas when given, as the teacher will); the one with the best
    mean reward at `alpha` is the teacher. Returns its spec and one row per candidate (best first)."""
    from unmask.envs.samplers import InBlocks

    candidates = []
    for cfg in default_grid(env.gen_length, env.gen_length // env.block_length, grid):
        sampler = make_sampler(cfg, torch.Generator(device=dllm.device).manual_seed(seed))
        if block_length:
            sampler = InBlocks(sampler, block_length)
        sampler.check_env(env)
        candidates.append((cfg, sampler))
    # the deterministic ones in one batched env (what they share is forwarded once), the others alone
    decodes = run_each(dllm, task, examples, [sampler for _, sampler in candidates], env, seed=seed)
    rows = []
    for (cfg, _), decoded in zip(candidates, decodes, strict=True):
        result = summarize(decoded, env.gen_length)
        rows.append({"teacher": spec_of(cfg), "accuracy": result["accuracy"], "mean_nfe": result["mean_nfe"],
                     "reward": alpha_reward(decoded, env.gen_length, alpha)})
    rows.sort(key=lambda r: (-r["reward"], r["mean_nfe"]))
    return rows[0]["teacher"], rows
