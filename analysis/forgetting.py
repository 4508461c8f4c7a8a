"""Forgetting on held-out tasks (Biderman et al. 2024): forgetting = base probe accuracy − finetuned probe
accuracy per held-out task, and its mean; the learning–forgetting Pareto plot; and the Spearman
correlation between intruder-dimension counts and forgetting (Shuttleworth et al. 2024)."""
from __future__ import annotations

from typing import Dict, Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .figures import _caption
from .study import Study


def forgetting_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: target gain over the frozen base (same seed), mean forgetting, per-task forgetting, CKA."""
    if runs.empty or "forgetting_mean" not in runs:
        return pd.DataFrame()
    base = runs[runs.method == "none"].set_index("seed").test_accuracy
    cols = ["member", "method", "label", "rank", "d", "seed", "test_accuracy", "forgetting_mean", "cka"] + \
        [c for c in runs.columns if c.startswith("forgetting_") and c != "forgetting_mean"] + \
        [c for c in runs.columns if c.startswith(("heldout_", "metric_"))] + ["probe_n_test"]
    t = runs[[c for c in cols if c in runs]].copy()
    t["gain_over_base"] = [a - base.get(s, np.nan) for a, s in zip(t.test_accuracy, t.seed)]
    return t


def forgetting_difference_se(forget: pd.DataFrame, reference: str = "full") -> Optional[float]:
    """Standard error of a difference in mean forgetting between two runs, from the probes' sampling noise:
    sqrt(2 · Σ_t p_t (1 − p_t) / n) / T over the T held-out tasks, with p_t the ``reference`` method's probe
    accuracy on task t and n the probe's test examples per task (unpaired binomial, so conservative: both
    runs are probed on the same examples). None without probe sizes."""
    if forget.empty or "probe_n_test" not in forget:
        return None
    ref = forget[forget.method == reference]
    tasks = [c for c in forget.columns if c.startswith("heldout_")]
    n = ref.probe_n_test.dropna()
    if ref.empty or not tasks or n.empty or float(n.iloc[0]) <= 0:
        return None
    p = ref[tasks].mean().to_numpy(dtype=float)
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        return None
    return float(np.sqrt(2 * np.sum(p * (1 - p)) / float(n.iloc[0])) / len(tasks))


def intruder_correlation(forget: pd.DataFrame, intruders: pd.DataFrame, eps: float = 0.5) -> Dict[str, Optional[float]]:
    """Spearman ρ between a run's intruder count (at ε) and its mean forgetting, over finetuned runs."""
    if forget.empty or intruders.empty:
        return {"rho": None, "p": None, "n": 0}
    from scipy.stats import spearmanr
    i = intruders[np.isclose(intruders.eps, eps)][["member", "intruders"]]
    j = forget.merge(i, on="member")
    j = j[j.method != "none"].dropna(subset=["forgetting_mean"])
    if len(j) < 3 or j.intruders.nunique() < 2 or j.forgetting_mean.nunique() < 2:
        return {"rho": None, "p": None, "n": int(len(j))}
    rho, p = spearmanr(j.intruders, j.forgetting_mean)
    return {"rho": float(rho), "p": float(p), "n": int(len(j)), "eps": eps}


def forgetting_vs_rank(study: Study, forget: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(5, 3.4))
    lora = forget[forget.method == "lora"].groupby("rank").forgetting_mean.agg(["mean", "std"]).reset_index()
    if not lora.empty:
        ax.errorbar(lora["rank"], lora["mean"], yerr=lora["std"].fillna(0), marker="o", ms=3, color="tab:blue",
                    label="LoRA at rank r")
    full = forget[forget.method == "full"].forgetting_mean
    if len(full):
        ax.axhline(full.mean(), color="black", lw=1, label=f"full FT ({full.mean():+.3f})")
        if len(full) > 1:
            ax.axhspan(full.mean() - full.std(), full.mean() + full.std(), color="0.85", zorder=0)
    ax.axhline(0, color="0.5", ls=":", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("LoRA rank r (log scale)")
    ax.set_ylabel("forgetting (base − finetuned probe accuracy)")
    ax.set_title("Forgetting on held-out tasks vs rank")
    ax.legend(fontsize=7)
    _caption(fig, study)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def pareto(study: Study, forget: pd.DataFrame):
    """x: target-task gain over the base, y: mean forgetting; one point per run."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    cmap = plt.get_cmap("viridis")
    ranks = sorted(forget[forget.method == "lora"]["rank"].dropna().unique())
    for _, r in forget[forget.method != "none"].iterrows():
        if r.method == "lora":
            color, marker = cmap(ranks.index(r["rank"]) / max(len(ranks) - 1, 1)), "o"
        else:
            color, marker = ("black", "s") if r.method == "full" else ("tab:orange", "^")
        ax.scatter(r.gain_over_base, r.forgetting_mean, color=color, marker=marker, s=28)
        ax.annotate(r.label.replace("LoRA ", ""), (r.gain_over_base, r.forgetting_mean), fontsize=6,
                    xytext=(3, 2), textcoords="offset points")
    ax.axhline(0, color="0.5", ls=":", lw=0.8)
    ax.set_xlabel("learning: test-accuracy gain over the frozen base")
    ax.set_ylabel("forgetting: mean held-out probe drop")
    ax.set_title("Learning vs forgetting (one point per run)")
    _caption(fig, study)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig
