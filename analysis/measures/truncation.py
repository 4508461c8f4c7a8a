"""Does a method trained at rank r reach full finetuning, and does full finetuning's update survive truncation to
rank k? The table ``truncation`` holds, per seed and k, the test accuracy of W_pre + trunc_k(ΔW_full) (evaluated
inside the reference run), beside every rank-swept arm trained at rank k (one row per arm: LoRA, QLoRA, …), full
finetuning and the frozen base; the figure draws them against the rank; the finding says from which rank each
arm comes within two binomial standard errors of full finetuning."""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import matplotlib.pyplot as plt
import pandas as pd

from .. import plotting
from ..loader import Study
from ..roles import arm_title, arms, baselines, references, swept
from .base import Context, Measure, Section

LIKE_TODAY = "finetuned_rest"  # the scope whose rest of the model keeps its finetuned values


def truncation_table(study: Study) -> pd.DataFrame:
    """Per reference run (seed), truncation rank k and rank-swept arm: test accuracy of W_pre + trunc_k(ΔW_full),
    of the arm trained at rank k (``trained_accuracy``, NaN if it has no run there), of full FT and of the frozen
    base, and the share of full FT's gain over the base that the truncated update keeps. Without a rank-swept
    arm, one row per (seed, k) with no arm."""
    rows = []
    base = {r.seed: r.summary["metrics"]["test_accuracy"] for r in study.baselines()}
    swept_arms = study.arms("rank") or [None]
    for f in study.references():
        full_acc = f.summary["metrics"]["test_accuracy"]
        scopes = (f.summary.get("truncation") or {}).get("scopes", {})
        entries = [(scope, t) for scope, e in scopes.items() for t in e["ranks"]]
        for (scope, t), arm in ((e, a) for e in entries for a in swept_arms):
            k = int(t["k"])
            trained = study.find(arm, f.seed, k) if arm is not None else None
            rows.append({"seed": f.seed, "scope": scope, "k": k, "truncated_full_accuracy": t["test_accuracy"],
                         "arm": arm, "trained_accuracy": trained.summary["metrics"]["test_accuracy"] if trained else None,
                         "full_accuracy": full_acc, "base_accuracy": base.get(f.seed),
                         "gain_kept": _gain_kept(t["test_accuracy"], full_acc, base.get(f.seed))})
    df = pd.DataFrame(rows)
    return df.astype({"trained_accuracy": float}) if not df.empty else df


def view(trunc: pd.DataFrame, scope: str = LIKE_TODAY) -> pd.DataFrame:
    """The rows of one truncation scope with k ≥ 1."""
    return trunc[(trunc.scope == scope) & (trunc.k > 0)] if not trunc.empty else trunc


def truncated(trunc: pd.DataFrame) -> pd.DataFrame:
    """One row per (seed, k) of the default scope: the truncated reference, without the per-arm repetition."""
    trunc = view(trunc)
    return trunc.drop_duplicates(["seed", "k"]) if not trunc.empty else trunc


def _gain_kept(acc: float, full: float, base: Optional[float]) -> Optional[float]:
    """Fraction of full FT's gain over the base that survives: (acc − base) / (full − base)."""
    if base is None or full == base:
        return None
    return (acc - base) / (full - base)


# -- figure ---------------------------------------------------------------------------------------

def figure(study: Study, trunc: pd.DataFrame, runs: pd.DataFrame):
    """Test accuracy: full FT truncated to rank k, each rank-swept arm trained at rank k, full FT and the base."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    if not trunc.empty:
        t = truncated(trunc).groupby("k").truncated_full_accuracy.agg(["mean", "std"]).reset_index()
        ax.errorbar(t.k, t["mean"], yerr=t["std"].fillna(0), marker="s", ms=3, color="tab:red",
                    label="full FT, ΔW truncated to rank k")
    for i, arm in enumerate(arms(runs, "rank")):
        g = swept(runs, "rank", arm).groupby("value").test_accuracy.agg(["mean", "std"]).reset_index()
        ax.errorbar(g["value"], g["mean"], yerr=g["std"].fillna(0), ms=3, **plotting.arm_style(i),
                    label=f"{arm_title(runs, arm)} trained at rank r")
    for rows, style, note in ((references(runs), "-", ""), (baselines(runs), "--", " (head only)")):
        if len(rows):
            acc = rows.test_accuracy.mean()
            ax.axhline(acc, color=plotting.REFERENCE_COLOR, ls=style, lw=1, label=f"{rows.label.iloc[0]}{note} ({acc:.3f})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rank k (log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Does the finetuning update live in a few directions?")
    ax.legend(fontsize=plotting.LEGEND)
    return plotting.finish(fig, study)


# -- finding --------------------------------------------------------------------------------------

def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def rank_finding(runs: pd.DataFrame, trunc: pd.DataFrame, n_test: Optional[int] = None) -> str:
    """From which rank each rank-swept arm comes within two binomial standard errors of full finetuning, the
    share of full FT's gain it keeps, and how truncating full FT's ΔW to rank k compares."""
    full, base = references(runs), baselines(runs)
    full = full.test_accuracy if not full.empty else pd.Series(dtype=float)
    base_acc = base.test_accuracy if not base.empty else pd.Series(dtype=float)
    swept_arms = arms(runs, "rank")
    if full.empty or not swept_arms:
        names = " or ".join(arm_title(runs, a) for a in swept_arms) or "LoRA"
        return (f"The study lacks full finetuning or {names} runs, so {names}'s accuracy is not compared with full "
                "finetuning's.")
    f = full.mean()
    sizes = runs.n_test.dropna() if "n_test" in runs else pd.Series(dtype=float)
    n = n_test or (int(sizes.min()) if len(sizes) else 1000)  # the test examples each run was scored on
    tol = 2 * _se(f, n)
    head = "trainable_params" in runs and (base.trainable_params > 0).any() if not base.empty else False
    parts = [f"Full finetuning reaches {f:.3f} test accuracy"
             + (f", the frozen base {'with a trained head' if head else '(nothing trained)'} {base_acc.mean():.3f}"
                if len(base_acc) else "") + "."]
    if len(base_acc) and f <= base_acc.mean() + tol:
        names = " or ".join(arm_title(runs, a) for a in swept_arms)
        parts.append(f"Full finetuning does not beat the frozen base by more than two binomial standard errors ({tol:.3f}), "
                     f"so this study has no finetuning gain to compare {names} against: no conclusion on rank.")
        return " ".join(parts)
    for arm in swept_arms:
        parts += _arm_reach(swept(runs, "rank", arm).groupby("value").test_accuracy.mean(), arm_title(runs, arm), f,
                            tol, base_acc)
    if not trunc.empty:
        t = truncated(trunc).groupby("k").truncated_full_accuracy.mean()
        ok = [int(k) for k, acc in t.items() if acc >= f - tol]
        parts.append("Truncating every ΔW of the full finetune to rank k gives " +
                     ", ".join(f"k={int(k)} {acc:.3f}" for k, acc in t.items()) +
                     (f"; from k = {min(ok)} it stays within two standard errors of the untruncated model." if ok else
                      "; no tested k recovers the full finetune within two standard errors, so full finetuning's "
                      "gain is not carried by its top directions alone."))
        for arm in (a for a in swept_arms if "arm" in trunc):
            both = view(trunc)[view(trunc).arm == arm].groupby("k")[["truncated_full_accuracy", "trained_accuracy"]].mean().dropna()
            if not both.empty:
                better = int((both.trained_accuracy > both.truncated_full_accuracy).sum())
                lead = "Training at rank k" if len(swept_arms) == 1 else f"Training {arm_title(runs, arm)} at rank k"
                parts.append(f"{lead} beats truncating full finetuning to rank k at {better} of {len(both)} ranks.")
    return " ".join(parts)


def _arm_reach(acc: pd.Series, title: str, f: float, tol: float, base: pd.Series) -> List[str]:
    """Sentences on one rank-swept arm: its mean test accuracy by rank ``acc`` against full FT's ``f``."""
    parts = []
    reach = [int(r) for r, a in acc.items() if a >= f - tol]
    best_r = int(acc.idxmax())
    if reach:
        parts.append(f"{title} comes within two binomial standard errors ({tol:.3f}) of full finetuning from r = "
                     f"{min(reach)} ({acc[min(reach)]:.3f}); at r = {int(acc.index.min())} it reaches {acc.iloc[0]:.3f}. "
                     f"This supports the claim that {title} gets most of the benefit at small rank.")
        above = [int(r) for r, a in acc.items() if a > f + tol]
        if above:
            parts.append(f"{title} beats full finetuning by more than two standard errors at r = "
                         f"{', '.join(map(str, above))}: before reading that as {title} being better, check that full "
                         "finetuning's learning rate was searched (study.lr_search) and its budget sufficed.")
    else:
        parts.append(f"No {title} rank comes within two binomial standard errors ({tol:.3f}) of full finetuning: the "
                     f"best is r = {best_r} at {acc[best_r]:.3f}. On this study the claim that {title} matches full "
                     "finetuning at small rank is not supported.")
    if len(base):
        g = f - base.mean()
        if g > 0:
            kept = (acc - base.mean()) / g
            parts.append(f"Share of full finetuning's gain over the base kept by {title}: " +
                         ", ".join(f"r={int(r)} {100 * k:.0f} %" for r, k in kept.items()) + ".")
    return parts


class Truncation(Measure):
    name = "truncation"
    tables = ("truncation",)

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        return {"truncation": truncation_table(ctx.study)}

    def figures(self, ctx: Context) -> Dict[str, object]:
        runs = ctx.table("runs")
        return {"truncation": figure(ctx.study, ctx.table("truncation"), runs)} if not runs.empty else {}

    def sections(self, ctx: Context) -> List[Section]:
        return [Section("Does LoRA reach full finetuning, and does the update survive truncation?",
                        [rank_finding(ctx.table("runs"), ctx.table("truncation"))],
                        figure="truncation" if ctx.drew("truncation") else None)]
