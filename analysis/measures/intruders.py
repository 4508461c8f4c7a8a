"""Does a low-rank update bring in new directions, and do they cause forgetting? Intruder dimensions (Shuttleworth
et al. 2024): among the top k = 10 left singular vectors of W_ft = W_pre + ΔW, those with max |cos| < ε to every
singular vector of W_pre, for ε from 0.1 to 0.9 (0.5 is their code's default).

Compared like with like: every method is counted over the same matrices — each rank-swept arm's
target matrices (``targets:<arm>``; for full finetuning the same modules) and, as a second view, all block linears
(``all``, for the methods that update them all) — normalised by the number of singular vectors examined, beside
the size of the update ‖ΔW‖_F / ‖W‖_F (a larger update rotates more singular vectors whatever its rank). The
control is W_pre plus a random perturbation of the same rank and Frobenius norm as each low-rank update.

Tables: ``intruders`` (run × scope × ε: intruders, vectors examined, rate, mean relative update size; the random
controls as rows of their own), ``intruder_scaling`` (Shuttleworth et al.'s causal test, run inside each run:
intruders' singular values scaled by λ, then the target metric and forgetting again, paired with the unscaled
model). The Spearman correlation between intruder rate and forgetting, with an interval by Fisher's z, is
recorded in analysis.json and the finding."""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
import torch
from scipy import stats as sps

from lora_study.linalg import thin_svd

from .. import paired, plotting
from ..loader import Run, Study
from ..paired import fmt_interval
from ..roles import arm_title, run_columns
from .base import Context, Measure, Section, delta_runs, per_run, seeds_phrase
from .forgetting import accuracy_tasks, forgetting_scores, informative
from .reach import scores

EPS_GRID = tuple(round(x, 1) for x in np.arange(0.1, 0.91, 0.1))
K = 10
EPS = 0.5  # Shuttleworth et al.'s default
CONTROL = "random control"


def _max_cos(U0: torch.Tensor, W_ft: torch.Tensor, k: int) -> np.ndarray:
    U1 = thin_svd(W_ft.double())[0][:, :k]
    return (U1.mT @ U0).abs().max(dim=1).values.numpy()


def scopes(study: Study) -> Dict[str, List[str]]:
    """{scope: module names}: each rank-swept arm's targets (from its runs' summaries) and, when some run has ΔW of
    every block linear, ``all``."""
    out: Dict[str, List[str]] = {}
    for arm in study.arms("rank"):
        run = next(r for r in study.runs if r.arm == arm)
        if run.summary.get("lora_targets"):
            out[f"targets:{arm}"] = list(run.summary["lora_targets"])
    full = next((r for r in study.references() if r.saved.get("delta")), None)
    if full is not None:
        out["all"] = full.dir.delta_names()
    return out


def intruder_table(study: Study, k: int = K, eps_grid=EPS_GRID) -> pd.DataFrame:
    """Per run (and per random control of a low-rank run), scope and ε: intruders among the top-k left singular
    vectors of each matrix of the scope, summed; the vectors examined; their ratio; the mean ‖ΔW‖_F / ‖W‖_F."""
    scope_modules = scopes(study)

    @lru_cache(maxsize=None)
    def pre(module: str):
        W = study.base_weight(module).double()
        return W, thin_svd(W)[0]

    def rows(r: Run) -> List[dict]:
        names = set(r.dir.delta_names())
        out = []
        run_cos: Dict[str, tuple] = {}  # per module: the run's max cosines and relative update (scopes overlap)
        control_cos: Dict[tuple, np.ndarray] = {}  # per (module, its index in the scope): the control's
        for scope, modules in scope_modules.items():
            if not set(modules) <= names:
                continue
            cos, control, rel = [], [], []
            for i, module in enumerate(modules):
                W, U0 = pre(module)
                if module not in run_cos:
                    dW = r.dir.delta(module).double()
                    run_cos[module] = (_max_cos(U0, W + dW, k), float(dW.norm() / W.norm()), dW.norm())
                c, rel_update, dW_norm = run_cos[module]
                cos.append(c)
                rel.append(rel_update)
                if r.rank:  # W_pre + a random perturbation of the same rank and norm
                    if (module, i) not in control_cos:
                        g = torch.Generator().manual_seed(1000 * r.seed + i)
                        R = torch.randn(W.shape[0], r.rank, generator=g, dtype=torch.float64) @ \
                            torch.randn(r.rank, W.shape[1], generator=g, dtype=torch.float64)
                        control_cos[(module, i)] = _max_cos(U0, W + R * (dW_norm / R.norm()), k)
                    control.append(control_cos[(module, i)])
            for label, vals in (("run", cos), (CONTROL, control)):
                if not vals:
                    continue
                c = np.concatenate(vals)
                base = run_columns(r)
                if label == CONTROL:
                    base = {**base, "label": f"{CONTROL} of {r.label}", "member": f"{r.member}:control"}
                for e in eps_grid:
                    n = int((c < e).sum())
                    out.append({**base, "kind": label, "scope": scope, "eps": e, "intruders": n,
                                "matrices": len(vals), "vectors": int(c.size), "rate": n / c.size,
                                "rel_update": float(np.mean(rel))})
        return out

    return pd.DataFrame(per_run(study, delta_runs(study), rows))


def correlation_points(study: Study, intr: pd.DataFrame, scope: Optional[str] = None,
                       eps: float = EPS) -> pd.DataFrame:
    """Per finetuned run with both: its intruder rate in ``scope`` (default: the first arm's targets) at ``eps`` and
    its mean forgetting over the accuracy-scored held-out tasks."""
    if intr.empty:
        return pd.DataFrame(columns=["member", "label", "rank", "reference", "rate", "forgetting", "scope"])
    scope = scope or next((s for s in intr.scope.unique() if s.startswith("targets:")), intr.scope.iloc[0])
    at = intr[(intr.kind == "run") & (intr.scope == scope) & np.isclose(intr.eps, eps)].set_index("member")
    tasks = [t for t in accuracy_tasks(study) if informative(study, t)[0]]
    rows = []
    for r in study.runs:
        if r.is_baseline or r.member not in at.index:
            continue
        f = forgetting_scores([r], tasks)
        if f:
            # forgetting is a fraction k / n of the probe examples: rounded so that equal fractions tie exactly
            rows.append({"member": r.member, "label": r.label, "rank": r.rank, "reference": r.is_reference,
                         "rate": float(at.loc[r.member, "rate"]), "forgetting": round(float(np.mean(f[r.seed])), 12),
                         "scope": scope})
    return pd.DataFrame(rows, columns=["member", "label", "rank", "reference", "rate", "forgetting", "scope"])


def correlation(study: Study, intr: pd.DataFrame, scope: Optional[str] = None, eps: float = EPS) -> dict:
    """Spearman ρ between a run's intruder rate in ``scope`` at ``eps`` and its mean forgetting over the
    accuracy-scored held-out tasks, over finetuned runs that have both, with a 95 % interval by Fisher's z
    (z = atanh ρ with standard error sqrt(1.06 / (n − 3)), Fieller, Hartley & Pearson 1957): a closed form, so
    it does not move with a bootstrap's seed."""
    pts = correlation_points(study, intr, scope, eps)
    scope = pts.scope.iloc[0] if len(pts) else scope
    x, y = pts.rate.to_numpy(), pts.forgetting.to_numpy()
    rho, interval, p = None, None, None
    if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        res = sps.spearmanr(x, y)
        rho, p = float(res.statistic), float(res.pvalue)
    if rho is not None and len(x) >= 4:
        z, se = np.arctanh(np.clip(rho, -0.999999, 0.999999)), np.sqrt(1.06 / (len(x) - 3))
        interval = (float(np.tanh(z - 1.96 * se)), float(np.tanh(z + 1.96 * se)))
    return {"rho": rho, "interval": interval, "p": p, "n": len(x), "eps": eps, "scope": scope,
            "members": list(pts.member)}


def scaling_table(study: Study, runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Shuttleworth et al.'s causal test, per arm (pooled over its runs' seeds; runs at one rank together): the
    intruders found and scaled by λ, the target score and the mean forgetting before and after, paired."""
    tasks = [t for t in accuracy_tasks(study) if informative(study, t)[0]]
    groups: Dict[tuple, List[Run]] = {}
    for r in study.runs:
        if r.summary.get("intruder_scaling"):
            groups.setdefault((r.arm, r.value), []).append(r)
    rows = []
    m = paired.margin(study)
    for (arm, value), runs in groups.items():
        info = [r.summary["intruder_scaling"] for r in runs]
        before, _ = scores(runs)
        after, _ = scores(runs, "intruder_scaled.test")
        acc = paired.compare(after, before, m)
        f_before = forgetting_scores(runs, tasks)
        f_after = forgetting_scores(runs, tasks, "intruder_scaled.heldout")
        forg = paired.compare(f_after, f_before, m) if f_before and f_after else None
        rows.append({"arm": arm, "title": arm_title(runs_frame, arm) if runs[0].axis else runs[0].label,
                     "value": value, "seeds": len(runs), "examples": forg["n_examples"] if forg else None,
                     "lambda": info[0]["lambda"], "eps": info[0]["eps"],
                     "k": info[0]["k"], "intruders": int(sum(i["intruders"] for i in info)),
                     "vectors": int(sum(i["vectors_examined"] for i in info)),
                     "accuracy_change": acc["diff"] if acc else None,
                     "accuracy_change_low": acc["ci95"][0] if acc else None,
                     "accuracy_change_high": acc["ci95"][1] if acc else None,
                     "forgetting_before": forg["mean_b"] if forg else None,
                     "forgetting_after": forg["mean_a"] if forg else None,
                     "forgetting_change": forg["diff"] if forg else None,
                     "forgetting_change_low": forg["ci95"][0] if forg else None,
                     "forgetting_change_high": forg["ci95"][1] if forg else None})
    return pd.DataFrame(rows)


# -- figure ---------------------------------------------------------------------------------------

@plotting.styled
def figure(study: Study, table: pd.DataFrame, points: Optional[pd.DataFrame] = None, corr: Optional[dict] = None):
    """Intruder rate (intruders per singular vector examined) against ε on each arm's target matrices: each method's
    mean over seeds (band: their range), full finetuning in black, the random controls of equal rank and norm
    dashed; then, when the runs have held-out probes, each run's rate at ε = 0.5 against its forgetting."""
    scopes_ = [s for s in table.scope.unique() if s.startswith("targets:")] or list(table.scope.unique())[:1]
    scatter = points is not None and len(points) >= 2
    n = len(scopes_) + (1 if scatter else 0)
    fig, axes = plotting.subplots(1, n, width=1.6 + 3.3 * n, height=3.7, squeeze=False)
    for ax, scope in zip(axes[0], scopes_):
        t = table[table.scope == scope]
        runs = t[t.kind == "run"]
        ranks = sorted(runs["rank"].dropna().unique())
        colors = plotting.rank_colors(ranks)
        for _, rows in t.groupby(["arm", "rank", "kind"], sort=False, dropna=False):
            g = rows.groupby("eps").rate.agg(["mean", "min", "max"]).reset_index()
            first = rows.iloc[0]
            control = first.kind != "run"
            color = plotting.REFERENCE_COLOR if first.reference else colors.get(first["rank"], "tab:orange")
            name = first.label if not control else None
            ax.plot(g.eps, g["mean"], color=color, ls="--" if control else "-", lw=1 if control else 1.4,
                    marker=None if control else "o", ms=3, label=name)
            if not control and rows.seed.nunique() > 1:
                ax.fill_between(g.eps, g["min"], g["max"], color=color, alpha=0.15, lw=0)
        ax.plot([], [], color="0.4", ls="--", label="random perturbation, same rank and norm")
        ax.set_xlabel("ε (cosine threshold)")
        ax.set_ylabel("intruders per singular vector examined")
        ax.set_title(f"on {scope.split(':', 1)[-1]}'s target matrices" if ":" in scope else "all block linears",
                     fontsize=plotting.LABEL)
    if scatter:
        ax = axes[0][-1]
        ranks = sorted(points["rank"].dropna().unique())
        colors = plotting.rank_colors(ranks)
        for _, p in points.iterrows():
            color = plotting.REFERENCE_COLOR if p.reference else colors.get(p["rank"], "tab:orange")
            ax.scatter(p.rate, p.forgetting, color=color, marker="s" if p.reference else "o", s=22)
        ax.axhline(0, color=plotting.GUIDE_COLOR, ls=":", lw=0.8)
        ax.set_xlabel(f"intruder rate at ε = {EPS}")
        ax.set_ylabel("mean forgetting (held-out probes)")
        title = "one point per run"
        if corr and corr.get("rho") is not None and corr.get("interval"):
            lo, hi = corr["interval"]
            title = f"Spearman ρ = {corr['rho']:.2f} [{lo:+.2f}, {hi:+.2f}]"
        ax.set_title(title, fontsize=plotting.LABEL)
    plotting.figure_legend(fig, axes[0][:len(scopes_)], ncol=3)
    return plotting.finish(fig, study)


def formatted_table(intr: pd.DataFrame, eps: float = EPS) -> pd.DataFrame:
    """Per scope and method at ``eps``: intruders per run, the rate, the relative update size, and the random
    control's rate, means over seeds."""
    at = intr[np.isclose(intr.eps, eps)]
    rows = []
    for scope in at.scope.unique():
        s = at[at.scope == scope]
        runs, controls = s[s.kind == "run"], s[s.kind == CONTROL]
        for label in dict.fromkeys(runs.label):
            g = runs[runs.label == label]
            c = controls[controls.label == f"{CONTROL} of {label}"]
            rows.append({"matrices": scope.split(":", 1)[1] + "'s targets" if ":" in scope else "all block linears",
                         "method": label, "seeds": g.seed.nunique(),
                         f"intruders (ε = {eps:g}, top {K})": f"{g.intruders.mean():.1f} of {int(g.vectors.iloc[0])}",
                         "rate": f"{100 * g.rate.mean():.1f} %",
                         "random control rate": f"{100 * c.rate.mean():.1f} %" if len(c) else "—",
                         "‖ΔW‖/‖W‖": f"{g.rel_update.mean():.3g}"})
    return pd.DataFrame(rows)


def formatted_scaling(scaling: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([{
        "method": r.title + ("" if pd.isna(r.value) else f" r={int(r.value)}"), "seeds": int(r.seeds),
        "λ": f"{r['lambda']:g}", "intruders scaled": f"{int(r.intruders)} of {int(r.vectors)}",
        "test score change [95 %]": "—" if pd.isna(r.accuracy_change) else
        f"{r.accuracy_change:+.3f} {fmt_interval((r.accuracy_change_low, r.accuracy_change_high))}",
        "forgetting before → after": "—" if pd.isna(r.forgetting_change) else
        f"{r.forgetting_before:+.3f} → {r.forgetting_after:+.3f}",
        "forgetting change [95 %]": "—" if pd.isna(r.forgetting_change) else
        f"{r.forgetting_change:+.3f} {fmt_interval((r.forgetting_change_low, r.forgetting_change_high))}"}
        for _, r in scaling.iterrows()])


# -- finding --------------------------------------------------------------------------------------

def finding(intr: pd.DataFrame, corr: dict, scaling: pd.DataFrame) -> List[str]:
    if intr.empty:
        return ["No ΔW was saved, so intruder dimensions are not measured."]
    parts = []
    for scope in [s for s in intr.scope.unique() if s.startswith("targets:")]:
        at = intr[(intr.scope == scope) & np.isclose(intr.eps, EPS)]
        g = at.groupby(["kind", "label"], sort=False).agg(rate=("rate", "mean"), n=("intruders", "mean"),
                                                         vectors=("vectors", "first"), rel=("rel_update", "mean"))
        runs = g.loc["run"] if "run" in g.index.get_level_values(0) else pd.DataFrame()
        controls = g.loc[CONTROL] if CONTROL in g.index.get_level_values(0) else pd.DataFrame()
        arm = scope.split(":", 1)[1]
        parts.append(f"On {arm}'s {int(runs.vectors.iloc[0] // K)} target matrices ({K} singular vectors each, "
                     f"ε = {EPS}; mean over seeds): " + ", ".join(
                         f"{label} {row.n:.1f} intruders ({100 * row.rate:.1f} %, ‖ΔW‖/‖W‖ {row.rel:.3g})"
                         for label, row in runs.iterrows()) + "." +
                     (" The random controls of the same rank and norm: " + ", ".join(
                         f"{label.replace(CONTROL + ' of ', '')} {100 * row.rate:.1f} %"
                         for label, row in controls.iterrows()) + "." if len(controls) else ""))
    if not scaling.empty:
        for _, r in scaling.iterrows():
            name = r.title + ("" if pd.isna(r.value) else f" r={int(r.value)}")
            if not r.intruders:  # nothing to scale: the model is unchanged, and a zero-width interval says nothing
                parts.append(f"{name} has no intruder dimension to scale ({r.seeds} run(s)): the test is a no-op.")
                continue
            text = (f"Scaling the {r.intruders} intruder dimensions of {name} ({r.seeds} run(s)) by λ = {r['lambda']:g}: "
                    f"test score {r.accuracy_change:+.3f} "
                    f"{fmt_interval((r.accuracy_change_low, r.accuracy_change_high))}")
            if not pd.isna(r.forgetting_change):
                text += (f", forgetting {r.forgetting_before:+.3f} → {r.forgetting_after:+.3f} (change "
                         f"{r.forgetting_change:+.3f} {fmt_interval((r.forgetting_change_low, r.forgetting_change_high))})")
            parts.append(text + ".")
    return parts


class Intruders(Measure):
    name = "intruders"
    tables = ("intruders", "intruder_scaling")

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        return {"intruders": intruder_table(ctx.study), "intruder_scaling": scaling_table(ctx.study, ctx.table("runs"))}

    def correlation(self, ctx: Context) -> dict:
        return correlation(ctx.study, ctx.table("intruders"))

    def meta(self, ctx: Context) -> Dict[str, object]:
        return {"intruders_vs_forgetting": self.correlation(ctx)}

    def figures(self, ctx: Context) -> Dict[str, object]:
        table = ctx.table("intruders")
        if table.empty:
            return {}
        return {"intruders": figure(ctx.study, table, correlation_points(ctx.study, table), self.correlation(ctx))}

    def sections(self, ctx: Context) -> List[Section]:
        if not ctx.drew("intruders"):
            return []
        table, scaling = ctx.table("intruders"), ctx.table("intruder_scaling")
        out = [Section("Do low-rank updates bring in intruder dimensions?",
                       finding(table, self.correlation(ctx), scaling) +
                       ctx.sentences("intruders:", "intruders_forgetting", "intruder_scaling"),
                       figure="intruders", table="intruders",
                       caption="Whether LoRA's curves lie above full FT's (black) and above their random controls of "
                               "the same rank and norm (dashed), and whether runs with more intruders forget more "
                               f"(right); scope: each arm's target matrices, top {K} left singular vectors each, "
                               f"{seeds_phrase(table.seed)} (band: range over seeds).",
                       table_caption=f"Intruder dimensions at ε = {EPS} (Shuttleworth et al.'s default), means over "
                                     "seeds, beside the update size ‖ΔW‖_F / ‖W‖_F.")]
        if not scaling.empty:
            out.append(Section("Scaling intruders down", [
                "Shuttleworth et al.'s causal test, run inside each run: the intruders' singular values scaled by λ, "
                "then the target metric and forgetting measured again, paired with the unscaled model."],
                table="intruder_scaling", level=3,
                table_caption="Change in test score and in forgetting when the intruders are scaled by λ (95 % "
                              "intervals, paired on the same examples)."))
        return out

    def formatted(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        table, scaling = ctx.table("intruders"), ctx.table("intruder_scaling")
        out = {"intruders": formatted_table(table)} if not table.empty else {}
        if not scaling.empty:
            out["intruder_scaling"] = formatted_scaling(scaling)
        return out
