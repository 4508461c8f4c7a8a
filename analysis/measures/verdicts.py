"""The verdict table that opens the report: one row per claim — the seed's tradeoff rows (trainable parameters,
optimizer memory, latency after merging, storage per task, expressivity, forgetting) and the papers' findings
(LoRA reaches full finetuning at small rank; full finetuning's ΔW is high-rank; ranks share their top direction;
intruder dimensions appear in LoRA, not in full finetuning, and predict forgetting; d90 ≪ D; LoRA forgets less)
— with the value measured in this study and its interval, the published value, and a verdict:

- ``holds``: the measurement supports the claim by the rule stated in the row;
- ``does not hold``: the measurement contradicts it (an interval on the other side, a difference in the other
  direction);
- ``unresolved``: the interval is too wide to decide either way (not significant is not the same as no effect);
- ``not measured``: the study has no runs that can test it.

Each verdict reads the tables of the measure that tests the claim (``ctx.table``), so the numbers here are the
numbers of the sections below."""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import pandas as pd

from .. import stats
from ..paired import fmt_interval
from .base import Context, Measure, Section
from .forgetting import FORGETS_LESS, FORGETS_MORE, NO_MORE
from .intruders import correlation

HOLDS, FAILS, UNRESOLVED, NOT_MEASURED = "holds", "does not hold", "unresolved", "not measured"
TYPICAL_LORA_RANK = 8  # "10–100× the rank of typical LoRA configurations" (Biderman et al.), against r = 8


def _row(claim: str, source: str, published: str, measured: str, verdict: str, rule: str) -> dict:
    return {"claim": claim, "source": source, "published": published, "measured": measured, "verdict": verdict,
            "rule": rule}


def _interval_verdict(lo: float, hi: float, threshold: float) -> str:
    """holds when the whole interval is above ``threshold``, does not hold when it is all below, else unresolved."""
    if lo > threshold:
        return HOLDS
    return FAILS if hi < threshold else UNRESOLVED


def cost_rows(ctx: Context) -> List[dict]:
    t = ctx.table("tradeoff")
    rows = []
    if t.empty or not (t.method.astype(str) != "").any():
        return rows
    full = t[t.reference.astype(bool)] if "reference" in t else t.iloc[0:0]
    swept = t[t.axis == "rank"] if "axis" in t else t.iloc[0:0]
    if full.empty or swept.empty:
        return [_row("trainable parameters, optimizer memory, storage", "the seed's tradeoff table",
                     "full FT 100 %; LoRA ~0.1–1 %", "—", NOT_MEASURED, "needs full finetuning and a rank-swept run")]
    f = full.iloc[0]
    pct = 100 * swept.trainable_params / f.trainable_params
    rows.append(_row("LoRA trains a sliver of the parameters", "the seed's tradeoff table; Hu et al. 2021",
                     "~0.1–1 % of full FT (r(d+k) per adapted matrix)",
                     f"{pct.min():.3g}–{pct.max():.3g} % (r = {int(swept['value'].min())}–{int(swept['value'].max())}, "
                     "head included)", HOLDS if pct.max() < 5 else FAILS, "below 5 % at every rank"))
    opt = 100 * swept.optimizer_state_bytes / f.optimizer_state_bytes
    per_param = f.optimizer_state_bytes / f.trainable_params
    rows.append(_row("LoRA's optimizer memory is negligible", "the seed's tradeoff table",
                     "full FT ~14–16 bytes/param (mixed-precision Adam), LoRA negligible",
                     f"full FT {per_param:.1f} bytes/param of AdamW state (fp32, measured); LoRA {opt.min():.2g}–"
                     f"{opt.max():.2g} % of that", HOLDS if opt.max() < 5 else FAILS, "below 5 % of full FT's"))
    store = 100 * swept.storage_bytes / f.storage_bytes
    rows.append(_row("LoRA stores megabytes per task, not a model copy", "the seed's tradeoff table",
                     "full FT: a full model copy; LoRA: megabytes",
                     f"full FT {f.storage_bytes / 1e6:.1f} MB; LoRA {swept.storage_bytes.min() / 1e6:.2f}–"
                     f"{swept.storage_bytes.max() / 1e6:.2f} MB ({store.min():.2g}–{store.max():.2g} %)",
                     HOLDS if store.max() < 10 else FAILS, "below 10 % of a model copy at every rank"))
    rows.append(_latency_row(t))
    return rows


def _latency_row(t: pd.DataFrame) -> dict:
    claim, source = "merged LoRA adds no inference latency", "Hu et al. 2021 (GPT-2 medium: merged = base)"
    sizes = sorted({int(c.split("batch")[1][:-2]) for c in t.columns if c.startswith("latency_merged_batch")})
    base = t[t.baseline.astype(bool)] if "baseline" in t else t.iloc[0:0]
    full = t[t.reference.astype(bool)] if "reference" in t else t.iloc[0:0]
    swept = t[t.axis == "rank"] if "axis" in t else t.iloc[0:0]
    if not sizes or base.empty or swept.empty:
        return _row(claim, source, "merged = base", "—", NOT_MEASURED, "needs merged latency and the frozen base")
    b = max(sizes)
    merged = swept[f"latency_merged_batch{b}_s"].dropna() / base[f"latency_plain_batch{b}_s"].iloc[0]
    noise = abs(float(full[f"latency_plain_batch{b}_s"].iloc[0] / base[f"latency_plain_batch{b}_s"].iloc[0]) - 1) \
        if not full.empty and f"latency_plain_batch{b}_s" in full else 0.1
    band = max(noise, 0.05)
    within = bool((abs(merged - 1) <= band).all())
    return _row(claim, source, "merged latency = base's",
                f"merged / base at batch {b}: {merged.min():.2f}–{merged.max():.2f}× (full FT, the base's "
                f"architecture, differs from the base by {100 * noise:.0f} %: the timing noise)",
                HOLDS if within else UNRESOLVED,
                "every merged ratio within the noise band (full FT vs base, at least 5 %)")


def reach_rows(ctx: Context) -> List[dict]:
    small = ctx.table("smallest_rank")
    reach = ctx.table("reach")
    claim, source = "LoRA reaches full finetuning at small rank", "Hu et al. 2021 (WikiSQL: 73.4 at r = 1, 73.5 at r = 64)"
    if small.empty:
        return [_row(claim, source, "equal at r = 1", "—", NOT_MEASURED, "needs full FT and a rank-swept method")]
    rows = []
    for _, s in small.iterrows():
        g = reach[reach.arm == s.arm]
        m = g.margin.iloc[0]
        if s.smallest_equivalent_rank is not None and not pd.isna(s.smallest_equivalent_rank):
            measured = (f"{s.title}: smallest rank equivalent within ±{m:g}: r = {int(s.smallest_equivalent_rank)} "
                        f"(90 % interval of the difference {fmt_interval((s.ci90_low, s.ci90_high))})")
            verdict = HOLDS
        else:
            worst = g.loc[g["diff"].idxmin()] if "diff" in g and g["diff"].notna().any() else None
            best = g.loc[g["diff"].idxmax()] if worst is not None else None
            measured = f"{s.title}: no rank equivalent within ±{m:g}" + (
                f"; closest r = {int(best['rank'])}: {best['diff']:+.3f} "
                f"{fmt_interval((best.diff_ci_low, best.diff_ci_high))}" if best is not None else "")
            verdict = FAILS if (g.verdict == stats.DIFFERENT).all() else UNRESOLVED
        rows.append(_row(claim, source, "equal at r = 1", measured, verdict,
                         "holds: some rank is equivalent (TOST, 90 % interval inside the margin); does not hold: "
                         "every rank differs (95 % interval excludes 0); else unresolved"))
    return rows


def rank_row(ctx: Context) -> dict:
    claim = "full finetuning's ΔW is high-rank"
    source = "Biderman et al. 2024 (secondary): 10–100× the rank of typical LoRA; Llama-2-7B rank@90 % ~1000–2800"
    sp = ctx.table("spectra")
    full = sp[sp.reference.astype(bool)] if not sp.empty and "reference" in sp else pd.DataFrame()
    if full.empty:
        return _row(claim, source, "10–100× LoRA's rank", "—", NOT_MEASURED, "needs full FT's spectra")
    x = full.groupby("seed").rank90.median().to_numpy()[:, None]
    lo, hi = stats.mean_interval(x) if len(x) > 1 else (float(x.min()), float(x.max()))
    ratio = full.rank90 / full.random_rank90 if "random_rank90" in full else None
    measured = (f"median rank at 90 % energy {np.median(full.rank90):.0f} of {int(full[['d_out', 'd_in']].min(axis=1).median())}"
                f" (seed medians {lo:.0f}–{hi:.0f})" +
                (f"; {np.median(ratio):.2f}× a random matrix's" if ratio is not None else "") +
                f"; {np.median(full.rank90) / TYPICAL_LORA_RANK:.0f}× r = {TYPICAL_LORA_RANK}")
    return _row(claim, source, "10–100× LoRA's rank", measured,
                _interval_verdict(lo, hi, 10 * TYPICAL_LORA_RANK - 1e-9) if len(x) > 1 else
                (HOLDS if np.median(full.rank90) >= 10 * TYPICAL_LORA_RANK else FAILS),
                f"rank at 90 % energy ≥ 10 × r = {TYPICAL_LORA_RANK} (the interval over seeds)")


def similarity_row(ctx: Context) -> List[dict]:
    pool = ctx.table("similarity_pooled")
    claim, source = "two ranks share their top direction", "Hu et al. 2021 §7.2: φ(1, 1) > 0.5 for r = 8 vs 64"
    if pool.empty:
        return [_row(claim, source, "φ(1, 1) > 0.5", "—", NOT_MEASURED, "needs two ranks of a rank-swept method")]
    rows = []
    for arm, g in pool.groupby("arm", sort=False):
        basis = "A" if (g.basis == "A").any() else "ΔW"
        pairs = g[(g.compares == "ranks") & (g.basis == basis)]
        if pairs.empty:
            continue
        p = pairs.iloc[0]
        seeds = g[(g.compares == "seeds") & (g.basis == basis) & (g["small"] == p["large"])]
        rnd = g[(g.compares == "random") & (g["small"] == p["small"]) & (g["large"] == p["large"])]
        measured = (f"{arm} r = {int(p['small'])} vs {int(p['large'])}, φ(1, 1) from {basis}: {p['mean']:.2f} "
                    f"[{p.ci_low:.2f}, {p.ci_high:.2f}]" +
                    (f"; same rank two seeds {seeds.iloc[0]['mean']:.2f}" if len(seeds) else "") +
                    (f"; random {rnd.iloc[0]['mean']:.3f}" if len(rnd) else ""))
        rows.append(_row(claim, source, "φ(1, 1) > 0.5", measured, _interval_verdict(p.ci_low, p.ci_high, 0.5),
                         "the 95 % interval of φ(1, 1) above 0.5 (holds) or below it (does not hold)"))
    return rows


def intruder_rows(ctx: Context, corr: dict) -> List[dict]:
    intr = ctx.table("intruders")
    source = "Shuttleworth et al. 2024"
    if intr.empty:
        return [_row("intruder dimensions appear in LoRA, not in full finetuning", source, "LoRA r ≤ 16 has them, "
                     "full FT almost never", "—", NOT_MEASURED, "needs saved ΔW")]
    rows = []
    scope = next((s for s in intr.scope.unique() if s.startswith("targets:")), None)
    at = intr[(intr.scope == scope) & np.isclose(intr.eps, 0.5) & (intr.kind == "run")] if scope else intr.iloc[0:0]
    full = at[at.reference.astype(bool)]
    lora = at[(at.axis == "rank") & (at["rank"] <= 16)]
    if len(full) and len(lora):
        per_seed = lambda d: d.groupby("seed").rate.mean()  # noqa: E731
        a, b = per_seed(lora), per_seed(full)
        seeds = sorted(set(a.index) & set(b.index))
        diff = (a[seeds] - b[seeds]).to_numpy()[:, None]
        lo, hi = stats.mean_interval(diff) if len(seeds) > 1 else (float(diff.min()), float(diff.max()))
        rows.append(_row("intruder dimensions appear in LoRA, not in full finetuning", source,
                         "LoRA r ≤ 16 has intruders, full FT almost never (RoBERTa-base)",
                         f"on {scope.split(':')[1]}'s targets at ε = 0.5: LoRA (r ≤ 16) {100 * a.mean():.1f} % of top-10 "
                         f"vectors, full FT {100 * b.mean():.1f} % (difference over seeds "
                         f"[{100 * lo:+.1f}, {100 * hi:+.1f}] points)",
                         _interval_verdict(lo, hi, 0.0) if len(seeds) > 1 else UNRESOLVED,
                         "LoRA's rate above full FT's, the interval over seeds excluding 0"))
    if corr.get("rho") is not None and corr.get("interval"):
        lo, hi = corr["interval"]
        rows.append(_row("more intruders, more forgetting", source, "Spearman ρ = 0.971 (RoBERTa)",
                         f"ρ = {corr['rho']:.2f} [{lo:+.2f}, {hi:+.2f}] over {corr['n']} runs",
                         _interval_verdict(lo, hi, 0.0), "the 95 % interval of ρ above 0"))
    scaling = ctx.table("intruder_scaling")
    # an arm with no intruder found scaled nothing: its change is 0 by construction and enters no rule
    scaled = scaling[scaling.forgetting_change.notna() & (scaling.intruders > 0)] if not scaling.empty else scaling
    if not scaled.empty:
        s = scaled
        lows, highs = s.forgetting_change_low, s.forgetting_change_high
        verdict = HOLDS if (highs < 0).all() else FAILS if (lows > 0).any() else UNRESOLVED
        rows.append(_row("scaling intruders down cuts forgetting", source,
                         "λ = 0.3: forgetting down about a third, accuracy −0.1 %",
                         "; ".join(f"{r.title}{'' if pd.isna(r.value) else f' r={int(r.value)}'}: "
                                   f"{r.forgetting_change:+.3f} {fmt_interval((r.forgetting_change_low, r.forgetting_change_high))}"
                                   for _, r in s.iterrows()), verdict,
                         "every change in forgetting below 0 with its 95 % interval (runs with intruders to "
                         "scale)"))
    return rows


def forgetting_rows(ctx: Context) -> List[dict]:
    table = ctx.table("forgetting_vs_full")
    claim, source = "LoRA forgets less than full finetuning", "Biderman et al. 2024"
    if table.empty:
        return [_row(claim, source, "LoRA forgets less", "—", NOT_MEASURED, "needs held-out probes")]
    t = table[(table.tasks == "mean") & (table.arm != "reference")]
    t = t[t.axis == "rank"] if "axis" in t else t
    if t.empty:
        return [_row(claim, source, "LoRA forgets less", "—", NOT_MEASURED, "needs a rank-swept method with probes")]
    counts = t.verdict.value_counts()
    verdict = HOLDS if counts.get(FORGETS_LESS, 0) == len(t) else FAILS if counts.get(FORGETS_MORE, 0) else UNRESOLVED
    measured = "; ".join(f"{r.title} r={int(r.value)} {r.minus_full:+.3f} "
                         f"{fmt_interval((r.minus_full_low, r.minus_full_high))}" for _, r in t.iterrows())
    rows = [_row(claim, source, "LoRA forgets less", f"LoRA − full FT forgetting: {measured}", verdict,
                 "holds: every rank forgets less (95 % interval below 0); does not hold: some rank forgets more")]
    no_more = counts.get(FORGETS_LESS, 0) + counts.get(NO_MORE, 0)
    rows.append(_row("LoRA's forgetting is bounded (no worse than full finetuning)", "the seed's tradeoff table",
                     "bounded by construction", f"{no_more} of {len(t)} ranks forget no more than full FT within the "
                     f"margin ±{t.margin.iloc[0]:g}", HOLDS if no_more == len(t) else
                     FAILS if counts.get(FORGETS_MORE, 0) else UNRESOLVED,
                     "non-inferiority: the upper end of the 90 % interval below the margin at every rank"))
    return rows


def expressivity_row(ctx: Context) -> dict:
    sp = ctx.table("spectra")
    claim, source = "LoRA's update is rank-r only", "the seed's tradeoff table"
    if sp.empty or "axis" not in sp or not (sp.axis == "rank").any():
        return _row(claim, source, "rank-r updates only", "—", NOT_MEASURED, "needs a rank-swept method's spectra")
    lora = sp[sp.axis == "rank"]
    over = lora[lora.rank99 > lora["rank"]]
    return _row(claim, source, "rank-r updates only",
                f"rank at 99 % energy ≤ r in {len(lora) - len(over)} of {len(lora)} LoRA matrices",
                HOLDS if over.empty else FAILS, "every LoRA ΔW's rank at 99 % energy ≤ r")


def intrinsic_row(ctx: Context) -> dict:
    claim, source = "d90 ≪ D", "Aghajanyan et al. 2020 (secondary): BERT-base d90 1,608–9,295"
    if not ctx.has("intrinsic_dim_summary"):
        return _row(claim, source, "d90 ≪ D", "—", NOT_MEASURED, "needs subspace runs (experiment=intrinsic_dim)")
    s = ctx.table("intrinsic_dim_summary")
    reached = s[s.d90_reached > 0]
    if reached.empty:
        return _row(claim, source, "d90 ≪ D", f"no tested d reaches 90 % of full FT (up to {s.d_max.max():,.0f})",
                    UNRESOLVED, "d90 / D below 1 %")
    ratio = reached.d90_over_D.max()
    return _row(claim, source, "d90 ≪ D", ", ".join(f"{r.variant} d90 = {r.d90_mean:,.0f} (grid)" for _, r in
                                                    reached.iterrows()) + f"; d90 / D ≤ {ratio:.1e}",
                HOLDS if ratio < 0.01 else FAILS, "d90 / D below 1 %")


def verdict_table(ctx: Context, corr: dict) -> pd.DataFrame:
    rows = cost_rows(ctx) + [expressivity_row(ctx)] + reach_rows(ctx) + [rank_row(ctx)] + similarity_row(ctx) + \
        intruder_rows(ctx, corr) + [intrinsic_row(ctx)] + forgetting_rows(ctx)
    return pd.DataFrame(rows)


class Verdicts(Measure):
    name = "verdicts"
    tables = ("verdicts",)

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        return {"verdicts": verdict_table(ctx, correlation(ctx.study, ctx.table("intruders")))}

    def sections(self, ctx: Context) -> List[Section]:
        v = ctx.table("verdicts")
        counts = v.verdict.value_counts()
        summary = ", ".join(f"{counts[k]} {k}" for k in (HOLDS, FAILS, UNRESOLVED, NOT_MEASURED) if k in counts)
        return [Section("Verdicts", [
            f"Each claim, the value this study measured with its interval, the published value, and the verdict by "
            f"the rule in its row ({summary}). \"Unresolved\" means the interval is too wide to decide: not "
            "significant is not the same as no effect. The sections below hold the evidence."], table="verdicts")]

    def formatted(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        v = ctx.table("verdicts")
        return {"verdicts": v[["claim", "verdict", "measured", "published", "rule", "source"]]} if not v.empty else {}
