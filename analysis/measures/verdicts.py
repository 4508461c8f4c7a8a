"""The claims of the low-rank hypothesis, each one record (``analysis.claims.Claim``) built once from the tables
of the measure that holds its evidence (``ctx.table``), and the two tables that open the report:

- the verdict table: the empirical claims (LoRA reaches full finetuning at small rank; full finetuning's ΔW is
  high-rank; ranks share their top direction; intruder dimensions appear in LoRA and predict forgetting; d90 ≪ D;
  LoRA forgets less, per unit; merged LoRA adds no latency; LoRA cuts training memory), each with the value measured
  here, the units behind it, the published value, the rule and the verdict;
- the accounting table: what holds by the arithmetic of the method (trainable share, optimizer state, storage,
  the rank of LoRA's update), measured against its formula.

Claims about "LoRA" read the runs' family (``lora``); a rank-swept method of another family gets claims of its own,
titled by its arm, never pooled into LoRA's. Every claim that needs seeds needs at least three
(``claims.MINIMUM``); a verdict says which of its runs did not learn.
"""
from __future__ import annotations

import math
from typing import Dict, List

import numpy as np
import pandas as pd

from .. import crossed
from ..claims import (ACCOUNTING, FAILS, FINDING, HOLDS, MINIMUM, NOT_MEASURED, TOO_LITTLE, UNINFORMATIVE, UNRESOLVED,
                      Claim, degenerate, interval_verdict, seeds_verdict)
from ..paired import fmt_interval
from .base import Context, Measure, Section
from .forgetting import FORGETS_LESS, FORGETS_MORE, NO_MORE, UNITS
from .intruders import correlation

LORA = "lora"
TYPICAL_LORA_RANK = 8  # "10–100× the rank of typical LoRA configurations" (Biderman et al.), against r = 8
LATENCY_TOLERANCE = 0.05  # "equal latency": the merged / base ratio's 90 % interval inside ±5 %
MEMORY_SHARE = 1 / 3  # Hu et al.: LoRA cut GPT-3 175B's training VRAM by 2/3 (1.2 TB to 350 GB)


def _family_arms(runs: pd.DataFrame, axis: str = "rank") -> Dict[str, List[str]]:
    """{family: its arms swept over ``axis``}, LoRA's first, in the study's order."""
    if runs.empty or "family" not in runs:
        return {}
    swept_runs = runs[runs.axis == axis].sort_values("order", kind="stable")
    if "own_setting" in swept_runs:  # arms in a setting of their own are the regret measure's
        swept_runs = swept_runs[swept_runs.own_setting.fillna(True).astype(bool)]
    out: Dict[str, List[str]] = {}
    for _, r in swept_runs.drop_duplicates("arm").iterrows():
        out.setdefault(r.family, []).append(r.arm)
    return dict(sorted(out.items(), key=lambda kv: kv[0] != LORA))


def _title(runs: pd.DataFrame, arms: List[str]) -> str:
    """How a claim names a family's arms: 'LoRA', or 'LoRA (all linear)' when one arm has a title of its own."""
    titles = list(dict.fromkeys(runs[runs.arm.isin(arms)].title.astype(str)))
    return titles[0] if len(titles) == 1 else ", ".join(titles[:-1]) + " and " + titles[-1]


def _arm_tag(runs: pd.DataFrame, arms: List[str], arm: str) -> str:
    """'' for a family of one arm, else the arm's title and a space: a claim over several arms (W_q, W_v, the MLP,
    every linear layer) names each rank's arm, so two rows at r = 16 cannot be confused."""
    if len(arms) == 1:
        return ""
    titles = runs[runs.arm == arm].title
    return (str(titles.iloc[0]) if len(titles) else arm) + " "


def _not_learned(runs: pd.DataFrame, members) -> List[str]:
    if "did_not_learn" not in runs:
        return []
    rows = runs[runs.member.isin(list(members)) & runs.did_not_learn.fillna(False).astype(bool)]
    return list(rows.member)


def _seeds_of(runs: pd.DataFrame, mask) -> int:
    return int(runs[mask].seed.nunique()) if mask.any() else 0


# -- accounting: what holds by the arithmetic of the method -------------------------------------------

def accounting_claims(ctx: Context) -> List[Claim]:
    t, runs = ctx.table("tradeoff"), ctx.table("runs")
    if t.empty or runs.empty:
        return []
    full = t[t.reference.astype(bool)] if "reference" in t else t.iloc[0:0]
    out: List[Claim] = []
    for family, arms in _family_arms(runs).items():
        swept = t[t.arm.isin(arms) & (t.axis == "rank")]
        if full.empty or swept.empty:
            continue
        f, title = full.iloc[0], _title(runs, arms)
        ranks = f"r = {int(swept['value'].min())}–{int(swept['value'].max())}"
        pct = 100 * swept.trainable_params / f.trainable_params
        formula = swept.formula_params if "formula_params" in swept else pd.Series(np.nan, index=swept.index)
        exact = bool((formula == swept.trainable_params).all())
        checked = (f"counted = formula at {int((formula == swept.trainable_params).sum())} of {len(swept)} ranks"
                   if formula.notna().all() else "the formula not checked: it needs the adapted matrices' shapes, "
                   "from saved ΔW or spectra")
        out.append(Claim(
            f"trainable:{family}", f"{title} trains r(d + k) parameters per adapted matrix", ACCOUNTING,
            HOLDS if exact else FAILS if formula.notna().all() else NOT_MEASURED,
            f"{pct.min():.3g}–{pct.max():.3g} % of full FT's ({ranks}, head included); {checked}",
            "the trainable parameters counted in the run equal the formula r(d + k) per adapted matrix plus the head",
            published="~0.1–1 % of full FT (r(d+k) per adapted matrix)", source="Hu et al. 2021",
            section="tradeoff"))
        opt = 100 * swept.optimizer_state_bytes / f.optimizer_state_bytes
        ratio = swept.measured_over_predicted
        excess = swept.optimizer_state_bytes - 8 * swept.trainable_params
        exact = bool(((excess >= 0) & (excess % 4 == 0) & (excess <= np.maximum(4096, 0.01 * 8 *
                                                                                 swept.trainable_params))).all())
        out.append(Claim(
            f"optimizer:{family}", f"{title}'s optimizer state is 8 bytes per trainable parameter (fp32 AdamW)",
            ACCOUNTING, HOLDS if exact else FAILS,
            f"measured / formula {ratio.min():.4f}–{ratio.max():.4f}; {opt.min():.2g}–{opt.max():.2g} % of full "
            f"FT's {f.optimizer_state_bytes / 1e6:.1f} MB", "measured AdamW state = 8 bytes per trainable parameter "
            "(exp_avg, exp_avg_sq) plus a 4-byte step counter per parameter tensor",
            published="full FT ~14–16 bytes/param (mixed-precision Adam), LoRA negligible",
            source="the seed's tradeoff table", section="tradeoff"))
        store = 100 * swept.storage_bytes / f.storage_bytes
        out.append(Claim(
            f"storage:{family}", f"{title} stores megabytes per task, not a model copy", ACCOUNTING,
            HOLDS if store.max() < 10 else FAILS,
            f"full FT {f.storage_bytes / 1e6:.1f} MB; {title} {swept.storage_bytes.min() / 1e6:.2f}–"
            f"{swept.storage_bytes.max() / 1e6:.2f} MB ({store.min():.2g}–{store.max():.2g} %)",
            "the adapter and head a user ships, below 10 % of a model copy at every rank (4 bytes per trainable "
            "parameter plus its config)", published="full FT: a full model copy; LoRA: megabytes",
            source="the seed's tradeoff table", section="tradeoff"))
    sp = ctx.table("spectra")
    for family, arms in _family_arms(runs).items():
        lora = sp[sp.arm.isin(arms)] if not sp.empty and "arm" in sp else pd.DataFrame()
        if lora.empty:
            continue
        over = lora[lora.rank99 > lora["rank"]]
        out.append(Claim(
            f"rank:{family}", f"{_title(runs, arms)}'s update has rank at most r", ACCOUNTING,
            HOLDS if over.empty else FAILS,
            f"rank at 99 % energy ≤ r in {len(lora) - len(over)} of {len(lora)} matrices",
            "ΔW = (α/r) B A has rank ≤ r by construction; checked on every saved ΔW",
            published="rank-r updates only", source="the seed's tradeoff table", section="spectra"))
    return out


# -- findings ------------------------------------------------------------------------------------------

def reach_claims(ctx: Context) -> List[Claim]:
    """Per family: the smallest rank equivalent to full finetuning within the margin, the several ranks tested as one
    claim at a family-wise 5 % (``reach.shown_equivalent``: Holm over the ranks' TOST p, or Bonferroni spent over
    the looks of a study run until resolved), with the design's power at the level each rank is tested at."""
    from .reach import rank_name, shown_equivalent
    reach, runs = ctx.table("reach"), ctx.table("runs")
    source = "Hu et al. 2021 (WikiSQL: 73.4 at r = 1, 73.5 at r = 64)"
    rule = ("TOST per rank, the ranks one family at a family-wise 5 % (Holm's step-down over their TOST p; in a study "
            "run until resolved, Bonferroni spent over the looks), no order of the ranks presumed: holds when some "
            "rank is shown equivalent within the margin; does not hold when no rank is equivalent even on its own "
            "test and the design resolves the margin with 80 % power at the level each rank is tested at; else "
            "unresolved")
    out = []
    fams = _family_arms(runs)
    if reach.empty or not fams:
        return [Claim("reach:lora", "LoRA reaches full finetuning at small rank", FINDING, NOT_MEASURED, "—",
                      "needs full FT, a rank-swept method and per-example outputs", source=source, section="reach")]
    for family, arms in fams.items():
        g = reach[reach.arm.isin(arms)]
        if g.empty:
            continue
        title = _title(runs, arms)
        claim = f"{title} reaches full finetuning at small rank"
        members = runs[runs.arm.isin(arms) | runs.reference.astype(bool)].member
        seeds = int(g.seeds.min())
        m = float(g.margin.iloc[0])
        verdicts = {(int(r["rank"]), r.arm): r.verdict for _, r in g.iterrows()}
        fam = shown_equivalent(g)
        name = lambda k: rank_name(k, g)  # noqa: E731
        per_rank = "; ".join(f"{_arm_tag(runs, arms, r.arm)}r = {int(r['rank'])}: {r['diff']:+.3f} "
                             f"{fmt_interval((r.diff_ci_low, r.diff_ci_high))}"
                             + (f", TOST p = {r.p_tost:.2g}" if not pd.isna(r.get("p_tost", math.nan)) else "")
                             + f" ({r.verdict})" for _, r in g.sort_values("rank").iterrows())
        # the margin each rank's comparison resolves with 80 % power at the level the family tests it at
        level = fam["alpha"]
        parts = {"var_seed", "var_example", "var_residual"}
        worst_power = float(max(crossed.resolvable(crossed.from_parts(
            float(r["diff"]), float(r.var_seed), float(r.var_example), float(r.var_residual), int(r.seeds),
            int(r.examples)), alpha=level) for _, r in g.iterrows())) if parts <= set(g) else \
            float(g.resolvable_margin.max()) if "resolvable_margin" in g else math.nan
        powered = worst_power <= m
        common = dict(published="equal at r = 1", source=source, seeds=seeds,
                      examples=int(g.examples.iloc[0]) if "examples" in g else None,
                      did_not_learn=_not_learned(runs, members), section="reach")
        if seeds_verdict(seeds):
            out.append(Claim(f"reach:{family}", claim, FINDING, TOO_LITTLE, per_rank, rule, seeds_verdict(seeds),
                             **common))
            continue
        different = sorted(r for r, v in verdicts.items() if v == crossed.DIFFERENT)
        differ = (f"; {', '.join(map(name, different))} "
                  f"{'differs' if len(different) == 1 else 'differ'} from full FT") if different else ""
        if fam["smallest"] is not None:
            rank, arm = fam["smallest"]
            best = g[(g["rank"] == rank) & (g.arm == arm)].iloc[0]
            out.append(Claim(f"reach:{family}", claim, FINDING, HOLDS,
                             f"smallest rank equivalent within ±{m:g}: {name(fam['smallest'])} ({per_rank})", rule,
                             "at a family-wise 5 %, " + ", ".join(map(name, fam["equivalent"])) +
                             f" {'is' if len(fam['equivalent']) == 1 else 'are'} shown equivalent" +
                             _procedure_note(fam, name) + differ,
                             estimate=float(best["diff"]), low=float(best.ci90_low), high=float(best.ci90_high),
                             interval="90 % interval of the difference (TOST)", **common))
            continue
        alone = sorted(r for r, v in verdicts.items() if v == crossed.EQUIVALENT)
        top = g.loc[g.p_tost.astype(float).idxmin()] if g.p_tost.notna().any() else g.iloc[-1]
        if powered and not alone:
            verdict, why = FAILS, (f"no rank is equivalent even on its own test, and the design resolves "
                                   f"±{worst_power:.3f} with 80 % power at every rank at the family's level "
                                   f"(α = {level:.3g}), so an equivalent rank would have been found" + differ)
        else:
            verdict = UNRESOLVED
            why = "no rank is shown equivalent at a family-wise 5 %" + _procedure_note(fam, name)
            if alone:
                names = ", ".join(map(name, alone))
                why += (f"; {names} {'is' if len(alone) == 1 else 'are'} equivalent on "
                        f"{'its' if len(alone) == 1 else 'their'} own test at 5 %, not at the family's level, so "
                        "none is shown equivalent and none is ruled out")
            why += differ
            if not powered:
                why += (f"; at the family's level (α = {level:.3g} per rank) this design resolves only "
                        f"±{worst_power:.3f} with 80 % power, wider than the margin ±{m:g} (see the design table)")
        out.append(Claim(f"reach:{family}", claim, FINDING, verdict,
                         f"no rank shown equivalent within ±{m:g} at a family-wise 5 % ({per_rank}; 95 % intervals, "
                         f"TOST reads the 90 % one)",
                         rule, why, estimate=float(top["diff"]), low=float(top.diff_ci_low),
                         high=float(top.diff_ci_high), interval="95 % interval of the difference", **common))
    return out


def _procedure_note(fam: dict, name) -> str:
    """How the family was tested, for a claim's reason (``name`` names a (rank, arm) key)."""
    from .reach import HOLM
    if fam["procedure"] == HOLM:
        levels = ", ".join(f"{name(k)} at {a:.3g}" for k, a in fam["levels"].items())
        return f" (Holm: TOST p tested in increasing order, {levels}" + \
            (f"; it stops at {name(fam['stopped_at'])})" if fam["stopped_at"] is not None else ")")
    final = ", ".join(f"{name(k)} at {a:.2g}" for k, a in sorted(fam["levels"].items()))
    return (f" (Bonferroni: each rank at α = {fam['alpha']:.3g}, spent over the looks"
            + (f"; each rank's final look tests at {final}" if final else "") + ")")


def rank_claim(ctx: Context) -> Claim:
    claim = "full finetuning's ΔW is high-rank"
    source = "Biderman et al. 2024 (secondary): 10–100× the rank of typical LoRA; Llama-2-7B rank@90 % ~1000–2800"
    rule = f"the 95 % t interval over seeds of the median rank at 90 % energy at or above 10 × r = {TYPICAL_LORA_RANK}"
    sp = ctx.table("spectra")
    full = sp[sp.reference.astype(bool)] if not sp.empty and "reference" in sp else pd.DataFrame()
    if full.empty:
        return Claim("high_rank", claim, FINDING, NOT_MEASURED, "—", rule, "needs full FT's spectra", source=source,
                     section="spectra")
    per_seed = full.groupby("seed").rank90.median()
    width = int(full[["d_out", "d_in"]].min(axis=1).median())
    ratio = float(np.median(full.rank90 / full.random_rank90)) if "random_rank90" in full else math.nan
    measured = (f"median rank at 90 % energy {np.median(full.rank90):.0f} of {width} (seed medians "
                f"{', '.join(f'{v:.0f}' for v in per_seed)}); {ratio:.2f}× a random matrix's; "
                f"{np.median(full.rank90) / TYPICAL_LORA_RANK:.0f}× r = {TYPICAL_LORA_RANK}")
    common = dict(published="10–100× LoRA's rank", source=source, seeds=len(per_seed), section="spectra")
    reason = seeds_verdict(len(per_seed))
    if reason:
        return Claim("high_rank", claim, FINDING, TOO_LITTLE, measured, rule, reason, **common)
    c = crossed.components(per_seed.to_numpy()[None, :])  # one row: a t interval over the seeds
    lo, hi = c.interval(0.95)
    if degenerate(lo, hi):
        return Claim("high_rank", claim, FINDING, TOO_LITTLE, measured, rule, "the seeds agree exactly: a zero-width "
                     "interval decides nothing", **common)
    verdict = interval_verdict(lo, hi, 10 * TYPICAL_LORA_RANK - 1e-9)
    return Claim("high_rank", claim, FINDING, verdict, measured + f"; over seeds [{lo:.0f}, {hi:.0f}]", rule,
                 f"the interval lies {'above' if verdict == HOLDS else 'below' if verdict == FAILS else 'across'} "
                 f"{10 * TYPICAL_LORA_RANK}", estimate=float(per_seed.mean()), low=lo, high=hi,
                 interval="95 % t interval over seeds", **common)


def similarity_claims(ctx: Context) -> List[Claim]:
    pool, runs = ctx.table("similarity_pooled"), ctx.table("runs")
    claim, source = "two ranks share their top direction", "Hu et al. 2021 §7.2: φ(1, 1) > 0.5 for r = 8 vs 64"
    rule = "the 95 % interval of φ(1, 1) above 0.5 (holds) or below it (does not hold)"
    if pool.empty:
        return [Claim("similarity", claim, FINDING, NOT_MEASURED, "—", rule, "needs two ranks of a rank-swept method",
                      source=source, section="similarity")]
    out = []
    for arm, g in pool.groupby("arm", sort=False):
        basis = "A" if (g.basis == "A").any() else "ΔW"
        pairs = g[(g.compares == "ranks") & (g.basis == basis)]
        if pairs.empty:
            continue
        p = pairs.iloc[0]
        same = g[(g.compares == "seeds") & (g.basis == basis) & (g["small"] == p["large"])]
        rnd = g[(g.compares == "random") & (g["small"] == p["small"]) & (g["large"] == p["large"])]
        title = runs[runs.arm == arm].title.iloc[0] if (runs.arm == arm).any() else arm
        measured = (f"{title} r = {int(p['small'])} vs {int(p['large'])}, φ(1, 1) from {basis}: {p['mean']:.2f} "
                    f"[{p.ci_low:.2f}, {p.ci_high:.2f}]" +
                    (f"; same rank, two seeds {same.iloc[0]['mean']:.2f}" if len(same) else "") +
                    (f"; random subspaces {rnd.iloc[0]['mean']:.4f} over {int(rnd.iloc[0].draws)} draws (expected "
                     f"{rnd.iloc[0].expected:.4f} = 1/{round(1 / rnd.iloc[0].expected)})"
                     if len(rnd) and not pd.isna(rnd.iloc[0].get("draws")) else ""))
        seeds = int(p.seed_pairs)
        common = dict(published="φ(1, 1) > 0.5", source=source, seeds=seeds, section="similarity",
                      did_not_learn=_not_learned(runs, runs[runs.arm == arm].member))
        if seeds_verdict(seeds):
            out.append(Claim(f"similarity:{arm}", claim, FINDING, TOO_LITTLE, measured, rule, seeds_verdict(seeds),
                             **common))
            continue
        verdict = interval_verdict(p.ci_low, p.ci_high, 0.5)
        out.append(Claim(f"similarity:{arm}", claim, FINDING, verdict, measured, rule,
                         f"the interval lies {'above' if verdict == HOLDS else 'below' if verdict == FAILS else 'across'}"
                         " 0.5", estimate=float(p["mean"]), low=float(p.ci_low), high=float(p.ci_high),
                         interval="95 % t interval over seeds and modules", **common))
    return out


def intruder_claims(ctx: Context, corr: dict) -> List[Claim]:
    intr, runs = ctx.table("intruders"), ctx.table("runs")
    source = "Shuttleworth et al. 2024"
    claim = "intruder dimensions appear in LoRA, not in full finetuning"
    rule = "LoRA's rate minus full FT's, per seed, with a 95 % t interval over seeds excluding 0"
    if intr.empty:
        return [Claim("intruders", claim, FINDING, NOT_MEASURED, "—", rule, "needs saved ΔW", source=source,
                      section="intruders")]
    out = []
    scope = next((s for s in intr.scope.unique() if s.startswith("targets:")), None)
    at = intr[(intr.scope == scope) & np.isclose(intr.eps, 0.5) & (intr.kind == "run")] if scope else intr.iloc[0:0]
    full = at[at.reference.astype(bool)]
    for family, arms in _family_arms(runs).items():
        fam = at[at.arm.isin(arms) & (at["rank"] <= 16)]
        if full.empty or fam.empty:
            continue
        a, b = fam.groupby("seed").rate.mean(), full.groupby("seed").rate.mean()
        seeds = sorted(set(a.index) & set(b.index))
        diff = (a[seeds] - b[seeds]).to_numpy()
        title = _title(runs, arms)
        measured = (f"on {scope.split(':')[1]}'s targets at ε = 0.5: {title} (r ≤ 16) {100 * a.mean():.1f} % of "
                    f"top-10 vectors, full FT {100 * b.mean():.1f} %")
        common = dict(published="LoRA r ≤ 16 has intruders, full FT almost never (RoBERTa-base)", source=source,
                      seeds=len(seeds), section="intruders",
                      did_not_learn=_not_learned(runs, list(fam.member) + list(full.member)))
        name = f"intruder dimensions appear in {title}, not in full finetuning"
        if seeds_verdict(len(seeds)):
            out.append(Claim(f"intruders:{family}", name, FINDING, TOO_LITTLE, measured, rule,
                             seeds_verdict(len(seeds)), **common))
            continue
        lo, hi = crossed.components(diff[None, :]).interval(0.95)
        if degenerate(lo, hi):
            out.append(Claim(f"intruders:{family}", name, FINDING, TOO_LITTLE, measured, rule,
                             "the per-seed differences are all equal: a zero-width interval decides nothing", **common))
            continue
        verdict = interval_verdict(lo, hi, 0.0)
        out.append(Claim(f"intruders:{family}", name, FINDING, verdict,
                         measured + f" (difference {100 * diff.mean():+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}])",
                         rule, "the interval of the difference " + ("excludes 0" if verdict != UNRESOLVED else
                                                                    "includes 0"),
                         estimate=float(diff.mean()), low=lo, high=hi, interval="95 % t interval over seeds",
                         **common))
    rule = (f"the 95 % interval of Spearman's ρ above 0 (Fisher's z, at least {MINIMUM['correlation_runs']} runs; ties "
            "ranked exactly)")
    if corr.get("rho") is not None:
        n = int(corr["n"])
        measured = f"ρ = {corr['rho']:.2f}" + (f" [{corr['interval'][0]:+.2f}, {corr['interval'][1]:+.2f}]"
                                               if corr.get("interval") else "") + f" over {n} runs"
        common = dict(published="Spearman ρ = 0.971 (RoBERTa)", source=source, runs=n, section="intruders",
                      did_not_learn=_not_learned(runs, corr.get("members") or []))
        if n < MINIMUM["correlation_runs"]:
            out.append(Claim("intruders_forgetting", "more intruders, more forgetting", FINDING, TOO_LITTLE, measured,
                             rule, f"a rank correlation needs at least {MINIMUM['correlation_runs']} runs; this "
                                   f"study has {n}", **common))
        else:
            lo, hi = corr["interval"]
            verdict = interval_verdict(lo, hi, 0.0)
            out.append(Claim("intruders_forgetting", "more intruders, more forgetting", FINDING, verdict, measured,
                             rule, "the interval " + ("excludes 0" if verdict != UNRESOLVED else "includes 0"),
                             estimate=corr["rho"], low=lo, high=hi, interval="95 % interval (Fisher's z)", **common))
    scaling = ctx.table("intruder_scaling")
    # an arm with no intruder found scaled nothing: its change is 0 by construction and enters no rule
    scaled = scaling[scaling.forgetting_change.notna() & (scaling.intruders > 0)] if not scaling.empty else scaling
    if not scaled.empty:
        lows, highs = scaled.forgetting_change_low, scaled.forgetting_change_high
        verdict = HOLDS if (highs < 0).all() else FAILS if (lows > 0).any() else UNRESOLVED
        out.append(Claim(
            "intruder_scaling", "scaling intruders down cuts forgetting", FINDING, verdict,
            "; ".join(f"{r.title}{'' if pd.isna(r.value) else f' r={int(r.value)}'}: {r.forgetting_change:+.3f} "
                      f"{fmt_interval((r.forgetting_change_low, r.forgetting_change_high))}" for _, r in
                      scaled.iterrows()),
            "every change in forgetting below 0 with its 95 % interval (one trained model per rank, paired over the "
            "probe examples: the intervention's effect on that model)",
            "every interval lies below 0" if verdict == HOLDS else "some interval lies above 0" if verdict == FAILS
            else "some interval includes 0", published="λ = 0.3: forgetting down about a third, accuracy −0.1 %",
            source=source, runs=len(scaled), examples=int(scaled.examples.iloc[0]) if "examples" in scaled else None,
            section="intruders"))
    return out


def intrinsic_claims(ctx: Context) -> List[Claim]:
    claim, source = "d90 ≪ D", "Aghajanyan et al. 2020 (secondary): BERT-base d90 1,608–9,295"
    rule = ("d90-gain (90 % of full FT's gain over the frozen base) on the grid, reached with its paired interval "
            "above the target and the d below it short of it, and d90-gain / D below 1 %")
    if not ctx.has("intrinsic_dim_summary"):
        return [Claim("d90", claim, FINDING, NOT_MEASURED, "—", rule, "needs subspace runs (experiment=intrinsic_dim)",
                      source=source, section="intrinsic_dim")]
    s, margins = ctx.table("intrinsic_dim_summary"), ctx.table("intrinsic_dim_margins")
    out = []
    for _, r in s.iterrows():
        m = margins[(margins.variant == r.variant) & (margins.target == "gain")] if not margins.empty else margins
        at, below = m[m["where"] == "d90"], m[m["where"] == "below"]
        gap = r.target - r.base
        measured = (f"{r.variant}: d90-gain " + (f"{r.d90_gain_mean:,.0f} (grid; d90-gain / D = "
                                                 f"{r.d90_gain_mean / r.D:.1e})" if r.d90_gain_reached
                                                 else f"beyond the largest d tried ({r.d_max:,.0f})") +
                    f"; d90 (90 % of full FT's accuracy, {gap:+.3f} above the frozen base) " +
                    (f"{r.d90_mean:,.0f}" if r.d90_reached else "not reached"))
        common = dict(published="d90 ≪ D", source=source, seeds=int(r.seeds), section="intrinsic_dim")
        key = f"d90:{r.variant}"
        if not r.d90_gain_reached:
            out.append(Claim(key, claim, FINDING, UNRESOLVED, measured, rule,
                             "no tested d reaches 90 % of full FT's gain, so d90 is not measured on this grid",
                             **common))
            continue
        if seeds_verdict(int(r.seeds)):
            out.append(Claim(key, claim, FINDING, TOO_LITTLE, measured, rule, seeds_verdict(int(r.seeds)), **common))
            continue
        resolved = len(at) and at.verdict.iloc[0] == "reached" and (below.empty or below.verdict.iloc[0] ==
                                                                    "not reached")
        ratio = r.d90_gain_mean / r.D
        if not resolved:
            states = ", ".join(f"d = {x.d:,.0f} {x.verdict}" for _, x in m.iterrows())
            out.append(Claim(key, claim, FINDING, UNRESOLVED, measured, rule,
                             f"the grid value is not resolved ({states}): d90 may lie a grid step or more away",
                             **common))
            continue
        out.append(Claim(key, claim, FINDING, HOLDS if ratio < 0.01 else FAILS, measured, rule,
                         f"d90-gain / D = {ratio:.1e} is {'below' if ratio < 0.01 else 'above'} 1 %",
                         estimate=float(r.d90_gain_mean), **common))
    return out


def forgetting_claims(ctx: Context) -> List[Claim]:
    """Per family and unit (accuracy drops, relative perplexity, KL to the base): forgets less, and forgets no more
    (non-inferiority), over the informative held-out tasks pooled in that unit."""
    table, runs = ctx.table("forgetting_vs_full"), ctx.table("runs")
    source = "Biderman et al. 2024"
    out = []
    if table.empty:
        return [Claim("forgetting:lora", "LoRA forgets less than full finetuning", FINDING, NOT_MEASURED, "—",
                      "every rank's forgetting minus full FT's below 0 (95 % interval)", "needs held-out probes",
                      source=source, section="forgetting")]
    for family, arms in _family_arms(runs).items():
        title = _title(runs, arms)
        for unit, (what, fmt) in UNITS.items():
            t = table[(table.tasks == "mean") & (table.unit == unit) & table.arm.isin(arms)]
            if t.empty:
                continue
            tasks = t.task_list.iloc[0] if "task_list" in t else ""
            seeds = int(t.seeds.min())
            members = runs[runs.arm.isin(arms) | runs.reference.astype(bool)].member
            measured = f"{title} − full FT, {what} over {tasks}: " + "; ".join(
                f"{_arm_tag(runs, arms, r.arm)}r={int(r.value)} {fmt(r.minus_full)} "
                f"{fmt_interval((r.minus_full_low, r.minus_full_high))}" for _, r in t.iterrows())
            common = dict(source=source, seeds=seeds, examples=int(t.examples.iloc[0]), section="forgetting",
                          did_not_learn=_not_learned(runs, members))
            counts = t.verdict.value_counts()
            less_rule = "every rank's forgetting minus full FT's has its 95 % interval below 0"
            bound_rule = (f"non-inferiority: holds when the upper end of every rank's 90 % interval lies below the "
                          f"margin {fmt(float(t.margin.iloc[0]))}; does not hold when some rank's 95 % interval lies "
                          f"above it")
            if seeds_verdict(seeds):
                for key, name, rule in ((f"forgetting_less:{family}:{unit}", f"{title} forgets less than full "
                                         f"finetuning ({what})", less_rule),
                                        (f"forgetting_bound:{family}:{unit}", f"{title}'s forgetting is no worse "
                                         f"than full finetuning's ({what})", bound_rule)):
                    out.append(Claim(key, name, FINDING, TOO_LITTLE, measured, rule, seeds_verdict(seeds),
                                     published="LoRA forgets less" if "less" in key else "bounded by construction",
                                     **common))
                continue
            less = HOLDS if counts.get(FORGETS_LESS, 0) == len(t) else FAILS if counts.get(FORGETS_MORE, 0) \
                else UNRESOLVED
            out.append(Claim(f"forgetting_less:{family}:{unit}", f"{title} forgets less than full finetuning ({what})",
                             FINDING, less, measured, less_rule,
                             f"{counts.get(FORGETS_LESS, 0)} of {len(t)} ranks forget measurably less, "
                             f"{counts.get(FORGETS_MORE, 0)} measurably more", published="LoRA forgets less",
                             **common))
            no_more = counts.get(FORGETS_LESS, 0) + counts.get(NO_MORE, 0)
            # worse by more than the margin: a rank that forgets measurably more, but perhaps by less than the margin,
            # does not refute "no worse within the margin"
            beyond = int((t.minus_full_low > t.margin).sum())
            out.append(Claim(f"forgetting_bound:{family}:{unit}",
                             f"{title}'s forgetting is no worse than full finetuning's ({what})", FINDING,
                             HOLDS if no_more == len(t) else FAILS if beyond else UNRESOLVED,
                             measured, bound_rule, f"{no_more} of {len(t)} ranks forget no more than full FT within "
                                                   f"the margin, {beyond} more by more than the margin",
                             published="bounded by construction", **common))
    uninformative = table[(table.tasks != "mean") & table.get("informative", pd.Series(True, index=table.index))
                          .eq(False)] if "informative" in table else table.iloc[0:0]
    for task, g in uninformative.groupby("tasks", sort=False):
        out.append(Claim(f"forgetting_task:{task}", f"held-out task {task} measures forgetting", FINDING,
                         UNINFORMATIVE, str(g.why_uninformative.iloc[0]),
                         "a task the base scores at chance, or where every run is at the floor or the ceiling, "
                         "cannot show forgetting; it is left out of the pooled rows",
                         "it stays out of the pooled forgetting rows and the verdicts above",
                         section="forgetting"))
    return out


def latency_claims(ctx: Context) -> List[Claim]:
    """Merged LoRA against the base, from the runs' interleaved timings (``latency_table``)."""
    lat = ctx.table("latency")
    claim, source = "merged LoRA adds no inference latency", "Hu et al. 2021 (GPT-2 medium: merged = base)"
    rule = (f"per batch size, the 90 % t interval over timing rounds of log(merged / base) inside ±"
            f"{100 * LATENCY_TOLERANCE:.0f} % (timed in turn in one process, with an A/A twin as the noise band)")
    if lat.empty:
        return [Claim("latency", claim, FINDING, NOT_MEASURED, "—", rule, "needs merged latency (run.latency=true)",
                      source=source, section="latency")]
    return [latency_claim(lat, rule, claim, source)]


def latency_claim(lat: pd.DataFrame, rule: str, claim: str, source: str) -> Claim:
    """holds when every run and batch size's merged / base interval lies inside the tolerance; does not hold when
    one lies wholly outside it; else unresolved (wider than the tolerance: the timing noise is too large)."""
    band = math.log1p(LATENCY_TOLERANCE)
    inside = (lat.log_ratio_low > -band) & (lat.log_ratio_high < band)
    outside = (lat.log_ratio_low > band) | (lat.log_ratio_high < -band)
    verdict = HOLDS if inside.all() else FAILS if outside.any() else UNRESOLVED
    by_batch = lat.groupby("batch")
    measured = "merged / base " + "; ".join(
        f"batch {b}: {math.exp(g.log_ratio.mean()):.3f}× [{math.exp(g.log_ratio_low.min()):.3f}, "
        f"{math.exp(g.log_ratio_high.max()):.3f}]" for b, g in by_batch) + "; A/A (the merged model against itself) " + \
        "; ".join(f"batch {b}: [{math.exp(g.aa_low.min()):.3f}, {math.exp(g.aa_high.max()):.3f}]" for b, g in by_batch)
    why = ("every interval lies inside the tolerance" if verdict == HOLDS else "an interval lies wholly outside the "
           "tolerance" if verdict == FAILS else "some interval is wider than the tolerance")
    return Claim("latency", claim, FINDING, verdict, measured, rule, why, published="merged latency = base's",
                 source=source, runs=int(lat.member.nunique()), examples=None, section="latency")


def memory_claims(ctx: Context) -> List[Claim]:
    runs = ctx.table("runs")
    claim, source = "LoRA cuts training memory", "Hu et al. 2021 (GPT-3 175B: 1.2 TB to 350 GB of VRAM, about 2/3 less)"
    rule = (f"training memory counted in parts (parameters, gradients, optimizer state, saved activations) at most "
            f"{MEMORY_SHARE:.2f} of full FT's at every rank")
    if runs.empty or "training_bytes" not in runs or runs.training_bytes.isna().all():
        return [Claim("memory", claim, FINDING, NOT_MEASURED, "—", rule, "needs runs that count their training "
                      "memory in parts", source=source, section="tradeoff")]
    full = runs[runs.reference.astype(bool)].training_bytes.dropna()
    out = []
    for family, arms in _family_arms(runs).items():
        g = runs[runs.arm.isin(arms)].dropna(subset=["training_bytes"])
        if full.empty or g.empty:
            continue
        share = g.groupby("value").training_bytes.mean() / full.mean()
        title = _title(runs, arms)
        measured = (f"full FT {full.mean() / 1e6:.0f} MB; {title} " + ", ".join(
            f"r={int(v)} {100 * s:.0f} %" for v, s in share.items()) + " of it")
        out.append(Claim(f"memory:{family}", f"{title} cuts training memory", FINDING,
                         HOLDS if (share <= MEMORY_SHARE).all() else FAILS, measured, rule,
                         f"the largest share is {100 * share.max():.0f} %", published="about 2/3 less (GPT-3 175B)",
                         source=source, runs=len(g) + len(full), estimate=float(share.max()), section="tradeoff"))
    return out


def all_claims(ctx: Context) -> List[Claim]:
    corr = correlation(ctx.study, ctx.table("intruders"))
    return (reach_claims(ctx) + [rank_claim(ctx)] + similarity_claims(ctx) + intruder_claims(ctx, corr) +
            intrinsic_claims(ctx) + forgetting_claims(ctx) + latency_claims(ctx) + memory_claims(ctx) +
            [c for m in ctx.measures for c in m.claims(ctx)] + accounting_claims(ctx))


def _frame(claims: List[Claim], kind: str) -> pd.DataFrame:
    return pd.DataFrame([{"key": c.key, **c.row()} for c in claims if c.kind == kind])


class Verdicts(Measure):
    name = "verdicts"
    tables = ("verdicts", "accounting")

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        claims = ctx.claims()
        return {"verdicts": _frame(claims, FINDING), "accounting": _frame(claims, ACCOUNTING)}

    def sections(self, ctx: Context) -> List[Section]:
        v = ctx.table("verdicts")
        counts = v.verdict.value_counts() if not v.empty else pd.Series(dtype=int)
        order = (HOLDS, FAILS, UNRESOLVED, TOO_LITTLE, UNINFORMATIVE, NOT_MEASURED)
        summary = ", ".join(f"{counts[k]} {k}" for k in order if k in counts)
        out = [Section("Verdicts", [
            f"Each empirical claim, the value this study measured with its interval and the units behind it, the "
            f"published value, and the verdict by the rule in its row ({summary}). \"Unresolved\" means the interval "
            "is too wide to decide: not significant is not the same as no effect; \"too little evidence\" that the "
            "test needs more independent units than the study has. The sections below hold the evidence."],
            table="verdicts")]
        if not ctx.table("accounting").empty:
            out.append(Section("Accounting: what holds by construction", [
                "These rows follow from the arithmetic of the method; they are measured against their formulas, "
                "not offered as evidence for the hypothesis."], table="accounting", level=3))
        return out

    def formatted(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        cols = ["claim", "verdict", "measured", "units", "published", "rule", "why"]
        return {name: ctx.table(name)[cols] for name in ("verdicts", "accounting") if not ctx.table(name).empty}
