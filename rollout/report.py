"""Tables and the accuracy-vs-NFE Pareto plot, from result rows."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import matplotlib

from unmask.envs.files import write_atomic, write_json

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def pivot_table(rows: list[dict]) -> str:
    """One line per sampler setting, one 'accuracy @ NFE' column per block length: the modes side by side."""
    block_lengths = sorted({r["block_length"] for r in rows})
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    cell = {(r["setting"], r["block_length"]): r for r in rows}
    full = max(block_lengths)
    header = ["sampler"] + [f"BL={bl}" + (" (full diffusion)" if bl == full else "") for bl in block_lengths]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in settings:
        cols = []
        for bl in block_lengths:
            r = cell.get((s, bl))
            cols.append(f"{r['accuracy']:.3f} @ {r['mean_nfe']:.1f}" if r else "")
        lines.append(f"| {s} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both fewer NFE and higher accuracy, sorted by NFE."""
    front, best = [], -1.0
    for nfe, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((nfe, acc))
            best = acc
    return front


LIMIT = "oracle"  # the limit line's series (rollout.pareto.oracle_line): never a rival, never on the frontier


def limit_nfe(oracle: list[dict], accuracy: float) -> tuple[float | None, str]:
    """The oracle line's NFE at `accuracy`, interpolated along its frontier, with "=" ; below the line's least accurate
    point that point's NFE, an upper bound of the limit ("<="); above its most accurate point none ("above")."""
    front = pareto_front([(r["mean_nfe"], r["accuracy"]) for r in oracle])
    if accuracy > front[-1][1] + 1e-12:
        return None, "above"
    for (n0, a0), (n1, a1) in zip(front, front[1:]):
        if a0 < accuracy <= a1:
            return n0 + (n1 - n0) * (accuracy - a0) / (a1 - a0), "="
    return front[0][0], "=" if accuracy >= front[0][1] - 1e-12 else "<="


def against_limit(rows: list[dict]) -> list[dict]:
    """Every heuristic's and policy's NFE against the oracle line's at the same accuracy, per block length (for a
    point less accurate than the whole line, against the line's fewest NFE: the gap is then a lower bound)."""
    out = []
    for r in rows:
        oracle = [o for o in rows if o["sampler"] == LIMIT and o["block_length"] == r["block_length"]]
        if r["sampler"] == LIMIT or not oracle:
            continue
        limit, how = limit_nfe(oracle, r["accuracy"])
        at_least = ">= " if how == "<=" else ""
        out.append({"block_length": r["block_length"], "setting": r["setting"],
                    "point": f"{r['accuracy']:.3f} @ {r['mean_nfe']:.1f}",
                    "limit NFE": "above the line" if limit is None else f"{'<= ' if how == '<=' else ''}{limit:.2f}",
                    "NFE gap": "" if limit is None else f"{at_least}{r['mean_nfe'] - limit:+.2f}",
                    "x limit": "" if limit is None else f"{at_least}{r['mean_nfe'] / limit:.2f}"})
    return out


def pareto_plot(rows: list[dict], path: Path, title: str = "") -> None:
    """One panel per block length (semi-AR ... full diffusion), one marker series per sampler; the oracle's limit
    line dashed, apart from the frontier of the samplers one can deploy."""
    block_lengths = sorted({r["block_length"] for r in rows})
    fig, axes = plt.subplots(1, len(block_lengths), figsize=(5.2 * len(block_lengths), 4.2),
                             sharey=True, squeeze=False)
    samplers = sorted({r["sampler"] for r in rows} - {LIMIT})
    palette = plt.cm.tab10 if len(samplers) <= 10 else plt.cm.tab20
    colors = {s: palette(i % palette.N) for i, s in enumerate(samplers)}
    for ax, bl in zip(axes[0], block_lengths):
        panel = [r for r in rows if r["block_length"] == bl]
        for s in samplers:
            pts = sorted((r["mean_nfe"], r["accuracy"]) for r in panel if r["sampler"] == s)
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=4, lw=1, color=colors[s], label=s)
        front = pareto_front([(r["mean_nfe"], r["accuracy"]) for r in panel if r["sampler"] != LIMIT])
        ax.plot(*zip(*front), color="k", lw=2, alpha=0.25, label="frontier")
        limit = pareto_front([(r["mean_nfe"], r["accuracy"]) for r in panel if r["sampler"] == LIMIT])
        if limit:
            ax.plot(*zip(*limit), color="k", lw=1.5, ls="--", marker="x", ms=5, label="oracle limit")
        mode = "full diffusion" if panel and panel[0]["mode"] == "full diffusion" else "semi-AR"
        ax.set_title(f"{mode} (BL={bl})")
        ax.set_xlabel("mean NFE")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].set_ylim(-0.02, 1.02)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def against_heuristics(rows: list[dict]) -> list[dict]:
    """Each learned policy's point beside the best heuristic of its block length at no more NFE (the frontier
    the policy must beat), and the difference in accuracy."""
    out = []
    for r in rows:
        if not r["sampler"].startswith("policy"):
            continue
        rivals = [h for h in rows if not h["sampler"].startswith(("policy", LIMIT))
                  and h["block_length"] == r["block_length"] and h["mean_nfe"] <= r["mean_nfe"] + 1e-9]
        best = max(rivals, key=lambda h: (h["accuracy"], -h["mean_nfe"]), default=None)
        out.append({"block_length": r["block_length"], "policy": r["setting"],
                    "policy point": f"{r['accuracy']:.3f} @ {r['mean_nfe']:.1f}",
                    "best heuristic at <= NFE": f"{best['setting']}: {best['accuracy']:.3f} @ {best['mean_nfe']:.1f}"
                    if best else "none", "difference": r["accuracy"] - best["accuracy"] if best else None})
    return out


PARETO_COLUMNS = ["mode", "block_length", "setting", "accuracy", "mean_nfe", "tokens_per_step",
                  "shorter_than_reference"]


def write_pareto(rows: list[dict], out_dir: Path, config, title: str = "", stem: str = "pareto",
                 extra: dict | None = None) -> str:
    """<stem>.json (rows + config + `extra`), <stem>.md (pivot + full table) and <stem>.png in `out_dir`; returns
    the markdown."""
    samplers = [r for r in rows if r["sampler"] != LIMIT]
    table = "accuracy @ mean NFE\n\n" + pivot_table(samplers) + "\n" + markdown_table(samplers, PARETO_COLUMNS)
    versus = against_heuristics(rows)
    if versus:
        table += "\nlearned policies against the best heuristic at no more NFE\n\n" + markdown_table(
            versus, ["block_length", "policy", "policy point", "best heuristic at <= NFE", "difference"])
    limit = [r for r in rows if r["sampler"] == LIMIT]
    if limit:
        table += ("\nthe limit: the oracle of each reference (a second decode committing every position that already "
                  "predicts the reference's token; needs the reference's output, so it is a bound, not a sampler)\n\n"
                  + pivot_table(limit) + "\nNFE against the limit line at the same accuracy\n\n"
                  + markdown_table(against_limit(rows), ["block_length", "setting", "point", "limit NFE", "NFE gap",
                                                         "x limit"]))
    config = config if isinstance(config, dict) else dataclasses.asdict(config)
    write_json(out_dir / f"{stem}.json", {"rows": rows, "config": config, **(extra or {})})
    write_atomic(out_dir / f"{stem}.md", table)
    pareto_plot(rows, out_dir / f"{stem}.png", title=title)
    return table
