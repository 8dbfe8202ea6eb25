"""Run a sampler over a task's prompts in the dLLM environment and score the answers."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from unmask.envs.config import EnvConfig
from unmask.envs.dllm import DLLM, load_env_dllm
from unmask.envs.mdp import Observation, UnmaskingEnv
from unmask.envs.memory import batch_rows
from unmask.envs.samplers import InBlocks, Oracle, Sampler
from unmask.envs.tasks import Example, Task, make_task
from unmask.rollout.config import EvalConfig, check_eval
from unmask.rollout.generation import Generation, draws_random_numbers, finished, generate
from unmask.rollout.samplers import make_sampler


@dataclass
class Episode:
    """One scored generation."""

    example: Example
    generation: Generation
    correct: bool
    cut_short: bool  # fewer content tokens than the reference: the signature of EOS committed too early


def examples_to_evaluate(task: Task, split: str, n: int, seed: int) -> list[Example]:
    """The examples of `split`; none at all, or a verifier that raises, is an error before any work."""
    examples = task.examples(split, n, seed=seed)
    if not examples:
        raise ValueError(f"no examples to evaluate in the {split!r} split (num_examples, task.test_fraction?)")
    task.verify(examples[0].answer, examples[0])
    return examples


def run_episodes(dllm: DLLM, task: Task, examples: list[Example], sampler: Sampler, env_cfg: EnvConfig,
                 seed: int = 0, progress: bool = False) -> list[Episode]:
    """Decode and score `examples` (env.batch_size sequences per batched forward, 0: what the memory plan fits)."""
    generations = generate(dllm, [ex.prompt for ex in examples], sampler, env_cfg,
                           response_prefix=task.response_prefix, seed=seed, progress=progress)
    return [episode(ex, gen, task) for ex, gen in zip(examples, generations, strict=True)]


def episode(example: Example, generation: Generation, task: Task) -> Episode:
    """A generation scored: correct, and cut short (fewer content tokens than the reference)."""
    return Episode(example, generation, task.verify(generation.text, example),
                   task.content_length(generation.text) < task.content_length(example.answer))


TOGETHER_ROWS = 4096  # rows of one batched env in run_together (unless env.batch_size or the memory plan says fewer)


def run_together(dllm: DLLM, task: Task, examples: list[Example], samplers: list[Sampler], env_cfg: EnvConfig,
                 seed: int = 0) -> list[list[Episode]]:
    """Several deterministic samplers (no random draws, env.temperature 0) on the same examples in one batched env:
    each (sampler, example) is a row, the rows of one example side by side, so what they share runs once (the engine
    forwards identical sequences once: every sampler's first step on a prompt, and later steps while their decisions
    still agree). Per sampler, the same episodes as `run_episodes` (tested), in a fraction of the forwards."""
    if not together(samplers, env_cfg):
        raise ValueError("run_together takes samplers that draw no random numbers (an oracle: of such a reference), at "
                         "env.temperature 0")
    for sampler in samplers:
        sampler.check_env(env_cfg)
    # an oracle's targets are its reference's canvases (Oracle.begin decodes them batch by batch): decoded first, all
    # references together, then handed to each oracle for the rows it decides
    oracles = [s for s, sampler in enumerate(samplers) if isinstance(sampler, Oracle)]
    references = run_together(dllm, task, examples, [samplers[s].reference for s in oracles], env_cfg, seed) \
        if oracles else []
    targets = {s: torch.tensor([e.generation.tokens for e in decoded]) for s, decoded in zip(oracles, references)}
    encoded = dllm.encode_prompts([ex.prompt for ex in examples], task.response_prefix)
    longest = max((len(ids) for ids in encoded), default=0)
    dllm.check_fits(longest, env_cfg.gen_length)
    features = tuple(dict.fromkeys(f for sampler in samplers for f in sampler.features))
    pairs = [(s, n) for n in range(len(examples)) for s in range(len(samplers))]
    rows = batch_rows(dllm, env_cfg, longest, min(TOGETHER_ROWS, len(pairs)), features=features)
    env = UnmaskingEnv.from_config(dllm, env_cfg, seed=seed)
    generations: dict[tuple[int, int], Generation] = {}
    for start in range(0, len(pairs), rows):
        chunk = pairs[start : start + rows]
        mine = {s: torch.tensor([r for r, (t, _) in enumerate(chunk) if t == s]) for s in {s for s, _ in chunk}}
        for s in targets.keys() & mine.keys():
            samplers[s].targets = targets[s][[chunk[r][1] for r in mine[s].tolist()]]
        obs = env.reset([encoded[n] for _, n in chunk], features=features)
        while not env.done:
            decision = torch.zeros_like(obs.valid)
            for s, index in mine.items():
                decision[index.to(decision.device)] = samplers[s].select(rows_of(obs, index.to(decision.device)))
            obs = env.step(decision)
        generations.update(zip(chunk, finished(env), strict=True))
    return [[episode(examples[n], generations[s, n], task) for n in range(len(examples))] for s in range(len(samplers))]


def run_each(dllm: DLLM, task: Task, examples: list[Example], samplers: list[Sampler], env_cfg: EnvConfig,
             seed: int = 0, on_done: Callable[[int], None] = lambda n: None) -> list[list[Episode]]:
    """Each sampler's episodes, as `run_episodes` gives them, in the samplers' order: those that may share one batched
    env (`together`) run together, so what they share is forwarded once; the others one by one. `on_done(n)` after
    each n samplers decoded (a progress bar)."""
    shared = [i for i, sampler in enumerate(samplers) if together([sampler], env_cfg)]
    episodes = dict(zip(shared, run_together(dllm, task, examples, [samplers[i] for i in shared], env_cfg, seed=seed)
                        if shared else [], strict=True))
    if shared:
        on_done(len(shared))
    for i, sampler in enumerate(samplers):
        if i not in episodes:
            episodes[i] = run_episodes(dllm, task, examples, sampler, env_cfg, seed=seed)
            on_done(1)
    return [episodes[i] for i in range(len(samplers))]


def together(samplers: list[Sampler], env_cfg: EnvConfig) -> bool:
    """Whether these samplers may share one batched env (run_together): at temperature 0, none draws random numbers
    (a draw's place in a batch would change it) and none needs its batch before it starts (`begin`), but an oracle
    whose reference may (run_together decodes the reference first) and a sampler deciding in blocks of such a one."""
    def alone_fine(s: Sampler) -> bool:
        if isinstance(s, Oracle):
            return alone_fine(s.reference)
        if isinstance(s, InBlocks):
            return alone_fine(s.inner)
        return not draws_random_numbers(s) and type(s).begin is Sampler.begin

    return env_cfg.temperature == 0 and all(alone_fine(s) for s in samplers)


def rows_of(obs: Observation, index: torch.Tensor) -> Observation:
    """The observation of some rows of a batch (each [B, ...] tensor indexed; the rest as it is)."""
    return dataclasses.replace(obs, **{f.name: getattr(obs, f.name)[index] for f in dataclasses.fields(obs)
                                       if isinstance(getattr(obs, f.name), torch.Tensor)})


def outcome(episode: Episode) -> dict:
    """One example's result, as written to <out stem>.examples.jsonl."""
    g = episode.generation
    return {"id": episode.example.id, "correct": episode.correct, "nfe": g.nfe, "cut_short": episode.cut_short,
            "abandoned": g.abandoned, "completion": g.text, "answer": episode.example.answer, **episode.example.meta}


def by_field(episodes: list[Episode], field: str, gen_length: int) -> list[dict]:
    """summarize() per value of an example field, sorted by value."""
    groups: dict = {}
    for e in episodes:
        groups.setdefault(e.example.meta[field], []).append(e)
    return [{field: value, **summarize(part, gen_length)}
            for value, part in sorted(groups.items(), key=lambda kv: (str(type(kv[0])), kv[0]))]


def summarize(episodes: list[Episode], gen_length: int) -> dict:
    n = len(episodes)
    nfe = torch.tensor([e.generation.nfe for e in episodes], dtype=torch.float64)
    abandoned = [e.generation.abandoned for e in episodes]
    written = torch.tensor([gen_length - a for a in abandoned], dtype=torch.float64)
    return {
        "accuracy": sum(e.correct for e in episodes) / n,
        "mean_nfe": float(nfe.mean()),
        "tokens_per_step": float((written / nfe).mean()),
        "still_masked": sum(abandoned) / n,
        "shorter_than_reference": sum(e.cut_short for e in episodes) / n,
        "num_examples": n,
    }


def evaluate(cfg: EvalConfig, dllm: DLLM | None = None) -> dict:
    """Accuracy, mean NFE and tokens per step of one sampler on `num_examples` prompts."""
    check_eval(cfg)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    task = make_task(cfg.task)
    examples = examples_to_evaluate(task, cfg.split, cfg.num_examples, cfg.seed)
    if cfg.group_by:
        missing = next((ex for ex in examples if cfg.group_by not in ex.meta), None)
        if missing is not None:
            fields = ", ".join(sorted(missing.meta)) or "none"
            raise ValueError(f"group_by={cfg.group_by}: example {missing.id!r} has no such field "
                             f"(its fields: {fields})")
    if dllm is None:
        dllm = load_env_dllm(cfg.model, cfg.env, trust_remote_code=cfg.trust_remote_code)
    sampler = make_sampler(cfg.sampler, torch.Generator(device=dllm.device).manual_seed(cfg.seed))
    start = time.perf_counter()
    episodes = run_episodes(dllm, task, examples, sampler, cfg.env, seed=cfg.seed, progress=cfg.progress)
    result = summarize(episodes, cfg.env.gen_length)
    result["wall_seconds"] = round(time.perf_counter() - start, 3)
    result["sampler"] = sampler.describe()
    result["placement"] = dllm.placement  # env.device / env.dtype as resolved (auto: the GPU and bfloat16, if any)
    result.update(sampler.stats())
    result["samples"] = [{"id": e.example.id, "completion": e.generation.text, "correct": e.correct,
                          "nfe": e.generation.nfe} for e in episodes[:20]]
    if cfg.group_by:
        result["groups"] = by_field(episodes, cfg.group_by, cfg.env.gen_length)
    result["examples"] = [outcome(e) for e in episodes]
    return result


def final_eval(cfg: EvalConfig, alpha: float, alpha_range: list[float], dllm: DLLM | None = None) -> dict:
    """A trained policy on the test prompts (`unmask train`'s final eval); for an alpha-conditioned policy also its NFE
    at both ends of its range on the same prompts: does it answer to alpha?"""
    result = evaluate(cfg, dllm)
    if alpha_range:
        ends = [min(alpha_range), max(alpha_range)]
        nfe = [result["mean_nfe"] if a == alpha else evaluate(dataclasses.replace(
            cfg, sampler=dataclasses.replace(cfg.sampler, alpha=a)), dllm)["mean_nfe"] for a in ends]
        result["alpha_response"] = {"alpha": ends, "mean_nfe": nfe, "responds": nfe[1] < nfe[0] - 0.05}
    return result


def placement() -> dict:
    """Where the calling Ray worker runs (an env runner, a task): its node and the Ray resources it was given, as a
    result's `evaluated_on` records them."""
    import ray

    context = ray.get_runtime_context()
    return {"node": context.get_node_id(), "resources": dict(context.get_assigned_resources())}


def write_eval(cfg: EvalConfig, result: dict) -> dict:
    """out_dir/eval.json (the summary and the resolved config) and out_dir/eval.examples.jsonl (every example's
    outcome), each written atomically; returns the summary."""
    import json

    from unmask.envs.files import write_atomic, write_json

    summary = {k: v for k, v in result.items() if k != "examples"}
    summary["config"] = dataclasses.asdict(cfg)
    out = Path(cfg.out_dir)
    lines = "".join(json.dumps(row, default=str) + "\n" for row in result["examples"])
    write_atomic(out / "eval.examples.jsonl", lines)
    write_json(out / "eval.json", summary)
    return summary
