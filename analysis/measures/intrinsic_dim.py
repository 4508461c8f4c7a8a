"""Is the intrinsic dimension of finetuning small? Subspace training swept over d (Li et al. 2018; Aghajanyan et al.
2020): per variant (DID, SAID) and seed, d90 and d90-gain against full finetuning and the frozen base (table
``intrinsic_dim``, averaged over seeds in ``intrinsic_dim_summary``), accuracy against d with the rank-swept arms'
parameter counts on the same axis (figure, each point with its 95 % interval over test examples and seeds), and d90
against D and the published figures (finding). Whether a tested d reaches the target is itself a comparison on the
same test examples: at d90 and at the largest d below it, acc(d) − 0.9 · acc(full FT) gets a paired 95 % interval
(``target_margins``). The thresholds themselves are ``analysis.dimension``'s.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from safetensors import safe_open

from lora_study.artifacts import DELTA, module_kind

from .. import crossed, paired, plotting
from ..dimension import (
    FRACTION,
    PUBLISHED_D90,
    crossing,
    grid_crossing,
    published_range,
)
from ..loader import Study
from ..roles import arm_title, arms, baselines, references, swept, with_roles
from .base import Context, Measure, Section, seeds_phrase
from .reach import scores

MUCH_SMALLER = 0.01  # "d90 ≪ D" when d90 / D is below 1 %
COLORS = {"DID": "tab:blue", "SAID": "tab:orange"}
MARKERS = {"DID": "o", "SAID": "s"}
COUNT_COLORS = ("tab:green", "tab:olive", "tab:cyan")  # parameter counts of each rank-swept arm on the d axis


# -- tables ---------------------------------------------------------------------------------------

def _reference(g: pd.DataFrame, seed: int, metric: str) -> tuple:
    """The same seed's run among ``g`` (the reference's or the baseline's rows) if there is one, else the mean over
    its seeds (NaN if none)."""
    same = g[g.seed == seed][metric]
    if len(same):
        return float(same.mean()), "same seed"
    return (float(g[metric].mean()), "mean over seeds") if len(g) else (float("nan"), "absent")


def _nan(x: Optional[float]) -> float:
    return float("nan") if x is None else float(x)


def intrinsic_table(study: Study, runs: Optional[pd.DataFrame] = None, metric: str = "test_accuracy",
                    fraction: float = FRACTION) -> pd.DataFrame:
    """One row per subspace variant (DID, SAID) and seed: full FT and base references, both targets,
    d90 and d90-gain (NaN where never reached), and D, the number of weights in the subspace's scope."""
    runs = with_roles(study.runs_frame() if runs is None else runs)
    # D from the method's own section of the run summary (keyed by its name)
    D = {r.member: (r.summary.get(r.method) or {}).get("D") for r in study.swept("d")}
    sub = swept(runs, "d")
    rows = []
    for (variant, seed), g in sub.groupby(["variant", "seed"], sort=True):
        curve = g.groupby("d")[metric].mean().sort_index()
        full, full_ref = _reference(references(runs), seed, metric)
        base, base_ref = _reference(baselines(runs), seed, metric)
        dims = [D[m] for m in g.member if D.get(m)]
        t90, tgain = fraction * full, base + fraction * (full - base)
        g90 = grid_crossing(curve.index, curve.values, t90) or (None, None)
        ggain = grid_crossing(curve.index, curve.values, tgain) or (None, None)
        x90, xgain = _nan(g90[0]), _nan(ggain[0])
        Dv = float(max(dims)) if dims else float("nan")
        rows.append({
            "variant": variant, "seed": int(seed), "metric": metric, "full": full, "full_reference": full_ref,
            "base": base, "base_reference": base_ref, "fraction": fraction, "dims_tested": len(curve),
            "d_min": float(curve.index.min()), "d_max": float(curve.index.max()), "best": float(curve.max()),
            "d_best": float(curve.idxmax()), "target": t90, "d90": x90, "d90_below": _nan(g90[1]),
            "d90_interpolated": _nan(crossing(curve.index, curve.values, t90)), "target_gain": tgain,
            "d90_gain": xgain, "d90_gain_below": _nan(ggain[1]),
            "d90_gain_interpolated": _nan(crossing(curve.index, curve.values, tgain)),
            "D": Dv, "d90_over_D": x90 / Dv, "d90_gain_over_D": xgain / Dv,
        })
    cols = ["variant", "seed", "metric", "full", "full_reference", "base", "base_reference", "fraction",
            "dims_tested", "d_min", "d_max", "best", "d_best", "target", "d90", "d90_below", "d90_interpolated",
            "target_gain", "d90_gain", "d90_gain_below", "d90_gain_interpolated", "D", "d90_over_D", "d90_gain_over_D"]
    return pd.DataFrame(rows, columns=cols)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sample std over seeds per variant; a d90 is averaged over the seeds that reached it
    (``*_reached`` counts them: a seed that never reaches the target has no d90 to average)."""
    rows = []
    for variant, g in table.groupby("variant", sort=True):
        row = {"variant": variant, "seeds": len(g), "D": g.D.max(), "d_min": g.d_min.min(), "d_max": g.d_max.max(),
               "full": g.full.mean(), "base": g.base.mean(), "target": g.target.mean(),
               "target_gain": g.target_gain.mean(), "best_mean": g.best.mean()}
        for col in ("d90", "d90_gain"):
            v = g[col].dropna()
            row[f"{col}_mean"] = float(v.mean()) if len(v) else float("nan")
            row[f"{col}_std"] = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
            row[f"{col}_reached"] = int(len(v))
            row[f"{col}_at_d_min"] = bool(len(v)) and bool((v <= g.d_min.loc[v.index]).all())
            empty = pd.Series(dtype=float)  # tables from before the bracket was recorded have neither column
            below = g[f"{col}_below"].dropna() if f"{col}_below" in g else empty
            row[f"{col}_below"] = float(below.max()) if len(below) else float("nan")
            interp = g[f"{col}_interpolated"].dropna() if f"{col}_interpolated" in g else empty
            row[f"{col}_interpolated"] = float(interp.mean()) if len(interp) else float("nan")
        row["d90_over_D"] = row["d90_mean"] / row["D"]
        rows.append(row)
    cols = ["variant", "seeds", "D", "d_min", "d_max", "full", "base", "target", "target_gain", "best_mean", "d90_mean",
            "d90_std", "d90_reached", "d90_at_d_min", "d90_below", "d90_interpolated", "d90_gain_mean", "d90_gain_std",
            "d90_gain_reached", "d90_gain_at_d_min", "d90_gain_below", "d90_gain_interpolated", "d90_over_D"]
    return pd.DataFrame(rows, columns=cols)


def at_d90(runs: pd.DataFrame, metric: str = "test_accuracy", fraction: float = FRACTION) -> pd.DataFrame:
    """The subspace runs at the smallest *tested* d whose seed-mean metric reaches fraction × full FT's
    (seed-mean), one d per variant and all its seeds, relabelled 'subspace DID at d90 (d=…)'. Interpolated
    d90 lies between tested d's and has no run of its own, so the tradeoff table shows the first tested d
    at or above it. Empty when there is no full FT run or no d reaches the target."""
    sub, full = swept(runs, "d"), references(runs)
    full = full[metric] if not full.empty else pd.Series(dtype=float)
    if sub.empty or full.empty:
        return sub.iloc[0:0]
    target = fraction * full.mean()
    keep = []
    for variant, g in sub.groupby("variant", sort=True):
        means = g.groupby("d")[metric].mean().sort_index()
        hit = means[means >= target]
        if len(hit):
            d = hit.index[0]
            keep.append(g[g.d == d].assign(label=f"subspace {variant} at d90 (d={int(d):,})"))
    return pd.concat(keep) if keep else sub.iloc[0:0]


def _variant_scores(study: Study, variant: str, d: float) -> Dict[int, np.ndarray]:
    """{seed: per-example test score} of the subspace runs of ``variant`` at ``d``."""
    return scores([r for r in study.swept("d") if r.variant == variant and r.value == int(d)])[0]


def point_intervals(study: Study) -> Dict[tuple, tuple]:
    """{(variant, d): 95 % interval of its mean test score over examples and seeds} (``analysis.crossed``)."""
    out = {}
    for r in study.swept("d"):
        key = (r.variant, int(r.value))
        if key not in out:
            seeds, arrays = paired.aligned(_variant_scores(study, *key))
            if seeds:
                out[key] = paired.mean_interval(arrays[0])
    return out


def target_margins(study: Study, summary: pd.DataFrame, fraction: float = FRACTION) -> pd.DataFrame:
    """Per variant and target, at its grid d90 (d90-gain) and at the largest tested d below it: acc(d) minus the
    target on the same test examples and seeds — fraction · acc(full FT) for d90, acc(base) + fraction · (acc(full
    FT) − acc(base)) for d90-gain — with its 95 % interval (``analysis.crossed``, paired on seeds and examples), and
    whether the interval lies above 0 ('reached'), below 0 ('not reached') or covers it ('unresolved')."""
    full = scores(study.references())[0]
    base = scores(study.baselines())[0]
    rows = []
    for _, r in summary.iterrows():
        for target, col in (("accuracy", "d90"), ("gain", "d90_gain")):
            for where, d in ((col, r[f"{col}_mean"]), ("below", r[f"{col}_below"])):
                if np.isnan(d) or (where == col and r.seeds > 1 and r[f"{col}_std"] > 0):
                    continue  # no such d, or seeds that reached it at different d (no one d to compare at)
                groups = [_variant_scores(study, r.variant, d), full] + ([base] if target == "gain" else [])
                seeds, arrays = paired.aligned(*groups)
                if not seeds:
                    continue
                goal = fraction * arrays[1] + ((1 - fraction) * arrays[2] if target == "gain" else 0)
                c = crossed.difference(arrays[0], goal)
                point, (lo, hi) = c.mean, c.interval(0.95)
                rows.append({"variant": r.variant, "target": target, "where": "d90" if where == col else where,
                             "d": float(d), "seeds": len(seeds), "margin": point, "ci_low": lo, "ci_high": hi,
                             "verdict": "reached" if lo > 0 else "not reached" if hi < 0 else "unresolved"})
    return pd.DataFrame(rows, columns=["variant", "target", "where", "d", "seeds", "margin", "ci_low", "ci_high",
                                       "verdict"])


LORA_RANKS = (1, 2, 4, 8, 16, 32, 64)


def lora_param_counts(study: Study, ranks: Sequence[int] = LORA_RANKS,
                      kinds: Sequence[str] = ("query", "value")) -> Dict[int, int]:
    """LoRA's trainable parameter count r · Σ(m + n) over the modules of ``kinds`` (default: W_q and W_v, the
    attn_qv preset), head excluded, with the shapes read from the header of the first saved ΔW file (no
    tensor is loaded). Empty if no run saved ΔW. Marks LoRA on the d axis of a study that ran no LoRA."""
    for run in study.runs:
        path = run.dir.file(DELTA)
        if not run.summary.get("saved", {}).get("delta") or not path.exists():
            continue
        with safe_open(str(path), framework="pt") as f:
            per_rank = sum(sum(f.get_slice(k).get_shape()) for k in f.keys() if module_kind(k) in kinds)
        return {int(r): int(r) * per_rank for r in ranks} if per_rank else {}
    return {}


# -- figure ---------------------------------------------------------------------------------------

@plotting.styled
def figure(study: Study, runs: pd.DataFrame, table: pd.DataFrame, metric: str = "test_accuracy"):
    """Metric vs d (log axis), DID and SAID with 95 % intervals over test examples and seeds; full FT (its interval as
    a band), both thresholds and the frozen base as horizontal lines; d90 (dotted) and d90-gain (dash-dot) as
    vertical lines; each rank-swept arm's trainable parameter counts (head excluded, as d excludes it) as light ticks
    on the same axis (LoRA's computed from ΔW's shapes when the study ran no rank-swept arm)."""
    fig, axes = plotting.subplots(width=8.0, height=5.4)
    ax = axes[0, 0]
    runs = with_roles(runs)
    sub = swept(runs, "d")
    seeds = sorted(set(sub.seed))
    cis = point_intervals(study)
    for variant, g in sub.groupby("variant", sort=True):
        s = g.groupby("d")[metric].mean().sort_index()
        ci = np.array([cis.get((variant, int(d)), (np.nan, np.nan)) for d in s.index], dtype=float).reshape(-1, 2)
        yerr = np.nan_to_num(np.abs(ci - s.values[:, None]).T)
        ax.errorbar(s.index, s.values, yerr=yerr, marker=MARKERS.get(variant, "o"), ms=3.5, lw=1.2,
                    capsize=2, mfc="none" if variant == "SAID" else None,
                    color=COLORS.get(variant), label=f"{variant} (mean, 95 % interval; {seeds_phrase(seeds)})")
    full, base = references(runs)[metric], baselines(runs)[metric]
    if len(full):
        f = full.mean()
        ax.axhline(f, color=plotting.REFERENCE_COLOR, lw=1.1, label=f"full FT ({f:.3f})")
        seeds_f, arrays_f = paired.aligned(scores(study.references())[0])
        if seeds_f:
            lo, hi = paired.mean_interval(arrays_f[0])
            ax.axhspan(lo, hi, color=plotting.REFERENCE_COLOR, alpha=0.12, lw=0, label="full FT, 95 % interval")
        ax.axhline(FRACTION * f, color="0.45", ls=":", lw=1, label=f"d90 target: 90 % of full FT ({FRACTION * f:.3f})")
        if len(base):
            t = base.mean() + FRACTION * (f - base.mean())
            ax.axhline(t, color="0.45", ls="-.", lw=1, label=f"d90-gain target: base + 90 % of gain ({t:.3f})")
    if len(base):
        ax.axhline(base.mean(), color=plotting.REFERENCE_COLOR, ls="--", lw=1,
                   label=f"frozen base, head only ({base.mean():.3f})")
    for _, r in summarize(table).iterrows():
        for col, ls, name in (("d90_mean", ":", "d90"), ("d90_gain_mean", "-.", "d90-gain")):
            if not np.isnan(r[col]):
                ax.axvline(r[col], color=COLORS.get(r.variant), ls=ls, lw=1.3,
                           label=f"{r.variant} {name} = {r[col]:,.0f} (grid)")
    note = None
    marks = []  # (label, {rank: trainable params without the head}) per rank-swept arm
    for arm in arms(runs, "rank"):
        g = swept(runs, "rank", arm)
        marks.append((f"{arm_title(runs, arm)} trainable params (head excluded)",
                      (g.trainable_params - g.head_params).groupby(g["value"]).first().sort_index().to_dict()))
    if not marks:
        counts = lora_param_counts(study)
        marks.append(("LoRA r on W_q, W_v, r·Σ(m + n) (no LoRA runs)", counts))
        if not counts:
            note = "No LoRA runs and no saved ΔW in this study: LoRA's parameter counts are not marked on the d axis."
    for j, (label, counts) in enumerate(marks):
        color = COUNT_COLORS[j % len(COUNT_COLORS)]
        for i, (rank, n) in enumerate(sorted(counts.items())):
            ax.axvline(n, color=color, alpha=0.35, lw=0.9, label=label if i == 0 else None)
            ax.annotate(f"r={int(rank)}", (n, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                        fontsize=plotting.ANNOTATION, color=color, ha="right", va="top")
    ax.set_xscale("log")
    ax.set_xlabel("subspace dimension d (trainable numbers, head excluded; log scale)")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (fraction correct)")
    ax.set_title("Intrinsic dimension: accuracy vs subspace dimension d" + (f"\n{note}" if note else ""),
                 fontsize=plotting.LABEL)
    plotting.figure_legend(fig, axes, ncol=2)
    return plotting.finish(fig, study)


# -- report ---------------------------------------------------------------------------------------

def _d(x: float) -> str:
    return f"{x:,.0f}"


def _value(r, col: str, interpolation: bool = True) -> str:
    """The grid value and its bracket — '100,000 (31,623 does not reach it; interpolated ≈ 14,815)' —, '≤ 10'
    when reached at the smallest tested d, '> 100,000' when never reached."""
    if not r[f"{col}_reached"]:
        return f"> {_d(r.d_max)}"
    if r[f"{col}_at_d_min"]:
        return f"≤ {_d(r.d_min)}"
    std = "" if np.isnan(r[f"{col}_std"]) else f" ± {_d(r[f'{col}_std'])}"
    seeds = f" ({r[f'{col}_reached']} of {r.seeds} seeds)" if r[f"{col}_reached"] < r.seeds else ""
    bracket = "" if np.isnan(r[f"{col}_below"]) else f"{_d(r[f'{col}_below'])} does not reach it"
    interp = "" if not interpolation or np.isnan(r[f"{col}_interpolated"]) else \
        f"interpolated on log d ≈ {_d(r[f'{col}_interpolated'])}"
    note = "; ".join(x for x in (bracket, interp) if x)
    return f"{_d(r[f'{col}_mean'])}{std}{seeds}" + (f" ({note})" if note else "")


def format_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as strings for Markdown / HTML / LaTeX."""
    rows = [{"variant": r.variant, "seeds": int(r.seeds), "D (weights in scope)": "n/a" if np.isnan(r.D) else _d(r.D),
             "d tested": f"{_d(r.d_min)}–{_d(r.d_max)}", "full FT": f"{r.full:.3f}", "frozen base": f"{r.base:.3f}",
             "d90 target": f"{r.target:.3f}", "d90": _value(r, "d90"),
             "d90-gain target": f"{r.target_gain:.3f}",
             "d90-gain": _value(r, "d90_gain") if r.full > r.base else "— (full FT has no gain over the base)",
             "d90 / D": "—" if np.isnan(r.d90_over_D) else f"{r.d90_over_D:.1e}"}
            for _, r in summary.iterrows()]
    return pd.DataFrame(rows)


def _state(r, col: str) -> str:
    if not r[f"{col}_reached"]:
        return f"{r.variant} not reached up to d = {_d(r.d_max)} (best {r.best_mean:.3f}), so > {_d(r.d_max)}"
    if r[f"{col}_at_d_min"]:
        return f"{r.variant} ≤ {_d(r.d_min)} (already reached at the smallest tested d)"
    return f"{r.variant} {_value(r, col)}"


def rates_phrase(runs: pd.DataFrame) -> str:
    """How θ_d's learning rate varied with d: 'one learning rate for every d (0.01)', or the runs of consecutive d
    sharing one ('0.09 for d = 10–3,162, 0.03 at d = 10,000, 0.01 for d = 31,623–100,000')."""
    sub = swept(with_roles(runs), "d")
    if sub.empty or "lr" not in sub:
        return "one learning rate for every d"
    per_d = sub.groupby("d").lr.agg(lambda x: tuple(sorted(set(x)))).sort_index()
    if len(set(per_d)) == 1:
        return f"one learning rate for every d ({', '.join(f'{v:g}' for v in per_d.iloc[0])})"
    spans, start = [], 0
    ds, lrs = list(per_d.index), list(per_d.values)
    for i in range(1, len(ds) + 1):
        if i == len(ds) or lrs[i] != lrs[start]:
            rate = "/".join(f"{v:g}" for v in lrs[start])
            spans.append(f"{rate} at d = {_d(ds[start])}" if i - 1 == start else
                         f"{rate} for d = {_d(ds[start])}–{_d(ds[i - 1])}")
            start = i
    return "θ_d's learning rate by d (" + ", ".join(spans) + ")"


def _margins_phrase(margins: Optional[pd.DataFrame], fraction: float = FRACTION) -> str:
    """Whether d90 and the d below it reach the target, as paired tests on the same test examples."""
    if margins is None or margins.empty:
        return ""
    parts = []
    for (variant, target), g in margins.groupby(["variant", "target"], sort=True):
        part = [f"d = {_d(r.d)} {r.margin:+.3f} {paired.fmt_interval((r.ci_low, r.ci_high))} ({r.verdict})"
                for _, r in g.sort_values("d").iterrows()]
        parts.append(f"{variant}, {'d90' if target == 'accuracy' else 'd90-gain'}: " + "; ".join(part))
    text = (f"Reaching a target is itself a comparison on the same test examples: acc(d) − {fraction:g} × acc(full "
            f"FT) for d90, acc(d) − (acc(base) + {fraction:g} × (acc(full FT) − acc(base))) for d90-gain, paired, "
            "with 95 % intervals, at the grid value and at the largest tested d below it: " + "; ".join(parts) + ".")
    if (margins.verdict == "unresolved").any():
        text += (" 'Unresolved' means the test set cannot tell whether that d reaches the target, so d90 may lie a "
                 "grid step or more from its grid value.")
    return text


def finding(summary: pd.DataFrame, describe: Optional[dict] = None, margins: Optional[pd.DataFrame] = None,
            rates: str = "one learning rate for every d") -> str:
    """d90 for DID and SAID, d90-gain, d90 against D, and Aghajanyan et al.'s published d90 (secondary)."""
    if summary.empty or summary.full.isna().all():
        return "The study has subspace runs but no full finetune: d90 (relative to full finetuning) is not measured."
    describe = describe or {}
    first = summary.iloc[0]
    parts = [f"d90, the smallest tested d whose test accuracy reaches 90 % of full finetuning's "
             f"({FRACTION:.1f} × {first.full:.3f} = {first.target:.3f}), a value on the measured grid (with the "
             "largest tested d that does not reach it, and an interpolation on log d between the two, labelled as "
             "such): " + "; ".join(_state(r, "d90") for _, r in summary.iterrows()) + "."]
    tested = _margins_phrase(margins)
    if tested:
        parts.append(tested)
    has_base = not summary.base.isna().all()
    if has_base and first.full <= first.base:
        parts.append(f"Full finetuning ({first.full:.3f}) does not beat the frozen base with a trained head "
                     f"({first.base:.3f}) in this study, so there is no finetuning gain for the subspace to recover: "
                     "d90 says nothing about the intrinsic dimension here, and no conclusion is drawn.")
        return " ".join(parts + [_published(describe, "", rates)])
    if has_base:
        parts.append(f"d90-gain, for 90 % of full finetuning's gain over the frozen base ({first.base:.3f} → "
                     f"target {first.target_gain:.3f}): " +
                     "; ".join(_state(r, "d90_gain") for _, r in summary.iterrows()) + ".")
        if first.base >= first.target:
            parts.append("The frozen base with a trained head already reaches 90 % of full finetuning's accuracy, so "
                         "d90 measures little beyond what the head alone does; d90-gain is the informative number "
                         "here.")
    reached = summary[summary.d90_reached > 0].dropna(subset=["D"])
    if len(reached):
        ratios = ", ".join(f"{r.variant} {r.d90_over_D:.1e}" for _, r in reached.iterrows())
        parts.append(f"Against D = {_d(summary.D.max())} weights in the subspace's scope, d90 / D is {ratios}.")
    said, did = summary[summary.variant == "SAID"], summary[summary.variant == "DID"]
    if len(said) and len(did) and said.d90_gain_reached.iloc[0] and did.d90_gain_reached.iloc[0]:
        s, d = said.d90_gain_mean.iloc[0], did.d90_gain_mean.iloc[0]
        rel = "below" if s < d else "equal to" if s == d else "above"
        parts.append(f"SAID's d90-gain is {rel} DID's ({_d(s)} vs {_d(d)})"
                     + ("; in Aghajanyan et al. SAID ≤ DID in every pair quoted below." if s > d else
                        (" (both at the smallest tested d, so not resolved by this sweep)."
                         if said.d90_gain_at_d_min.iloc[0] and did.d90_gain_at_d_min.iloc[0] else
                         ", as in Aghajanyan et al. (SAID ≤ DID in every pair quoted below).")))
    lo, hi = published_range()
    where = ""
    if len(reached):  # their definition: 90 % of full FT's metric
        o = reached.d90_mean.max()
        upper = bool(reached.d90_at_d_min.all())
        pos = "within" if lo <= o <= hi else "below" if o < lo else "above"
        where = (f" This study's d90 (largest over variants, {'≤ ' if upper else ''}{_d(o)}) lies {pos} the published "
                 f"range {lo:,}–{hi:,}.")
    parts.append(_published(describe, where, rates))
    return " ".join(parts)


def _published(describe: dict, where: str, rates: str = "one learning rate for every d") -> str:
    """Aghajanyan et al.'s d90 by reference to the table that quotes them (``published_table``), and what this study's
    d90 may be compared with them for."""
    model, task = describe.get("model"), describe.get("task")
    return ("Aghajanyan et al. 2020 report d90 for BERT-base, RoBERTa-base and RoBERTa-large on MRPC and QQP, DID and "
            "SAID (the published d90 table below: secondary, quoted, not reproduced here), falling with model size "
            "and with pretraining." + where +
            f" The comparison is of order of magnitude only: {model or 'this model'} on {task or 'this task'}, "
            f"test accuracy rather than the dev-set metric, {rates}, and the study's step budget.")


def published_table() -> pd.DataFrame:
    """Aghajanyan et al. 2020's d90 (``analysis.dimension.PUBLISHED_D90``), one row per model, as the report quotes
    them: the prose compares this study's d90 with their range, so the values sit in a table of the report."""
    return pd.DataFrame([{"model (Aghajanyan et al. 2020)": model, **{k: f"{v:,}" for k, v in vals.items()}}
                         for model, vals in PUBLISHED_D90.items()])


class IntrinsicDim(Measure):
    name = "intrinsic_dim"
    tables = ("intrinsic_dim", "intrinsic_dim_summary", "intrinsic_dim_margins")

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        if not ctx.study.swept("d"):
            return {}
        table = intrinsic_table(ctx.study, ctx.table("runs"))
        summary = summarize(table)
        return {"intrinsic_dim": table, "intrinsic_dim_summary": summary,
                "intrinsic_dim_margins": target_margins(ctx.study, summary)}

    def figures(self, ctx: Context) -> Dict[str, object]:
        if not ctx.has("intrinsic_dim"):
            return {}
        return {"intrinsic_dim": figure(ctx.study, ctx.table("runs"), ctx.table("intrinsic_dim"))}

    def sections(self, ctx: Context) -> List[Section]:
        if not ctx.has("intrinsic_dim"):
            return []  # no subspace runs: nothing to show (the verdict table says "not measured")
        return [Section("Intrinsic dimension (Li et al. 2018; Aghajanyan et al. 2020)", [
            "Test accuracy of subspace training θ = θ0 + P θ_d (DID) and SAID (per-layer scales from the same d) "
            "against d, the trainable numbers besides the head; d90 is the smallest tested d reaching 90 % of full "
            "finetuning's accuracy, d90-gain 90 % of its gain over the frozen base: values on the measured grid, "
            "each with the largest tested d that falls short and, labelled, an interpolation on log d.",
            finding(ctx.table("intrinsic_dim_summary"), ctx.study.describe(), ctx.table("intrinsic_dim_margins"),
                    rates_phrase(ctx.table("runs"))), *ctx.sentences("d90:")],
            figure="intrinsic_dim" if ctx.drew("intrinsic_dim") else None, table="intrinsic_dim",
            caption="Where each variant's curve first reaches the dotted d90 target (90 % of full FT) and the "
                    "dash-dot d90-gain target, against LoRA's parameter counts on the same axis; scope: the subspace "
                    "runs (θ_d moving the D weights in scope, the head trained directly), the whole test split, "
                    f"{seeds_phrase(ctx.table('intrinsic_dim').seed)} (error bars and band: 95 % intervals over test "
                    "examples and seeds).",
            table_caption="d90 and d90-gain per variant: values on the measured grid, with the largest tested d that "
                          "falls short and, labelled, an interpolation on log d."),
            Section("Published d90", [
                "The d90 that Aghajanyan et al. 2020 report (90 % of full finetuning's dev-set metric), which the "
                "finding above compares this study's d90 with."], table="intrinsic_dim_published", level=3,
                table_caption="d90 per model, task and variant, as published (Aghajanyan et al. 2020; secondary: "
                              "quoted, not reproduced here).")]

    def formatted(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        if not ctx.has("intrinsic_dim_summary"):
            return {}
        return {"intrinsic_dim": format_summary(ctx.table("intrinsic_dim_summary")),
                "intrinsic_dim_published": published_table()}
