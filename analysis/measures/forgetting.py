"""Does a low-rank update forget less? Forgetting on held-out tasks (Biderman et al. 2024): forgetting = base probe
accuracy − finetuned probe accuracy per held-out task, and its mean (table ``forgetting``); forgetting against the
rank and the learning–forgetting Pareto plot (figures); the Spearman correlation between intruder-dimension counts
and forgetting (Shuttleworth et al. 2024; in analysis.json); and whether each rank-swept arm forgot less than full
finetuning by more than the probes' sampling noise (finding)."""
from __future__ import annotations

from typing import Dict, List, Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import plotting
from ..loader import Study
from ..roles import ROLE_COLUMNS, arm_title, arms, finetuned, ordered_labels, references, swept, with_roles
from .base import Context, Measure, Section


def forgetting_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: target gain over the frozen base (same seed), mean forgetting, per-task forgetting, CKA."""
    if runs.empty or "forgetting_mean" not in runs:
        return pd.DataFrame()
    runs = with_roles(runs)
    base = runs[runs.baseline.astype(bool)].set_index("seed").test_accuracy
    cols = ["member", "method", "label", "rank", "d", "seed", *ROLE_COLUMNS, "test_accuracy", "forgetting_mean",
            "cka"] + [c for c in runs.columns if c.startswith("forgetting_") and c != "forgetting_mean"] + \
        [c for c in runs.columns if c.startswith(("heldout_", "metric_"))] + ["probe_n_test"]
    t = runs[[c for c in cols if c in runs]].copy()
    t["gain_over_base"] = [a - base.get(s, np.nan) for a, s in zip(t.test_accuracy, t.seed)]
    return t


def forgetting_difference_se(forget: pd.DataFrame) -> Optional[float]:
    """Standard error of a difference in mean forgetting between two runs, from the probes' sampling noise:
    sqrt(2 · Σ_t p_t (1 − p_t) / n) / T over the T held-out tasks, with p_t the reference's (full finetuning's)
    probe accuracy on task t and n the probe's test examples per task (unpaired binomial, so conservative: both
    runs are probed on the same examples). None without probe sizes."""
    if forget.empty or "probe_n_test" not in forget:
        return None
    ref = references(forget)
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
    j = finetuned(forget.merge(i, on="member")).dropna(subset=["forgetting_mean"])
    if len(j) < 3 or j.intruders.nunique() < 2 or j.forgetting_mean.nunique() < 2:
        return {"rho": None, "p": None, "n": int(len(j))}
    rho, p = spearmanr(j.intruders, j.forgetting_mean)
    return {"rho": float(rho), "p": float(p), "n": int(len(j)), "eps": eps}


# -- figures --------------------------------------------------------------------------------------

def forgetting_vs_rank(study: Study, forget: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(5, 3.4))
    swept_arms = arms(forget, "rank")
    for i, arm in enumerate(swept_arms):
        g = swept(forget, "rank", arm).groupby("value").forgetting_mean.agg(["mean", "std"]).reset_index()
        ax.errorbar(g["value"], g["mean"], yerr=g["std"].fillna(0), ms=3, **plotting.arm_style(i),
                    label=f"{arm_title(forget, arm)} at rank r")
    full = references(forget).forgetting_mean
    if len(full):
        ax.axhline(full.mean(), color=plotting.REFERENCE_COLOR, lw=1, label=f"full FT ({full.mean():+.3f})")
        if len(full) > 1:
            ax.axhspan(full.mean() - full.std(), full.mean() + full.std(), color="0.85", zorder=0)
    ax.axhline(0, color=plotting.GUIDE_COLOR, ls=":", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"{arm_title(forget, swept_arms[0]) if len(swept_arms) == 1 else 'adapter'} rank r (log scale)")
    ax.set_ylabel("forgetting (base − finetuned probe accuracy)")
    ax.set_title("Forgetting on held-out tasks vs rank")
    ax.legend(fontsize=plotting.LEGEND)
    return plotting.finish(fig, study)


def pareto(study: Study, forget: pd.DataFrame):
    """x: target-task gain over the base, y: mean forgetting; one point per run. Rank-swept runs take the rank
    colour scale (one marker per arm), full finetuning is a black square, other runs orange triangles."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    forget = with_roles(forget)
    swept_arms = arms(forget, "rank")
    colors = plotting.rank_colors(swept(forget, "rank").value.dropna())
    for _, r in finetuned(forget).iterrows():
        if r.axis == "rank":
            color, marker = colors[r.value], plotting.ARM_MARKERS[swept_arms.index(r.arm) % len(plotting.ARM_MARKERS)]
            name = f"r={int(r.value)}" if len(swept_arms) == 1 else r.label
        else:
            color, marker = (plotting.REFERENCE_COLOR, "s") if r.reference else ("tab:orange", "^")
            name = r.label
        ax.scatter(r.gain_over_base, r.forgetting_mean, color=color, marker=marker, s=28)
        ax.annotate(name, (r.gain_over_base, r.forgetting_mean), fontsize=plotting.ANNOTATION, xytext=(3, 2),
                    textcoords="offset points")
    ax.axhline(0, color=plotting.GUIDE_COLOR, ls=":", lw=0.8)
    ax.set_xlabel("learning: test-accuracy gain over the frozen base")
    ax.set_ylabel("forgetting: mean held-out probe drop")
    ax.set_title("Learning vs forgetting (one point per run)")
    return plotting.finish(fig, study)


# -- finding --------------------------------------------------------------------------------------

def forgetting_finding(forget: pd.DataFrame, corr: dict) -> str:
    if forget.empty:
        return ("Not measured in this study: its runs carry no held-out probes, so the claim that LoRA forgets less "
                "is neither supported nor refuted here.")
    forget = with_roles(forget)
    ref = references(forget)
    full = ref.forgetting_mean
    by_arm = {arm: swept(forget, "rank", arm).groupby("value").forgetting_mean.mean() for arm in arms(forget, "rank")}
    titles = {arm: arm_title(forget, arm) for arm in by_arm}
    metrics = {c[len("metric_"):]: forget[c].dropna().iloc[0] for c in forget.columns
               if c.startswith("metric_") and forget[c].notna().any()}
    perplexity = any(m == "perplexity" for m in metrics.values())
    what = ("accuracy drops and relative perplexity increases averaged over held-out tasks; positive = worse than "
            "the base" if perplexity else "base probe accuracy − finetuned, averaged over held-out tasks")
    parts = [f"Mean forgetting ({what}): " +
             (f"{ref.label.iloc[0]} {full.mean():+.3f}; " if len(full) else "") +
             ", ".join(f"{titles[arm]} r={int(r)} {v:+.3f}" for arm, per in by_arm.items() for r, v in per.items()) + "."]
    if perplexity:  # the mean mixes units: give each task on its own
        by = finetuned(forget)
        for task, metric in metrics.items():
            col = f"forgetting_{task}"
            if col not in by:
                continue
            v = by.groupby("label")[col].mean()
            unit = "perplexity, finetuned − base" if metric == "perplexity" else f"{metric}, base − finetuned"
            parts.append(f"{task} ({unit}): " + ", ".join(f"{k} {v[k]:+.3g}" for k in ordered_labels(by)) + ".")
    se = forgetting_difference_se(forget)
    for arm, per in by_arm.items():
        if not len(full):
            break
        parts += _arm_forgetting(per, titles[arm], full.mean(), se, forget)
    if "cka" in forget and forget.cka.notna().any():
        fin = finetuned(forget)
        c = fin.groupby("label").cka.mean()
        parts.append("Linear CKA to the base's features on held-out text: " +
                     ", ".join(f"{k} {c[k]:.3f}" for k in ordered_labels(fin)) + ".")
    if corr.get("rho") is not None:
        parts.append(f"Spearman correlation between intruder count (ε = {corr['eps']}) and forgetting over {corr['n']} "
                     f"runs: ρ = {corr['rho']:.2f} (p = {corr['p']:.2g}; Shuttleworth et al. report 0.971 on RoBERTa).")
    return " ".join(parts)


def _arm_forgetting(per: pd.Series, title: str, full: float, se: Optional[float], forget: pd.DataFrame) -> List[str]:
    """Sentences on one rank-swept arm: at how many ranks it forgot less than full FT (mean ``full``), and
    whether any difference exceeds two standard errors ``se`` of the probes' noise."""
    less = [int(r) for r, v in per.items() if v < full - 1e-9]
    resolved = None if se is None else [int(r) for r, v in per.items() if abs(v - full) > 2 * se]
    verdict = (f": this supports Biderman et al.'s '{title} forgets less'." if len(less) == len(per) else
               " — the claim holds only partly here." if less else
               f": on this study the claim that {title} forgets less is not supported.")
    if resolved is not None and not resolved:
        verdict = "."
    parts = [f"{title} forgot less than full finetuning at {len(less)} of {len(per)} ranks" + verdict]
    if se is not None:
        parts.append(f"With {int(forget.probe_n_test.dropna().iloc[0])} probe examples per task, two standard "
                     f"errors of a difference in mean forgetting are about {2 * se:.3f}; " +
                     (f"the difference from full finetuning exceeds that at r = {', '.join(map(str, resolved))}."
                      if resolved else "no rank's difference from full finetuning exceeds that, so this study "
                      f"neither supports nor refutes '{title} forgets less' (more probe examples or seeds would be "
                      "needed)."))
    return parts


class Forgetting(Measure):
    name = "forgetting"
    tables = ("forgetting",)

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        return {"forgetting": forgetting_table(ctx.table("runs"))}

    def correlation(self, ctx: Context) -> dict:
        return intruder_correlation(ctx.table("forgetting"), ctx.table("intruders"))

    def meta(self, ctx: Context) -> Dict[str, object]:
        return {"intruders_vs_forgetting": self.correlation(ctx)}

    def figures(self, ctx: Context) -> Dict[str, object]:
        forget = ctx.table("forgetting")
        if forget.empty:
            return {}
        return {"forgetting_vs_rank": forgetting_vs_rank(ctx.study, forget), "pareto": pareto(ctx.study, forget)}

    def sections(self, ctx: Context) -> List[Section]:
        out = [Section("Forgetting on held-out tasks", [forgetting_finding(ctx.table("forgetting"), self.correlation(ctx))],
                       figure="forgetting_vs_rank" if ctx.drew("forgetting_vs_rank") else None)]
        if ctx.drew("pareto"):
            out.append(Section("Learning vs forgetting", [
                "Each point is one run: x is its test-accuracy gain over the frozen base (same seed), y its mean "
                "held-out forgetting. Biderman et al. found LoRA and full finetuning on roughly one Pareto curve."],
                figure="pareto"))
        return out
