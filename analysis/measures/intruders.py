"""Does a low-rank update bring in new directions? Intruder dimensions (Shuttleworth et al. 2024): singular vectors
among the top k = 10 of W_pre + ΔW with max |cos| < ε to every singular vector of W_pre, summed over a run's saved
modules, for ε from 0.1 to 0.9 (table ``intruders``, figure against ε); the finding compares each rank-swept arm
with full finetuning at ε = 0.5, their code's default."""
from __future__ import annotations

from typing import Dict, List

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import plotting
from ..loader import Run, Study
from ..roles import arm_title, arms, ordered_labels, references, run_columns, swept
from ..subspace import intruder_counts
from .base import Context, Measure, Section, delta_runs, per_run

EPS_GRID = tuple(round(x, 1) for x in np.arange(0.1, 0.91, 0.1))


def intruder_table(study: Study, k: int = 10, eps_grid=EPS_GRID) -> pd.DataFrame:
    """Intruder dimensions (Shuttleworth et al.) among the top-k singular vectors of W_pre + ΔW, summed
    over the run's modules, for each ε."""
    def rows(r: Run) -> List[dict]:
        totals = {e: 0 for e in eps_grid}
        n_modules = 0
        for module, dW in r.dir.iter_deltas():
            W = study.base_weight(module)
            counts = intruder_counts(W, W + dW, k=k, eps_grid=eps_grid)
            for e in eps_grid:
                totals[e] += int(counts[e])
            n_modules += 1
        return [{**run_columns(r), "eps": e, "intruders": totals[e], "modules": n_modules} for e in eps_grid]

    return pd.DataFrame(per_run(study, delta_runs(study), rows))


def figure(study: Study, table: pd.DataFrame):
    """Intruder dimensions (top-10 singular vectors of W_ft with max |cos| < ε to all of W_pre's) vs ε."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    labels = ordered_labels(table)
    reference = set(references(table).label)
    for i, label in enumerate(labels):
        t = table[table.label == label].groupby("eps").intruders.agg(["mean", "std"]).reset_index()
        color = plotting.REFERENCE_COLOR if label in reference else plotting.sequence_color(i, len(labels))
        ax.errorbar(t.eps, t["mean"], yerr=t["std"].fillna(0), color=color, marker="o", ms=3, lw=1, label=label)
    ax.set_xlabel("ε (cosine threshold)")
    ax.set_ylabel("intruder dimensions (sum over modules)")
    ax.set_title("Intruder dimensions among the top-10 singular vectors")
    ax.legend(fontsize=plotting.LEGEND)
    return plotting.finish(fig, study)


def intruder_finding(intr: pd.DataFrame, eps: float = 0.5) -> str:
    at = intr[np.isclose(intr.eps, eps)] if not intr.empty else intr
    t = at.groupby("label").intruders.mean() if not at.empty else pd.Series(dtype=float)
    if t.empty:
        return "No intruder dimensions were measured."
    txt = (f"At ε = {eps}, intruder dimensions summed over modules: "
           + ", ".join(f"{k} {t[k]:.0f}" for k in ordered_labels(at)) + ".")
    ref = references(at)
    if ref.empty:
        return txt
    full = t[ref.label.iloc[0]]
    for arm in arms(at, "rank"):
        own = t[sorted(set(swept(at, "rank", arm).label))]
        more = [k for k, v in own.items() if v > full]
        txt += (f" {len(more)} of {len(own)} {arm_title(at, arm)} ranks have more intruders than full finetuning"
                + (", as Shuttleworth et al. found for small ranks." if more else
                   "; Shuttleworth et al.'s finding (LoRA introduces intruders, full finetuning does not) is not "
                   "reproduced here."))
    return txt


class Intruders(Measure):
    name = "intruders"
    tables = ("intruders",)

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        return {"intruders": intruder_table(ctx.study)}

    def figures(self, ctx: Context) -> Dict[str, object]:
        table = ctx.table("intruders")
        return {"intruders": figure(ctx.study, table)} if not table.empty else {}

    def sections(self, ctx: Context) -> List[Section]:
        if not ctx.drew("intruders"):
            return []
        return [Section("Intruder dimensions", [intruder_finding(ctx.table("intruders"))], figure="intruders")]
