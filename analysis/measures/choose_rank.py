"""Which rank should a user choose? One figure that puts what a rank gets beside what it costs, on one axis: the
trainable parameters (log scale), the frozen base at the left, each rank-swept arm by rank, full finetuning at the
right. Panels: the target metric with its 95 % interval (``reach``), and full finetuning truncated to rank k on the
LoRA targets (``truncation``, scope ``targets_only``) as a band at the parameter count of rank k; forgetting with
its interval (``forgetting_vs_full``); the training memory a method adds over the frozen model, optimizer state
plus gradients as measured (``tradeoff``); the storage a user ships per task. No table of its own: every number is
another measure's."""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from .. import plotting
from ..loader import Study
from ..roles import arm_title, arms, baselines, references, swept
from .base import Context, Measure, Section, seeds_phrase
from .truncation import LIKE_FOR_LIKE


def _params(runs: pd.DataFrame) -> Dict[tuple, float]:
    """{(arm or role, value): trainable parameters} from the runs (the same at every seed)."""
    out: Dict[tuple, float] = {}
    for _, r in runs.iterrows():
        if not r.get("own_setting", True) or not (r.baseline or r.reference or r.axis == "rank"):
            continue  # another setting, or full FT trained in one: the regret measure's
        key = ("baseline", None) if r.baseline else ("reference", None) if r.reference else \
            (r.arm, None if pd.isna(r["value"]) else int(r["value"]))
        out[key] = float(r.trainable_params)
    return out


def rank_params(runs: pd.DataFrame, arm: str, k: int) -> Optional[float]:
    """The trainable parameters of ``arm`` at rank ``k``: measured when the study ran it, else linear in the rank
    through its smallest measured rank (r(d + m) per adapted matrix, plus the head)."""
    g = swept(runs, "rank", arm)
    if g.empty:
        return None
    at = g[g["value"] == k]
    if len(at):
        return float(at.trainable_params.iloc[0])
    r0 = g.sort_values("value").iloc[0]
    per_rank = (r0.trainable_params - r0.head_params) / r0["value"]
    return float(r0.head_params + per_rank * k)


def points(ctx: Context) -> pd.DataFrame:
    """One row per method (and rank): trainable parameters, test score and forgetting with their intervals, and the
    memory and storage with their range over seeds."""
    runs, reach, forget = ctx.table("runs"), ctx.table("reach"), ctx.table("forgetting_vs_full")
    if runs.empty:
        return pd.DataFrame()
    params = _params(runs)
    mean_forget = forget[(forget.tasks == "mean") & (forget.unit == "accuracy")] if not forget.empty else forget
    rows = []
    for key, n in params.items():
        role, value = key
        if role == "baseline":
            g = baselines(runs)
        elif role == "reference":
            g = references(runs)
        else:
            g = runs[(runs.arm == role) & (runs["value"] == value)]
            if g.axis.iloc[0] != "rank":
                continue
        memory = g.optimizer_state_bytes + g.gradient_bytes
        row = {"role": role, "value": value, "label": g.label.iloc[0], "params": n,
               "memory": memory.mean(), "memory_low": memory.min(), "memory_high": memory.max(),
               "storage": g.storage_bytes.mean(), "storage_low": g.storage_bytes.min(),
               "storage_high": g.storage_bytes.max(), "score": g.test_accuracy.mean(), "score_low": np.nan,
               "score_high": np.nan, "forgetting": 0.0 if role == "baseline" else np.nan,
               "forgetting_low": np.nan, "forgetting_high": np.nan}
        if not reach.empty:
            at = reach[(reach.arm == role) & ((reach["rank"] == value) if value is not None else reach["rank"].isna())]
            if len(at):
                row.update(score=at["mean"].iloc[0], score_low=at.ci_low.iloc[0], score_high=at.ci_high.iloc[0])
        if not mean_forget.empty and role != "baseline":
            at = mean_forget[(mean_forget.arm == role) &
                             ((mean_forget.value == value) if value is not None else mean_forget.value.isna())]
            if len(at):
                row.update(forgetting=at.forgetting.iloc[0], forgetting_low=at.ci_low.iloc[0],
                           forgetting_high=at.ci_high.iloc[0])
        rows.append(row)
    return pd.DataFrame(rows).sort_values("params").reset_index(drop=True)


def _style(p, arm_list: List[str]) -> dict:
    if p.role == "baseline":
        return {"color": plotting.BASE_COLOR, "marker": "D"}
    if p.role == "reference":
        return {"color": plotting.REFERENCE_COLOR, "marker": "s"}
    return plotting.arm_style(arm_list.index(p.role))


@plotting.styled
def figure(study: Study, pts: pd.DataFrame, runs: pd.DataFrame, trunc: pd.DataFrame):
    """Four panels over the trainable parameters (log): test score, forgetting, training memory, storage."""
    arm_list = arms(runs, "rank")
    fig, axes = plotting.subplots(2, 2, width=8.0, height=6.4, sharex=True)
    panels = [(axes[0, 0], "score", "test score (95 % interval)", False),
              (axes[0, 1], "forgetting", "forgetting: held-out probe\ndrop (95 % interval)", False),
              (axes[1, 0], "memory", "optimizer state + gradients\n(measured bytes)", True),
              (axes[1, 1], "storage", "storage per task (bytes)", True)]
    colors = plotting.rank_colors(pts[pts.role.isin(arm_list)].value)
    for ax, col, ylabel, log in panels:
        for role, g in pts.groupby("role", sort=False):
            g = g.sort_values("params")
            if g[col].isna().all():
                continue
            low, high = g[f"{col}_low"].fillna(g[col]), g[f"{col}_high"].fillna(g[col])
            style = _style(g.iloc[0], arm_list)
            if role not in arm_list:
                plotting.errorbar(ax, g.params, g[col], low, high, ms=6, capsize=2, ls="none", label=g.label.iloc[0],
                                  **style)
                continue
            ax.plot(g.params, g[col], color=style["color"], lw=1, alpha=0.7,
                    label=f"{arm_title(runs, role)}, joined by rank")
            for (_, p), lo, hi in zip(g.iterrows(), low, high):
                name = f"r={int(p.value)}" if len(arm_list) == 1 else f"{arm_title(runs, role)} r={int(p.value)}"
                plotting.errorbar(ax, [p.params], [p[col]], [lo], [hi], ms=6, capsize=2, ls="none",
                                  marker=style["marker"], color=colors[p.value], label=name)
        ax.set_xscale("log")
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
    if not trunc.empty and arm_list:
        t = trunc[(trunc.scope == LIKE_FOR_LIKE) & (trunc.k > 0)].sort_values("k")
        xs = [rank_params(runs, arm_list[0], int(k)) for k in t.k]
        if len(t) and all(x is not None for x in xs):
            ax = axes[0, 0]
            ax.fill_between(xs, t.ci_low, t.ci_high, color="tab:red", alpha=0.15, lw=0,
                            label="full FT truncated to rank k on the LoRA targets (95 % interval)")
            ax.plot(xs, t["mean"], color="tab:red", lw=1, ls="--")
    axes[0, 1].axhline(0, color=plotting.GUIDE_COLOR, ls=":", lw=0.8)
    for ax in axes[1]:
        ax.set_xlabel("trainable parameters (log scale)")
    plotting.figure_legend(fig, axes, ncol=3)
    return plotting.finish(fig, study)


def finding(pts: pd.DataFrame, runs: pd.DataFrame) -> str:
    """What each rank costs against full FT (every number from ``points``); whether a rank reaches full FT is the
    reach claim's, stated from its record beside this."""
    full = pts[pts.role == "reference"]
    swept_pts = pts[~pts.role.isin(["baseline", "reference"])]
    if full.empty or swept_pts.empty:
        return "The study lacks full finetuning or a rank-swept method, so there is no rank to choose between them."
    f = full.iloc[0]
    parts = []
    for role, g in swept_pts.groupby("role", sort=False):
        g = g.sort_values("params")
        parts.append(f"{arm_title(runs, role)} spans {int(g.params.min()):,}–{int(g.params.max()):,} trainable "
                     f"parameters against full FT's {int(f.params):,}; its optimizer state and gradients are "
                     f"{100 * g.memory.min() / f.memory:.2g}–{100 * g.memory.max() / f.memory:.2g} % of full FT's and "
                     f"its storage {100 * g.storage.min() / f.storage:.2g}–{100 * g.storage.max() / f.storage:.2g} %.")
    return " ".join(parts)


class ChooseRank(Measure):
    name = "choose_rank"

    def figures(self, ctx: Context) -> Dict[str, object]:
        pts = points(ctx)
        if pts.empty or not (~pts.role.isin(["baseline", "reference"])).any():
            return {}
        return {"choose_rank": figure(ctx.study, pts, ctx.table("runs"), ctx.table("truncation"))}

    def sections(self, ctx: Context) -> List[Section]:
        if not ctx.drew("choose_rank"):
            return []
        runs = ctx.table("runs")
        return [Section("Choosing a rank: what each rank gets against what it costs",
                        [finding(points(ctx), runs)] + ctx.sentences("reach:"),
                        figure="choose_rank",
                        caption="Read across: where the test score (top left) stops rising towards full FT at the "
                                "right while memory and storage (bottom) keep growing; scope: the whole test split, "
                                "probes on the held-out tasks, every run's measured memory and storage, "
                                f"{seeds_phrase(runs.seed)}.")]
