"""`unmask reproduce`: the paper's findings (arXiv 2512.09106 §4, App. B) in miniature, on the built-in dLLM and task,
by one command.

Resumable: every part records its result in `out_dir/done/<part>.json` when it finishes, and a part already done
is skipped (and said so); an interrupted training resumes from its last checkpoint. The parts:

    heuristics at every test seed, per setting     six heuristic settings (HEURISTICS)             findings 1-6
    train/full-s<k>, train/semiar-s<k>            GRPO at alpha, full diffusion / BL = 8          2, 6, 7
    train/additive-s<k>                            the same as full, with the additive reward      3
    imitate/recipe-<mode>-s<k>,                    the recipe beside the paper's method: `unmask       2
    train/recipe-<mode>-s<k>                       imitate` (left_run cloned), then `unmask train` from
                                                   the clone, both at their defaults (checkpoints/best
                                                   by held-out validation)
    dllm2                                          a second dLLM: `unmask pretrain` from the built-in one with
                                                   another seed, a canvas of `long_gen_length` and a JSONL of two
                                                   task families, cycles and `map` (below; its recipe is in
                                                   findings.json)                                  4, 5, 6
    train/dllm2-s<k>                               GRPO on the second dLLM, full diffusion, L = 24  4, 5
    eval/<setting>/<sampler>-t<seed>               every policy and heuristic at every test seed   all

Each finding is one row of findings.md / findings.json: the claim, the paper's figure, ours (policy points are the
mean over training x test seeds with the min-max spread), and whether it holds here. The plots are `unmask pareto`'s
(`<setting>/pareto.png`). `readme=README.md` also writes findings.md into the README between its findings markers.

The out-of-domain family (finding 6) is `map` (envs.tasks.map): the same permutation, then a word whose letters are
all mapped by it; every letter can be written at once, where a cycle must be traced letter by letter. Policies are
trained on cycles only and never see it. Each dLLM is loaded once and serves every evaluation on it.
"""

from __future__ import annotations

import dataclasses
import json
import random
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from unmask.envs.config import SAMPLER_PARAMS, EnvConfig, SamplerConfig, TaskConfig, sampler_spec
from unmask.envs.files import Interrupted, write_atomic, write_json
from unmask.envs.pretrain.config import PretrainConfig
from unmask.experiments.config import CANVAS_KEYS, README_MARKERS, ReproduceConfig, check_reproduce, resolved
from unmask.rollout.config import ImitateConfig, ImitateEval

PAPER_FIGURES = {
    1: "Fig. 1/10: heuristics 'degrade significantly' without semi-AR; GSM8K full diffusion ≤ ~34% at any NFE",
    2: "Fig. 4-6: semi-AR policy ≈ Fast-dLLM (75.5 vs 74.2 @ ≈46 NFE), full diffusion 48.3 @ 13 NFE vs ≤ 30%",
    3: "Fig. 9, α = 1: the additive reward hacks (NFE to the minimum, answers often wrong); multiplicative is stable",
    4: "Fig. 8a/17: LLaDA → Dream comparable to Dream-specific policies, mostly close to Fast-dLLM",
    5: "Fig. 4/18: L 256 → 512 'almost identical'; heuristics degrade further",
    6: "v1/v2 abstract: performance degrades on out-of-domain data (math → code, Fig. 8b/c)",
    7: "two training seeds (one kept), three test seeds, mean ± spread",
}
HEURISTICS = [SamplerConfig(name="top_k", steps=0), SamplerConfig(name="fast_dllm", threshold=0.9),
              SamplerConfig(name="fast_dllm", threshold=0.7), SamplerConfig(name="fast_dllm", threshold=0.5),
              SamplerConfig(name="eb", gamma=0.5), SamplerConfig(name="eb", gamma=1.0)]


class Parts:
    """The ledger of finished parts: `run(name, work, depends)` does the work once and remembers its result beside the
    settings it depends on. A part done with other settings is done again (an evaluation), or, for one that left a
    run or a model behind (a training, the second dLLM), refused in one line before any work (`check`)."""

    def __init__(self, out_dir: Path, say_as: str = "unmask reproduce"):
        self.folder, self.say_as = out_dir / "done", say_as  # say_as: whose progress lines these are

    def path(self, name: str) -> Path:
        return self.folder / f"{name.replace('/', '__')}.json"

    def recorded(self, name: str) -> dict | None:
        try:
            record = json.loads(self.path(name).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and "depends" in record else {"depends": None}

    def check(self, name: str, depends: dict) -> None:
        """Refuse a part whose recorded settings differ (its run or model would be reused under the new ones)."""
        record = self.recorded(name)
        if record is not None and record["depends"] != depends:
            was = record["depends"]
            diff = "an earlier ledger, which did not record them" if was is None else ", ".join(
                f"{k}={was.get(k)!r} (now {v!r})" for k, v in depends.items() if was.get(k) != v)
            raise ValueError(f"{self.folder.parent} holds {name} computed with other settings ({diff}): choose a new "
                             "out_dir")

    def run(self, name: str, work, depends: dict) -> dict:
        record = self.recorded(name)
        if record is not None and record["depends"] == depends:
            print(f"{self.say_as}: {name}: done before, skipped", file=sys.stderr, flush=True)
            return record["result"]
        print(f"{self.say_as}: {name} ...", file=sys.stderr, flush=True)
        result = work()
        write_json(self.path(name), {"depends": depends, "result": result})
        return result


TRAINING_KEYS = ("gen_length", "alpha", "lr", "train_minutes", "max_iterations", "num_env_runners", "groups_per_update",
                 "train_pool")
DLLM2_KEYS = ("pretrain_minutes", "pretrain_examples", "long_gen_length")
EVAL_KEYS = ("num_examples", "gen_length", "long_gen_length")
IMITATE_KEYS = ("gen_length", "block_length", "imitate_prompts", "imitate_steps")


LATER_KEYS = {"train_pool": 20_000}  # keys added after ledgers were written, and the value those ledgers ran with


def depends(cfg: ReproduceConfig, keys: tuple[str, ...], **more) -> dict:
    """The settings a part depends on, by name (the canvas's keys read from env.*). A key added later is named only
    where it differs from what earlier ledgers ran with, so that their parts still count as done."""
    values = {k: getattr(cfg.env if k in CANVAS_KEYS else cfg, k) for k in keys}
    return {**{k: v for k, v in values.items() if LATER_KEYS.get(k, object()) != v}, **more}


# ---- the work -------------------------------------------------------------------------------------------------
def train_policy(cfg: ReproduceConfig, run_dir: Path, seed: int, model: str = "builtin", block_length: int = 0,
                 reward: str = "multiplicative", init_from: str = "") -> dict:
    """One GRPO run (resumed if an earlier one was interrupted): where its policy is, and how it ran. The paper's
    method from its initialisation (its final policy), or the recipe's GRPO from `init_from` (checkpoints/best,
    chosen by held-out validation)."""
    from unmask.cluster.config import FinalEvalConfig, TrainConfig
    from unmask.cluster.train import train
    from unmask.learner.config import GRPOConfig
    from unmask.rollout.config import RolloutConfig

    env = EnvConfig(gen_length=cfg.env.gen_length, block_length=block_length or cfg.env.gen_length)
    if init_from:  # the recipe: `unmask train init_from=<clone>` at its defaults (cluster.config.FROM_POLICY)
        grpo = GRPOConfig(alpha=cfg.alpha, reward=reward, total_steps=3000)
    else:  # the paper's method: its training draws have no argmax fallback
        grpo = GRPOConfig(alpha=cfg.alpha, reward=reward, lr=cfg.lr, warmup_steps=20, total_steps=3000, fallback=False)
    train_cfg = TrainConfig(
        model=model, env=env, seed=seed, rollout=RolloutConfig(prompts_per_sample=cfg.groups_per_update,
                                                               train_pool=cfg.train_pool), grpo=grpo,
        init_from=init_from,
        out_dir=str(run_dir), max_minutes=cfg.train_minutes, max_iterations=cfg.max_iterations, checkpoint_every=50,
        num_env_runners=cfg.num_env_runners, groups_per_update=cfg.groups_per_update,
        validate_examples=min(200, cfg.num_examples), dump_trajectories=False, eval=FinalEvalConfig(num_examples=0))
    train_cfg.start_defaults(set() if cfg.preset == "default" else {"groups_per_update"})  # quick: its few prompts
    if (run_dir / "config.yaml").is_file():
        train_cfg = dataclasses.replace(train_cfg, resume=str(run_dir))
    metrics = train(train_cfg)
    return {"policy": str(run_dir / "checkpoints" / ("best" if init_from else "final")), "seed": seed,
            "model": model, "block_length": env.block_length, "reward": reward,
            "iterations": int(metrics.get("policy_version", 0))}


def imitate_policy(cfg: ReproduceConfig, out: Path, seed: int, block_length: int, models: Models) -> dict:
    """The recipe's start: `unmask imitate` at `block_length` with its default teacher (left_run, over the whole
    canvas in full diffusion) and the inputs it reads."""
    from unmask.rollout.imitation import imitate

    imitate(ImitateConfig(env=EnvConfig(gen_length=cfg.env.gen_length, block_length=block_length),
                          prompts=cfg.imitate_prompts, dagger_prompts=max(1, cfg.imitate_prompts // 3),
                          steps_per_round=cfg.imitate_steps, eval=ImitateEval(num_examples=0), seed=seed,
                          out_dir=str(out),
                          overwrite=True, progress=False), dllm=models("builtin"))
    return {"policy": str(out), "seed": seed, "block_length": block_length}


def second_dllm_data(folder: Path, per_family: int, seed: int = 11) -> dict:
    """The second dLLM's pretraining JSONL: training-split examples of cycles and of `map` (envs.tasks.map), half and
    half; deterministic, written once (atomically) and reused. `map`'s test split stays unseen."""
    from unmask.envs.tasks import make_task

    train = folder / "train.jsonl"
    if not train.is_file():
        rng = random.Random(f"second-dllm-data/{seed}")
        rows = []
        for family in (TaskConfig(name="map"), TaskConfig()):
            task = make_task(family)
            rows += [{"prompt": ex.prompt, "answer": ex.answer, "family": family.name}
                     for ex in (task.pretrain_example(rng) for _ in range(per_family))]
        write_atomic(train, "".join(json.dumps(row) + "\n" for row in rows))
    return {"train": str(train)}


def pretrain_second_dllm(cfg: ReproduceConfig, out: Path, data: dict, seed: int = 11) -> dict:
    """The second dLLM: the built-in one trained on with another seed, on cycles and `map` half and half, its
    canvas grown to long_gen_length."""
    from unmask.envs.dllm import BUILTIN_MODEL_DIR
    from unmask.envs.pretrain.train import pretrain

    data_task = TaskConfig(name="jsonl", path=data["train"], test_fraction=0.0)
    recipe = PretrainConfig(task=data_task, out_dir=str(out), env=EnvConfig(gen_length=cfg.long_gen_length),
                            init_from=str(BUILTIN_MODEL_DIR), max_minutes=cfg.pretrain_minutes, lr=3e-4,
                            warmup_steps=50, seed=seed, overwrite=True, save_every_minutes=0, progress=False)
    pretrain(recipe)
    return {"model": str(out), "recipe": dataclasses.asdict(recipe)}


class Models:
    """Each dLLM loaded once, on first use, for every evaluation on it."""

    def __init__(self):
        self.loaded: dict = {}

    def __call__(self, model: str):
        from unmask.envs.dllm import load_env_dllm

        if model not in self.loaded:
            self.loaded[model] = load_env_dllm(model, EnvConfig())
        return self.loaded[model]


def evaluate_point(models: Models, model: str, env: EnvConfig, task: TaskConfig, sampler: SamplerConfig,
                   cfg: ReproduceConfig, seed: int) -> dict:
    """Accuracy and mean NFE of one sampler at one test seed (it draws the prompts and the sampler's noise)."""
    from unmask.rollout.config import EvalConfig
    from unmask.rollout.evaluate import evaluate

    result = evaluate(EvalConfig(model=model, task=task, sampler=sampler, env=env, num_examples=cfg.num_examples,
                                 seed=seed, progress=False, out_dir=cfg.out_dir), models(model))
    return {k: result[k] for k in ("accuracy", "mean_nfe", "sampler")}


def heuristic_label(h: SamplerConfig) -> str:
    return h.name + "".join(f" {p}={getattr(h, p)}" for p in SAMPLER_PARAMS[h.name])


TOP_K = heuristic_label(HEURISTICS[0])  # top_k steps=0: one token per step (LLaDA's default schedule)
PAPER_HEURISTICS = frozenset(heuristic_label(h) for h in HEURISTICS)
# the recipe's teacher (`unmask imitate`'s default), evaluated beside the paper's heuristics on the built-in dLLM: the
# recipe is judged against it too
RECIPE_TEACHER = sampler_spec(ImitateConfig().teachers[0])


@dataclass
class Setting:
    """One place the samplers are compared: a model, a canvas and block, a task variant."""

    name: str
    model: str
    env: EnvConfig
    task: TaskConfig = field(default_factory=TaskConfig)


def reproduce(cfg: ReproduceConfig) -> dict:
    """Every part not yet done, then findings.md, findings.json and the plots; Ctrl-C keeps what is done."""
    try:
        return run_parts(cfg)
    except Interrupted as stop:
        raise Interrupted(f"{stop}; what is done is kept: run the same unmask reproduce again to go on") from None


def run_parts(cfg: ReproduceConfig) -> dict:
    check_reproduce(cfg)
    cfg = resolved(cfg)
    out = Path(cfg.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    parts = Parts(out)
    L, BL = cfg.env.gen_length, cfg.env.block_length
    kinds = {"full": (L, "multiplicative"), "semiar": (BL, "multiplicative"), "additive": (L, "additive")}
    trained = {f"train/{kind}-s{seed}": depends(cfg, TRAINING_KEYS, block_length=block, reward=reward, seed=seed)
               for kind, (block, reward) in kinds.items() for seed in cfg.train_seeds}
    recipe = {"recipe-semiar": BL, "recipe-full": L}  # the recipe beside the paper's method (finding 2)
    cloned = {f"imitate/{kind}-s{seed}": depends(cfg, IMITATE_KEYS, block_length=block, seed=seed)
              for kind, block in recipe.items() for seed in cfg.train_seeds}
    trained.update({f"train/{kind}-s{seed}": depends(cfg, TRAINING_KEYS, block_length=block, seed=seed,
                                                    init=cloned[f"imitate/{kind}-s{seed}"])
                    for kind, block in recipe.items() for seed in cfg.train_seeds})
    second_keys = depends(cfg, DLLM2_KEYS)
    trained.update({f"train/dllm2-s{seed}": depends(cfg, TRAINING_KEYS, seed=seed, dllm2=second_keys)
                    for seed in cfg.train_seeds})
    for name, keys in {**trained, **cloned, "dllm2": second_keys}.items():  # before any work: what left a run behind
        parts.check(name, keys)
    policies: dict[str, list[dict]] = {}
    for kind, (block, reward) in kinds.items():
        policies[kind] = [parts.run(f"train/{kind}-s{seed}", lambda k=kind, s=seed, b=block, r=reward: train_policy(
            cfg, out / "train" / f"{k}-s{s}", s, block_length=b, reward=r), trained[f"train/{kind}-s{seed}"])
            for seed in cfg.train_seeds]
    models = Models()  # each dLLM loaded once: the clones' and every evaluation's
    for kind, block in recipe.items():
        policies[kind] = []
        for seed in cfg.train_seeds:
            clone = parts.run(f"imitate/{kind}-s{seed}", lambda k=kind, s=seed, b=block: imitate_policy(
                cfg, out / "imitate" / f"{k}-s{s}", s, b, models), cloned[f"imitate/{kind}-s{seed}"])
            policies[kind].append(parts.run(f"train/{kind}-s{seed}", lambda k=kind, s=seed, b=block, c=clone:
                                            train_policy(cfg, out / "train" / f"{k}-s{s}", s, block_length=b,
                                                         init_from=c["policy"]), trained[f"train/{kind}-s{seed}"]))
    data = second_dllm_data(out / "data", cfg.pretrain_examples)
    second = parts.run("dllm2", lambda: pretrain_second_dllm(cfg, out / "dllm2", data), second_keys)
    dllm2 = second["model"]
    policies["dllm2"] = [parts.run(f"train/dllm2-s{seed}", lambda s=seed: train_policy(
        cfg, out / "train" / f"dllm2-s{s}", s, model=dllm2), trained[f"train/dllm2-s{seed}"])
        for seed in cfg.train_seeds]

    settings = {
        "semiar": (Setting("semiar", "builtin", EnvConfig(gen_length=L, block_length=BL)), ["semiar", "recipe-semiar"]),
        "full": (Setting("full", "builtin", EnvConfig(gen_length=L, block_length=L)),
                 ["full", "additive", "recipe-full"]),
        "dllm2": (Setting("dllm2", dllm2, EnvConfig(gen_length=L, block_length=L)), ["full", "dllm2"]),
        "dllm2-long": (Setting("dllm2-long", dllm2, EnvConfig(gen_length=cfg.long_gen_length,
                                                            block_length=cfg.long_gen_length)), ["dllm2"]),
        "dllm2-map": (Setting("dllm2-map", dllm2, EnvConfig(gen_length=L, block_length=L), TaskConfig(name="map")),
                      ["dllm2"]),
    }
    points: dict[str, dict[str, list[dict]]] = {}  # setting -> sampler label -> one result per (train, test) seed
    for name, (setting, policy_kinds) in settings.items():
        def point(sampler: SamplerConfig, seed: int, s: Setting = setting) -> dict:
            return evaluate_point(models, s.model, s.env, s.task, sampler, cfg, seed)

        table: dict[str, list[dict]] = {}
        evaluated = depends(cfg, EVAL_KEYS, dllm2=second_keys if setting.model == dllm2 else None)
        for h in HEURISTICS + ([RECIPE_TEACHER] if any(k.startswith("recipe") for k in policy_kinds) else []):
            label = heuristic_label(h)
            table[label] = [parts.run(f"eval/{name}/{label.replace(' ', '_')}-t{t}", lambda h=h, t=t: point(h, t),
                                      evaluated) for t in cfg.test_seeds]
        for kind in policy_kinds:
            table[f"policy {kind}"] = [
                parts.run(f"eval/{name}/policy_{kind}-s{p['seed']}-t{t}", lambda p=p, t=t: point(
                    SamplerConfig(name="policy", checkpoint=p["policy"], allow_mismatch=True), t),
                    {**evaluated, "policy": trained[f"train/{kind}-s{p['seed']}"]})
                for p in policies[kind] for t in cfg.test_seeds]
        points[name] = table
    findings = judge(points, cfg)
    report = {"config": dataclasses.asdict(cfg), "dllm2": second, "findings": findings,
              "points": {s: {label: summary(rs) for label, rs in t.items()} for s, t in points.items()}}
    write_json(out / "findings.json", report)
    markdown = findings_markdown(findings, cfg)
    write_atomic(out / "findings.md", markdown)
    plots(points, {name: setting for name, (setting, _) in settings.items()}, out)
    if cfg.readme:
        write_readme(Path(cfg.readme), markdown)
    return report


# ---- judging ------------------------------------------------------------------------------------------------
def summary(results: list[dict]) -> dict:
    """Mean accuracy and NFE over seeds, with the min-max spread of accuracy."""
    acc = [r["accuracy"] for r in results]
    return {"accuracy": statistics.fmean(acc), "mean_nfe": statistics.fmean(r["mean_nfe"] for r in results),
            "accuracy_min": min(acc), "accuracy_max": max(acc), "runs": len(results)}


def best_heuristic(table: dict[str, list[dict]], max_nfe: float = float("inf"),
                   among: frozenset[str] | None = None) -> tuple[str, dict] | None:
    """The most accurate heuristic (of `among` when given) at no more than `max_nfe` mean NFE."""
    rows = [(label, summary(rs)) for label, rs in table.items()
            if not label.startswith("policy") and (among is None or label in among)]
    rows = [(label, s) for label, s in rows if s["mean_nfe"] <= max_nfe + 1e-9]
    return max(rows, key=lambda r: (r[1]["accuracy"], -r[1]["mean_nfe"]), default=None)


def point(s: dict) -> str:
    spread = f" [{s['accuracy_min']:.3f}-{s['accuracy_max']:.3f}]" if s["runs"] > 1 else ""
    return f"{s['accuracy']:.3f}{spread} @ {s['mean_nfe']:.1f}"


def versus(table: dict[str, list[dict]], label: str,
           among: frozenset[str] | None = None) -> tuple[dict, tuple[str, dict] | None, float]:
    """A policy's summary, the best heuristic (of `among`) at no more NFE, and the accuracy difference (vs 0 if
    none)."""
    mine = summary(table[label])
    rival = best_heuristic(table, mine["mean_nfe"], among)
    return mine, rival, mine["accuracy"] - (rival[1]["accuracy"] if rival else 0.0)


def rival_text(rival: tuple[str, dict] | None) -> str:
    return f"{rival[0]} {point(rival[1])}" if rival else "no heuristic at so few NFE"


def judge(points: dict, cfg: ReproduceConfig) -> list[dict]:
    """One row per finding: the claim, our figures, and whether the claim holds here (the rule in each line)."""
    rows = []

    def finding(claim: str, ours: str, holds: bool) -> None:
        rows.append({"finding": len(rows) + 1, "claim": claim, "paper": PAPER_FIGURES[len(rows) + 1], "ours": ours,
                     "holds": bool(holds)})

    semi, full, d2, d2_long = points["semiar"], points["full"], points["dllm2"], points["dllm2-long"]
    best_semi, best_full = (best_heuristic(table, among=PAPER_HEURISTICS) for table in (semi, full))
    finding("heuristics collapse in full diffusion",
            f"top_k 1 token/step {point(summary(semi[TOP_K]))} (BL={cfg.env.block_length}) → "
            f"{point(summary(full[TOP_K]))} (BL=L); best heuristic {rival_text(best_semi)} → {rival_text(best_full)}",
            best_full[1]["accuracy"] < best_semi[1]["accuracy"] - 0.1)
    s_mine, s_rival, s_diff = versus(semi, "policy semiar", PAPER_HEURISTICS)
    f_mine, f_rival, f_diff = versus(full, "policy full", PAPER_HEURISTICS)
    r_semi, r_semi_rival, r_semi_diff = versus(semi, "policy recipe-semiar")  # against its teacher too
    r_full, r_full_rival, r_full_diff = versus(full, "policy recipe-full")
    teacher = heuristic_label(RECIPE_TEACHER)
    finding("learned ≈ heuristics in semi-AR (within 2 points at ≤ NFE), ≫ in full diffusion",
            f"semi-AR: policy {point(s_mine)} vs {rival_text(s_rival)} ({s_diff:+.3f}); full diffusion: policy "
            f"{point(f_mine)} vs {rival_text(f_rival)} ({f_diff:+.3f}). Beside it, the recipe (`unmask imitate`, "
            f"then `unmask train` from the clone, at their defaults: {teacher} cloned), against every heuristic here, "
            f"its teacher ({point(summary(semi[teacher]))} / {point(summary(full[teacher]))}) included: semi-AR "
            f"{point(r_semi)} vs {rival_text(r_semi_rival)} ({r_semi_diff:+.3f}); full diffusion {point(r_full)} vs "
            f"{rival_text(r_full_rival)} ({r_full_diff:+.3f})",
            s_diff >= -0.02 and f_diff > 0.05)
    additive = summary(full["policy additive"])
    finding(f"the additive reward hacks at α = {cfg.alpha:g}, the multiplicative does not",
            f"additive {point(additive)} vs multiplicative {point(f_mine)} (same α, same budget)",
            additive["mean_nfe"] < f_mine["mean_nfe"] and additive["accuracy"] < f_mine["accuracy"] - 0.05)
    moved, own = summary(d2["policy full"]), summary(d2["policy dllm2"])
    _, d2_rival, moved_diff = versus(d2, "policy full")
    finding("a policy transfers to another dLLM, comparable to one trained on it",
            f"trained on the built-in dLLM {point(moved)}, trained on the second {point(own)}; best heuristic at ≤ NFE "
            f"{rival_text(d2_rival)} ({moved_diff:+.3f})", moved["accuracy"] >= own["accuracy"] - 0.05)
    long, h_short, h_long = summary(d2_long["policy dllm2"]), best_heuristic(d2), best_heuristic(d2_long)
    policy_change, heuristic_change = long["accuracy"] - own["accuracy"], h_long[1]["accuracy"] - h_short[1]["accuracy"]
    policy_holds, heuristics_degrade = policy_change >= -0.05, heuristic_change <= min(-0.02, policy_change - 0.02)
    finding(f"trained at L = {cfg.env.gen_length}, a policy holds at L = {cfg.long_gen_length}; heuristics degrade "
            "further",
            f"policy {point(own)} → {point(long)}; best heuristic {rival_text(h_short)} → {rival_text(h_long)}; "
            f"the policy {'holds' if policy_holds else 'does not hold'} ({policy_change:+.3f}), the heuristics "
            f"{'degrade further' if heuristics_degrade else 'do not degrade further'} ({heuristic_change:+.3f})",
            policy_holds and heuristics_degrade)  # both halves of the paper's claim
    _, d2_own_rival, in_domain = versus(d2, "policy dllm2")
    o_mine, o_rival, o_diff = versus(points["dllm2-map"], "policy dllm2")
    solvable = best_heuristic(points["dllm2-map"])[1]["accuracy"] >= 0.05  # else the dLLM, not the policy, fails
    finding("out of domain the policy degrades against the heuristics (trained on cycles, tested on `map`)",
            f"second dLLM, `map`: policy {point(o_mine)} vs {rival_text(o_rival)} ({o_diff:+.3f}); on cycles "
            f"{point(own)} vs {rival_text(d2_own_rival)} ({in_domain:+.3f})"
            + ("" if solvable else "; not a test of the policy: no heuristic solves `map` with this dLLM"),
            solvable and o_diff < in_domain)
    spreads = [summary(rs)["accuracy_max"] - summary(rs)["accuracy_min"] for t in points.values()
               for label, rs in t.items() if label.startswith("policy")]
    finding(f"{len(cfg.train_seeds)} training x {len(cfg.test_seeds)} test seeds per policy point: no finding rests on "
            "one run", f"accuracy spread (max - min over seeds) {min(spreads):.3f}-{max(spreads):.3f}",
            len(cfg.train_seeds) >= 2 and len(cfg.test_seeds) >= 3)
    return rows


def findings_markdown(findings: list[dict], cfg: ReproduceConfig) -> str:
    lines = [f"`unmask reproduce` ({cfg.preset}: {len(cfg.train_seeds)} training seeds x {len(cfg.test_seeds)} test "
             f"seeds, {cfg.train_minutes:g} minutes per training, {cfg.num_examples} test prompts, α = {cfg.alpha:g}; "
             "accuracy [min-max over seeds] @ mean NFE)", "",
             "| # | claim | the paper | ours | holds here |", "|---|---|---|---|---|"]
    lines += [f"| {r['finding']} | {r['claim']} | {r['paper']} | {r['ours']} | {'yes' if r['holds'] else '**no**'} |"
              for r in findings]
    return "\n".join(lines) + "\n"


def plots(points: dict, settings: dict[str, Setting], out: Path) -> None:
    """One accuracy-vs-NFE plot per setting (the mean over seeds), as `unmask pareto` draws them."""
    from unmask.rollout.report import pareto_plot

    for name, table in points.items():
        env = settings[name].env
        mode = "full diffusion" if env.block_length == env.gen_length else "semi-AR"
        rows = [{"mode": mode, "block_length": env.block_length, "sampler": label.split(" ")[0]
                 if not label.startswith("policy") else label, "setting": label, **summary(rs)}
                for label, rs in table.items()]
        (out / name).mkdir(exist_ok=True)
        pareto_plot(rows, out / name / "pareto.png", title=f"reproduce: {name}")


def write_readme(readme: Path, markdown: str) -> None:
    """findings.md between the README's markers (the results section is generated, never copied by hand)."""
    text = readme.read_text()
    start, end = README_MARKERS
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    write_atomic(readme, f"{head}{start}\n{markdown}{end}{tail}")
