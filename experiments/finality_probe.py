"""How well can one forward's view of a position tell that its current prediction is already final (the oracle's
rule: it equals the token the reference decode wrote there)? A probe, not a policy: the oracle decodes training
prompts; at every state, every still-masked position is an example (label: prediction == reference token), seen through
several input sets; a per-position classifier (a 2-layer MLP) is fitted on 80% of the prompts and scored on the rest.

    unmask finality-probe [prompts=1000] [env.block_length=8] [out_dir=runs/probe]

Reported per input set, on held-out prompts' valid positions (those the oracle decides among): the error rate, the
AUC, and the share of the final positions a cautious student could commit at 99% and 99.9% precision (the threshold
chosen on the held-out set itself: an upper bound for that classifier).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from unmask.envs.config import SamplerConfig
from unmask.envs.dllm import load_dllm
from unmask.envs.files import write_json
from unmask.envs.mdp import UnmaskingEnv
from unmask.envs.tasks.cycles import CycleTask
from unmask.experiments.config import ProbeConfig
from unmask.learner.sampler import policy_inputs
from unmask.rollout.samplers import make_sampler

SETS = {
    "confidence": ["confidence"],
    "confidence + history + repeat": ["confidence", "stable_steps", "confidence_ema", "confidence_delta", "repeat"],
    "confidence + hidden (32)": ["confidence", "hidden32"],
    "confidence + hidden (256, whole)": ["confidence", "hidden256"],
    "all (history, repeat, hidden 256)": ["confidence", "stable_steps", "confidence_ema", "confidence_delta",
                                          "repeat", "hidden256"],
}


@torch.no_grad()
def collect(prompts: int, block_length: int, seed: int = 0) -> dict:
    dllm = load_dllm("builtin")
    task = CycleTask()
    examples = task.examples("train", prompts, seed=seed)
    oracle = make_sampler(SamplerConfig(name="oracle", block_length=8 if block_length == 24 else 0))
    features = ("confidence", "stable_steps", "confidence_ema", "confidence_delta", "repeat", "hidden")
    names = ["confidence", "stable_steps", "confidence_ema", "confidence_delta", "repeat"]
    out = {k: [] for k in ("scalars", "hidden", "final", "valid", "masked", "prompt")}
    env = UnmaskingEnv(dllm, 24, block_length)
    encoded = dllm.encode_prompts([ex.prompt for ex in examples])
    for start in range(0, len(encoded), 250):
        batch = encoded[start : start + 250]
        oracle.begin(env, batch)
        obs = env.reset(batch, features=features)
        while not env.done:
            rows = obs.active
            out["scalars"].append(policy_inputs(obs, names)[rows])
            out["hidden"].append(obs.hidden[rows].clone())
            out["final"].append((obs.tokens == oracle.targets)[rows])
            out["valid"].append(obs.valid[rows].clone())
            out["masked"].append(obs.masked[rows].clone())
            out["prompt"].append((torch.arange(len(batch)) + start)[rows])
            obs = env.step(oracle.select(obs))
    return {k: torch.cat(v) for k, v in out.items()}


def features_of(data: dict, names: list[str]) -> torch.Tensor:
    from unmask.learner.sampler import hidden_view

    parts = []
    for name in names:
        if name.startswith("hidden"):
            parts.append(hidden_view(data["hidden"].shape[-1], int(name[6:]))(data["hidden"]))
        else:
            column = ["confidence", "stable_steps", "confidence_ema", "confidence_delta", "repeat"].index(name)
            parts.append(data["scalars"][..., column : column + 1])
    position = torch.nn.functional.one_hot(torch.arange(24), 24).float().expand(len(data["final"]), 24, 24)
    return torch.cat([*parts, position], -1)  # the position too: a policy has RoPE


def fit_and_score(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, test: torch.Tensor, steps: int = 1500
                  ) -> dict:
    torch.manual_seed(0)
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mean) / std
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[-1], 128), torch.nn.GELU(), torch.nn.Linear(128, 1))
    opt = torch.optim.AdamW(net.parameters(), 3e-3, weight_decay=1e-4)
    idx = train.nonzero()[:, 0]
    for _ in range(steps):
        rows = idx[torch.randint(len(idx), (1024,))]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x[rows])[:, 0], y[rows].float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        p = torch.sigmoid(net(x[test])[:, 0])
    return score(p, y[test])


def score(p: torch.Tensor, y: torch.Tensor) -> dict:
    order = p.argsort(descending=True)
    hits = y[order].float()
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
    positives = float(hits.sum())
    ranks = torch.empty_like(p).scatter_(0, order, torch.arange(len(p), 0, -1).float())
    auc = float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * (len(y) - positives)))
    out = {"error": float(((p > 0.5) != y).float().mean()), "auc": round(auc, 4), "positives": positives / len(y)}
    for level in (0.99, 0.999):
        ok = (precision >= level).nonzero()
        out[f"recall@{level}"] = round(float(hits[: int(ok[-1]) + 1].sum()) / positives, 4) if len(ok) else 0.0
    return out


def probe(a: ProbeConfig) -> None:
    """Collect the oracle's states, fit and score a classifier per input set; the scores go to out_dir/probe.json."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    data = collect(a.prompts, a.env.block_length)
    held_out = data["prompt"] % 5 == 0
    results = {"block_length": a.env.block_length, "prompts": a.prompts, "states": len(data["final"]),
               "sets": {}}
    for where in ("valid", "masked"):
        keep = data[where]
        for label, names in SETS.items():
            x = features_of(data, names)[keep]
            y = data["final"][keep]
            rows = held_out[:, None].expand_as(keep)[keep]
            results["sets"][f"{where}: {label}"] = r = fit_and_score(x, y, ~rows, rows)
            print(f"{where:<6} {label:<36} {r}", flush=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    Path(a.out_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(a.out_dir) / "probe.json", results)


if __name__ == "__main__":  # the same command line as `unmask finality-probe`
    from unmask.cli.main import main

    raise SystemExit(main(["finality-probe", *sys.argv[1:]]))
