"""`unmask imitate`: clone a teacher sampler into an unmasking policy (learner.imitation), a start on the heuristics'
frontier for GRPO (`unmask train init_from=`).

    round 0   the teachers decode `prompts` training prompts; every state they saw, with their decision, is data
    round r   the student decodes `dagger_prompts` new prompts by evaluation's rule and the teachers label the states
              it reaches (DAgger: it learns to recover from its own mistakes); the data grows
    each      `steps_per_round` optimiser steps on all the data so far

Several teachers make one alpha-conditioned policy: each episode is decoded by one of them (in turn), and the policy
is told the trade-off alpha that teacher stands for (`teacher_alphas`). In full diffusion the teachers may decide in
the leftmost block of `teacher_block_length` inside the canvas (the rule expert steering's experts follow). The
policy is saved in the format every command reads, its config recording the teachers and the data; Ctrl-C saves it.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from unmask.envs.confidence import CANVAS
from unmask.envs.config import SamplerConfig, sampler_spec
from unmask.envs.dllm import DLLM, load_env_dllm
from unmask.envs.files import Interrupted, sigterm_as_interrupt, write_json
from unmask.envs.mdp import UnmaskingEnv
from unmask.envs.memory import batch_rows
from unmask.envs.samplers import InBlocks, Sampler
from unmask.envs.tasks import Example, Task, make_task
from unmask.learner.grpo import fallback_sample
from unmask.learner.imitation import STATE_FIELDS, fit
from unmask.learner.policy import UnmaskingPolicy, save_policy
from unmask.learner.sampler import PolicySampler, policy_inputs
from unmask.rollout.config import AUTO, ImitateConfig, check_imitate
from unmask.rollout.evaluate import examples_to_evaluate, run_episodes, summarize
from unmask.rollout.generation import EVAL_ROWS
from unmask.rollout.pareto import choose_teacher
from unmask.rollout.samplers import make_sampler


def teachers_of(cfg: ImitateConfig) -> list[Sampler]:
    made = [make_sampler(sampler_spec(spec)) for spec in cfg.teachers]
    return [InBlocks(t, cfg.teacher_block_length) if cfg.teacher_block_length else t for t in made]


def student_inputs(cfg: ImitateConfig, teachers: list[Sampler]) -> list[str]:
    """policy.inputs, or when left empty the confidence and every canvas input a teacher reads. A teacher that decides
    on what no confidence carries (left_run: `repeat`) cloned by a student without it is a different rule: refused."""
    read = list(dict.fromkeys(f for t in teachers for f in t.features if f in CANVAS))
    if not cfg.policy.inputs:
        return ["confidence", *read]
    for t in teachers:
        unseen = [f for f in t.features if f in CANVAS and f not in cfg.policy.inputs]
        if unseen:
            raise ValueError(f"teacher {t.describe()} reads {', '.join(unseen)}, which the student would not see: add "
                             f"it to policy.inputs (policy.inputs=[{','.join([*cfg.policy.inputs, *unseen])}], or "
                             f"policy.inputs=[] for what the teachers read)")
    return list(cfg.policy.inputs)


@torch.no_grad()
def collect_states(dllm: DLLM, task: Task, examples: list[Example], teachers: list[Sampler], alphas: list[float],
                   student: PolicySampler | None, cfg: ImitateConfig, generator: torch.Generator) -> dict:
    """Decode `examples` (by the teachers, or by the student when given) and record, at every step of every row,
    the student's inputs and the teacher's decision there. Example i is its teacher i % len(teachers)'s."""
    shape = student.policy.config if student is not None else cfg.policy
    names, hidden_dims = list(shape.inputs), shape.hidden_dims
    features = tuple(dict.fromkeys([*names, *(f for t in teachers for f in t.features)]))
    env = UnmaskingEnv.from_config(dllm, cfg.env, seed=int(torch.randint(1 << 30, (1,), generator=generator)))
    out: dict[str, list[torch.Tensor]] = {name: [] for name in STATE_FIELDS}
    encoded = dllm.encode_prompts([ex.prompt for ex in examples], task.response_prefix)
    longest = max((len(ids) for ids in encoded), default=0)
    rows = batch_rows(dllm, cfg.env, longest, min(EVAL_ROWS, max(1, len(encoded))), features=features)
    for start in range(0, len(encoded), rows):
        prompts = encoded[start : start + rows]
        which = torch.arange(start, start + len(prompts)) % len(teachers)
        alpha = torch.tensor([alphas[i] for i in which.tolist()]) if alphas else torch.ones(len(prompts))
        for teacher in teachers:  # the oracle decodes its reference here: its targets label every state
            teacher.begin(env, prompts)
        obs = env.reset(prompts, features=features)
        while not env.done:
            decisions = torch.stack([t.select(obs) for t in teachers])
            target = decisions[which, torch.arange(len(prompts))]
            running = obs.active.cpu()  # (not `rows`: that is the batch size of the loop above)
            inputs = policy_inputs(obs, names, hidden_dims)
            for name, value in (("inputs", inputs), ("masked", obs.masked), ("valid", obs.valid), ("t", obs.t),
                                ("alpha", alpha), ("target", target)):
                out[name].append(value.detach().cpu()[running].clone())
            if student is None:
                action = target
            else:
                logits = student.logits(obs, alpha if student.policy.config.alpha_conditioned else None)
                action = fallback_sample(logits, obs.valid.to(logits.device), 1.0, generator).to(obs.valid.device)
            obs = env.step(action)
    return {name: torch.cat(parts) for name, parts in out.items()}


def imitate(cfg: ImitateConfig, dllm: DLLM | None = None) -> dict:
    """Collect, fit, DAgger; save the policy to cfg.out_dir and evaluate it (eval.json); returns the summary. `dllm`:
    one already loaded for cfg.model (e.g. `unmask reproduce` loads each dLLM once)."""
    check_imitate(cfg)
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    task = make_task(cfg.task)
    auto = cfg.teachers == [AUTO]
    held_out = cfg.auto_prompts if auto else 0
    pool = task.examples("train", cfg.prompts + cfg.dagger_rounds * cfg.dagger_prompts + held_out, seed=cfg.seed)
    if len(pool) < cfg.prompts + held_out:
        raise ValueError(f"the task has {len(pool)} training examples, fewer than prompts={cfg.prompts}"
                         + (f" + auto_prompts={held_out}" if auto else ""))
    dllm = dllm or load_env_dllm(cfg.model, cfg.env, trust_remote_code=cfg.trust_remote_code)
    dllm.encode_prompts([ex.prompt for ex in pool], task.response_prefix)  # a prompt it cannot read: before any bar
    chosen = None
    if auto:  # the last auto_prompts of the pool: prompts no round of the clone decodes
        pool, probe = pool[: len(pool) - held_out], pool[len(pool) - held_out :]
        spec, candidates = choose_teacher(dllm, task, probe, cfg.env, cfg.auto_alpha, cfg.teacher_block_length,
                                          cfg.seed)
        chosen = {"alpha": cfg.auto_alpha, "prompts": len(probe), "teacher": spec, "candidates": candidates,
                  "seconds": round(time.perf_counter() - started, 1)}
        if cfg.progress:
            best = candidates[0]
            print(f"unmask imitate: teachers=[auto] chose {spec} ({best['accuracy']:.3f} @ {best['mean_nfe']:.2f} "
                  f"NFE, reward {best['reward']:.3f} at alpha={cfg.auto_alpha:g} on {len(probe)} training prompts)",
                  file=sys.stderr, flush=True)
        cfg = dataclasses.replace(cfg, teachers=[spec])
    teachers = teachers_of(cfg)
    for t in teachers:
        t.check_env(cfg.env)
    cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, inputs=student_inputs(cfg, teachers)))
    conditioned = len(teachers) > 1
    policy = UnmaskingPolicy(dataclasses.replace(cfg.policy, alpha_conditioned=conditioned))
    student = PolicySampler(SamplerConfig(name="policy", alpha=cfg.teacher_alphas[0] if conditioned else None),
                            generator, policy=policy)
    rounds = 1 + cfg.dagger_rounds
    bar = tqdm(total=rounds * cfg.steps_per_round, desc="imitate", disable=not cfg.progress, leave=False,
               file=sys.stderr)
    states: dict[str, torch.Tensor] = {}
    record = {"teachers": [t.describe() for t in teachers], "teacher_alphas": list(cfg.teacher_alphas),
              "rounds": [], "model": cfg.model, **({"auto": chosen} if chosen else {})}
    try:
        with sigterm_as_interrupt():
            for r in range(rounds):
                examples = pool[: cfg.prompts] if r == 0 else pool[cfg.prompts + (r - 1) * cfg.dagger_prompts:][
                    : cfg.dagger_prompts]
                if not examples:
                    break
                bar.set_postfix_str(f"round {r}: {'teacher' if r == 0 else 'student'} rollouts")
                new = collect_states(dllm, task, examples, teachers, list(cfg.teacher_alphas),
                                     None if r == 0 else student, cfg, generator)
                states = {k: torch.cat([states[k], v]) if states else v for k, v in new.items()}
                def tick(step: int, loss: float, note: str = f"round {r}, {len(states['target'])} states") -> None:
                    bar.update(1)
                    if step % 50 == 0:
                        bar.set_postfix_str(f"{note}, loss {loss:.3f}")

                loss = fit(policy, states, cfg.steps_per_round, lr=cfg.lr, batch_size=cfg.batch_steps,
                           keep_weight=cfg.keep_weight, generator=generator, on_step=tick)
                record["rounds"].append({"states": len(new["target"]), "total_states": len(states["target"]),
                                         "loss": round(loss, 5), "seconds": round(time.perf_counter() - started, 1)})
    except KeyboardInterrupt:
        bar.close()
        save(policy, cfg, record, interrupted=True)
        raise Interrupted(f"interrupted; saved the policy so far to {cfg.out_dir}") from None
    bar.close()
    save(policy, cfg, record)
    summary = {**record, "seconds": round(time.perf_counter() - started, 1), "out_dir": cfg.out_dir}
    if cfg.eval.num_examples:
        summary["eval"] = evaluate_against_teachers(cfg, dllm)
        if conditioned:
            summary["alpha_response"] = alpha_response(summary["eval"])
            if not summary["alpha_response"]["responds"]:
                print(f"unmask imitate: WARNING: {summary['alpha_response']['why']}", file=sys.stderr, flush=True)
    write_json(Path(cfg.out_dir) / "imitate.json", summary)
    return summary


def alpha_response(rows: list[dict]) -> dict:
    """Whether an alpha-conditioned clone answers to alpha: its NFE falls (or holds) as alpha grows, over at least a
    third of the NFE range its teachers span."""
    mine = sorted((r["alpha"], r["mean_nfe"]) for r in rows if r["who"] == "policy")
    theirs = [r["mean_nfe"] for r in rows if r["who"] == "teacher"]
    nfe = [n for _, n in mine]
    monotone = all(later <= earlier + 0.05 for earlier, later in zip(nfe, nfe[1:]))
    spread, needed = nfe[0] - nfe[-1], (max(theirs) - min(theirs)) / 3
    curve = ", ".join(f"{n:.2f} at alpha={a:g}" for a, n in mine)
    why = ("" if monotone and spread >= needed else f"the clone's NFE is {curve}: " + (
        "not falling as alpha grows" if not monotone else f"a spread of {spread:.2f}, under a third of its teachers' "
        f"({3 * needed:.2f})") + ": it does not answer to alpha as its teachers do")
    return {"responds": not why, "monotone": monotone, "nfe_spread": spread, "teachers_nfe_spread": 3 * needed,
            "why": why}


def save(policy: UnmaskingPolicy, cfg: ImitateConfig, record: dict, interrupted: bool = False) -> None:
    """The policy in the format every command reads; its config says how it was made (and that it is a clone)."""
    info = {"imitation": {**record, "prompts": cfg.prompts, "dagger_rounds": cfg.dagger_rounds,
                          "dagger_prompts": cfg.dagger_prompts, "steps_per_round": cfg.steps_per_round,
                          "lr": cfg.lr, "keep_weight": cfg.keep_weight, "seed": cfg.seed, "interrupted": interrupted},
            "teacher": " / ".join(record["teachers"]), "gen_length": cfg.env.gen_length,
            "block_length": cfg.env.block_length, "kv_cache": cfg.env.kv_cache, "model": cfg.model,
            "reward": "multiplicative"}
    if cfg.teacher_alphas:
        info.update(alpha=cfg.teacher_alphas[0], alpha_range=[min(cfg.teacher_alphas), max(cfg.teacher_alphas)])
    save_policy(policy, cfg.out_dir, info, keep_others=True)  # a notes file beside it stays


def evaluate_against_teachers(cfg: ImitateConfig, dllm: DLLM) -> list[dict]:
    """Each teacher and the clone (at that teacher's alpha when conditioned) on `eval.num_examples` test prompts."""
    task = make_task(cfg.task)
    examples = examples_to_evaluate(task, "test", cfg.eval.num_examples, cfg.seed)
    rows = []
    for spec, teacher, alpha in zip(cfg.teachers, teachers_of(cfg), list(cfg.teacher_alphas) or [None], strict=True):
        clone = make_sampler(SamplerConfig(name="policy", checkpoint=cfg.out_dir, alpha=alpha),
                             torch.Generator().manual_seed(cfg.seed))
        for who, sampler in (("teacher", teacher), ("policy", clone)):
            result = summarize(run_episodes(dllm, task, examples, sampler, cfg.env, seed=cfg.seed),
                               cfg.env.gen_length)
            rows.append({"who": who, "teacher": spec, "alpha": alpha, "sampler": sampler.describe(),
                         "accuracy": result["accuracy"], "mean_nfe": result["mean_nfe"], **sampler.stats()})
    return rows
