"""Does ΔW amplify directions W barely uses? Hu et al.'s Table 7 on the last layer: ‖UᵀWVᵀ‖_F with U, V the top-r
left/right singular vectors of ΔW, of W itself, and random orthonormal ones, with ‖W‖_F, ‖ΔW‖_F and the factor
‖ΔW‖_F / ‖UᵀWVᵀ‖_F, for full finetuning (at every rank the study sweeps) and each rank-swept run at its own rank."""
from __future__ import annotations

from typing import Dict, List, Optional

import pandas as pd

from lora_study.artifacts import module_kind, module_layer

from ..loader import Run, Study
from ..plotting import KIND_TITLES
from ..roles import arm_title
from ..subspace import amplification
from .base import Context, Measure, Section, delta_runs, per_run, seeds_phrase

DEFAULT_RANKS = (4, 64)  # Hu et al.'s, for full finetuning when the study sweeps no rank


def amplification_table(study: Study, layer: Optional[int] = None, kinds=("query", "value")) -> pd.DataFrame:
    """Hu et al.'s Table 7 on the last layer (or ``layer``): ‖UᵀWVᵀ‖_F for ΔW's top-r directions, W's
    own top-r directions and random ones, with ‖W‖_F, ‖ΔW‖_F and the amplification factor."""
    swept_ranks = sorted({r.rank for r in study.swept("rank")})

    def rows(r: Run) -> List[dict]:
        out = []
        names = r.dir.delta_names()
        last = max(module_layer(n) for n in names) if layer is None else layer
        ranks = [r.rank] if r.axis == "rank" else (swept_ranks or list(DEFAULT_RANKS))
        for module in names:
            if module_layer(module) != last or module_kind(module) not in kinds:
                continue
            W, dW = study.base_weight(module), r.dir.delta(module)
            for k in ranks:
                if k > min(dW.shape):
                    continue
                a = amplification(W, dW, k)
                out.append({"member": r.member, "arm": r.arm, "label": r.label, "seed": r.seed, "module": module,
                            "kind": module_kind(module), "layer": last, "r": k, **{key: float(v) for key, v in a.items()}})
        return out

    runs = [r for r in delta_runs(study) if r.is_reference or r.axis == "rank"]
    return pd.DataFrame(per_run(study, runs, rows))


# Hu et al. 2021, Table 7 (GPT-3, layer 48, W_q): ‖UᵀWVᵀ‖_F for ΔW's / W's top-r / random directions, ‖ΔW‖_F
HU_TABLE7 = {4: {"delta_dirs": 0.32, "w_dirs": 21.67, "random_dirs": 0.02, "dw_norm": 6.91},
             64: {"delta_dirs": 1.90, "w_dirs": 37.71, "random_dirs": 0.33, "dw_norm": 3.57}}
HU_W_NORM = 61.95


def hu_factor(r: int) -> float:
    h = HU_TABLE7[r]
    return h["dw_norm"] / h["delta_dirs"]


def pivot(a: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per module kind and r (means over seeds; the factor a median, robust to a near-zero denominator): W's
    own top-r directions and random ones, then per method
    (each rank-swept arm at its own rank, full FT at every r) ΔW's directions and the factor; Hu et al.'s Table 7
    beside it where they report that r (4 and 64)."""
    rows = []
    methods = list(dict.fromkeys(a.arm))
    both = a.assign(kind="W_q, W_v") if a.kind.nunique() > 1 else a.iloc[0:0]  # the finding's pooled medians
    for (kind, r), g in pd.concat([a, both]).groupby(["kind", "r"], sort=False):
        first = g.iloc[0]
        row = {"matrix": KIND_TITLES.get(kind, kind), "layer": int(first.layer), "r": int(r),
               "‖W‖_F": f"{g.w_norm.mean():.3g}", "W top-r dirs": f"{g.w_dirs.mean():.3g}",
               "random dirs": f"{g.random_dirs.mean():.3g}"}
        for arm in methods:
            m = g[g.arm == arm]
            title = m.label.iloc[0] if len(m) and m.label.nunique() == 1 and not m.arm.isin(
                runs[runs.axis.notna()].arm).any() else arm_title(runs, arm) if arm in set(runs.arm) else arm
            row[f"{title}: ΔW dirs"] = f"{m.delta_dirs.mean():.3g}" if len(m) else "—"
            row[f"{title}: factor (median)"] = f"{m.factor.median():.1f}" if len(m) else "—"
        h = HU_TABLE7.get(int(r)) if kind == "query" else None  # their Table 7 is W_q
        row[f"Hu et al. (GPT-3 175B, layer 48, W_q, ‖W‖_F = {HU_W_NORM}): ΔW / W top-r / random, factor"] = (
            f"{h['delta_dirs']} / {h['w_dirs']} / {h['random_dirs']}, {hu_factor(int(r)):.1f}" if h else "—")
        rows.append(row)
    return pd.DataFrame(rows)


def outliers(a: pd.DataFrame, times: float = 5.0) -> pd.DataFrame:
    """Rows whose factor is over ``times`` the median of its method, matrix kind and r."""
    med = a.groupby(["arm", "kind", "r"]).factor.transform("median")
    return a.assign(median=med)[a.factor > times * med]


def finding(a: pd.DataFrame, runs: pd.DataFrame) -> str:
    layer = int(a.layer.iloc[0])
    parts = [f"On layer {layer} (the last), ‖UᵀWVᵀ‖_F with U, V the top-r singular vectors of ΔW, of W itself, and of "
             "random orthonormal pairs; factor = ‖ΔW‖_F / ‖UᵀWVᵀ‖_F. A factor well above 1 means ΔW amplifies "
             "directions that W barely uses."]
    swept = a[a.arm.isin(runs[runs.axis == "rank"].arm)]
    if len(swept):
        by_r = swept.groupby("r").factor.median()
        parts.append("The rank-swept runs' factor (median over W_q, W_v and seeds: a ratio whose denominator can come "
                     "near 0, so not a mean): " + ", ".join(f"r = {int(r)}: {f:.1f}" for r, f in by_r.items()) + ".")
        ref = a[~a.arm.isin(swept.arm)]
        if len(ref):
            parts.append("Full finetuning's ΔW, at the same r: " + ", ".join(
                f"r = {int(r)}: {f:.1f}" for r, f in ref.groupby("r").factor.median().items()) + ".")
    out = outliers(a)
    if len(out):
        parts.append("Outliers (a factor over five times its group's median, where ‖UᵀWVᵀ‖_F is near 0): " + "; ".join(
            f"{r['label']} {KIND_TITLES.get(r['kind'], r['kind'])} r = {int(r['r'])} seed {int(r['seed'])}: "
            f"{r['factor']:.1f} (median {r['median']:.1f})" for _, r in out.iterrows()) + ".")
    parts.append(f"Hu et al. (GPT-3 175B, layer 48, W_q, ‖W‖_F = {HU_W_NORM}) report a factor of about "
                 f"{hu_factor(4):.1f} at r = 4 and {hu_factor(64):.1f} at r = 64; the model, the task and the matrix "
                 "sizes differ here, so only the order of magnitude and the fall with r compare.")
    return " ".join(parts)


class Amplification(Measure):
    name = "amplification"
    tables = ("amplification",)

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        return {"amplification": amplification_table(ctx.study)}

    def sections(self, ctx: Context) -> List[Section]:
        a = ctx.table("amplification")
        if a.empty:
            return []
        seeds = seeds_phrase(ctx.study.run(m).seed for m in a.member.unique())
        return [Section("Does ΔW amplify directions W barely uses? (Hu et al., Table 7)", [
            finding(a, ctx.table("runs"))], table="amplification",
            table_caption=f"Amplification on the last layer's W_q and W_v, means over {seeds}; "
                          "Hu et al.'s Table 7 beside it at the ranks they report.")]

    def formatted(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        a = ctx.table("amplification")
        return {"amplification": pivot(a, ctx.table("runs"))} if not a.empty else {}
