"""Does a method trained at rank r reach full finetuning? Per rank-swept arm and rank: its test metric with a 95 %
interval, the paired difference from full finetuning (the same test examples and seeds: hierarchical bootstrap
over seeds then examples, or McNemar's exact test with one seed), two one-sided tests against the study's margin,
a verdict no stronger than the test ("equivalent within the margin", "different", "unresolved"), and the share of
full finetuning's gain over the frozen base that the arm keeps (with its interval). The number a user came for
is the smallest rank shown equivalent to full finetuning (table ``smallest_rank``), or that none is.

Scores: per-example correctness (accuracy, exact match); for perplexity-only tasks the per-example negative
log-likelihood per token, negated so that higher is better, with the margin log(1 + margin) nats (a relative
margin on perplexity)."""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import numpy as np
import pandas as pd

from .. import paired, plotting, stats
from ..loader import Run, Study
from ..paired import fmt_interval
from ..roles import arm_title
from .base import Context, Measure, Section, seeds_phrase


def scores(runs: List[Run], prefix: str = "test") -> Tuple[Dict[int, np.ndarray], str]:
    """({seed: per-example score}, what the score is) of ``runs``' ``prefix`` outputs: correctness when they
    have it, else −NLL per token."""
    correct = paired.per_seed(runs, f"{prefix}.correct")
    if correct:
        return correct, "accuracy"
    nll, tokens = paired.per_seed(runs, f"{prefix}.nll"), paired.per_seed(runs, f"{prefix}.tokens")
    return {s: -nll[s] / np.maximum(tokens[s], 1) for s in nll if s in tokens}, "−NLL per token"


def score_margin(study: Study, what: str) -> float:
    m = paired.margin(study)
    return m if what == "accuracy" else math.log1p(m)


def reach_table(study: Study, runs_frame: pd.DataFrame) -> pd.DataFrame:
    """One row per rank-swept arm and rank, plus the reference and the baseline: the mean score and its interval,
    and (for the arms) the paired comparison with the reference and the share of its gain kept."""
    ref, what = scores(study.references())
    base, _ = scores(study.baselines())
    if not ref:
        return pd.DataFrame()
    m = score_margin(study, what)
    rows = []
    for role, runs_of in (("reference", study.references()), ("baseline", study.baselines())):
        s, _ = scores(runs_of)
        if s:
            seeds, (x,) = paired.aligned(s)
            rows.append({"arm": role, "title": runs_of[0].label, "rank": None, "score": what, "mean": float(x.mean()),
                         "ci_low": paired.mean_interval(x)[0], "ci_high": paired.mean_interval(x)[1],
                         "seeds": len(seeds)})
    for arm in study.arms("rank"):
        for rank in study.values(arm):
            runs = [r for r in study.runs if r.arm == arm and r.value == rank]
            own, _ = scores(runs)
            c = paired.compare(own, ref, m)
            if c is None:
                continue
            kept = paired.ratio_interval(own, base, ref, base) if base else None
            rows.append({"arm": arm, "title": arm_title(runs_frame, arm),
                         "rank": rank, "score": what, "mean": c["mean_a"], "ci_low": c["ci_a"][0],
                         "ci_high": c["ci_a"][1], "seeds": len(c["seeds"]), "diff": c["diff"],
                         "diff_ci_low": c["ci95"][0], "diff_ci_high": c["ci95"][1], "ci90_low": c["ci90"][0],
                         "ci90_high": c["ci90"][1], "p_difference": c["p_difference"],
                         "p_method": c["p_difference_method"], "p_tost": c["p_tost"], "margin": c["margin"],
                         "verdict": c["verdict"], "gain_kept": kept[0] if kept else None,
                         "gain_kept_low": kept[1][0] if kept else None, "gain_kept_high": kept[1][1] if kept else None})
    return pd.DataFrame(rows)


def smallest_rank_table(reach: pd.DataFrame) -> pd.DataFrame:
    """Per arm: the smallest rank shown equivalent to the reference within the margin, or none, with its interval."""
    rows = []
    if reach.empty:
        return pd.DataFrame()
    for arm, g in reach[reach["rank"].notna()].groupby("arm", sort=False):
        candidates = {int(r["rank"]): {"ci95": (r.diff_ci_low, r.diff_ci_high), "ci90": (r.ci90_low, r.ci90_high),
                                       "diff": r["diff"], "margin": r.margin} for _, r in g.iterrows()}
        best = stats.smallest_equivalent(candidates)
        rows.append({"arm": arm, "title": g.title.iloc[0], "smallest_equivalent_rank": best["rank"],
                     "diff": best["diff"], "ci90_low": best["ci90"][0] if best["ci90"] else None,
                     "ci90_high": best["ci90"][1] if best["ci90"] else None, "margin": g.margin.iloc[0],
                     "equivalent_ranks": ",".join(map(str, best["equivalent_ranks"])),
                     "different_ranks": ",".join(str(int(r)) for r, v in zip(g["rank"], g.verdict)
                                                 if v == stats.DIFFERENT),
                     "seeds": int(g.seeds.max())})
    return pd.DataFrame(rows)


# -- figure ---------------------------------------------------------------------------------------

@plotting.styled
def figure(study: Study, reach: pd.DataFrame):
    """Each arm's score by rank with 95 % intervals; full finetuning's score with its interval and the margin."""
    fig, axes = plotting.subplots(width=6.6, height=4.0)
    ax = axes[0, 0]
    ref = reach[reach.arm == "reference"]
    base = reach[reach.arm == "baseline"]
    xs = sorted(reach["rank"].dropna().unique())
    if len(ref):
        r = ref.iloc[0]
        ax.axhline(r["mean"], color=plotting.REFERENCE_COLOR, lw=1.2, label=f"{r.title} ({r['mean']:.3f})")
        ax.axhspan(r.ci_low, r.ci_high, color="0.8", zorder=0, label=f"{r.title}: 95 % interval")
        m = reach.margin.dropna() if "margin" in reach else pd.Series(dtype=float)
        if len(m):
            ax.axhspan(r["mean"] - m.iloc[0], r["mean"] + m.iloc[0], color="tab:green", alpha=0.12, zorder=0,
                       label=f"equivalence margin ±{m.iloc[0]:g}")
    if len(base):
        b = base.iloc[0]
        ax.axhline(b["mean"], color=plotting.REFERENCE_COLOR, ls="--", lw=1, label=f"{b.title} ({b['mean']:.3f})")
    for i, (arm, g) in enumerate(reach[reach["rank"].notna()].groupby("arm", sort=False)):
        plotting.errorbar(ax, g["rank"], g["mean"], g.ci_low, g.ci_high, ms=5, lw=1.2, **plotting.arm_style(i),
                          label=f"{g.title.iloc[0]} (95 % interval)")
    ax.set_xscale("log", base=2)
    if xs:
        ax.set_xticks(xs, [str(int(x)) for x in xs])
        ax.minorticks_off()
    what = reach.score.iloc[0] if len(reach) else "score"
    ax.set_xlabel("rank r")
    ax.set_ylabel(f"test {what}")
    plotting.figure_legend(fig, axes, ncol=3)
    return plotting.finish(fig, study)


# -- finding --------------------------------------------------------------------------------------

def finding(reach: pd.DataFrame, smallest: pd.DataFrame) -> List[str]:
    if reach.empty:
        return ["The study lacks full finetuning or per-example outputs, so no rank is compared with full finetuning."]
    ref = reach[reach.arm == "reference"].iloc[0]
    base = reach[reach.arm == "baseline"]
    arms = reach[reach["rank"].notna()]
    if arms.empty:
        return [f"{ref.title} reaches {ref['mean']:.3f} {fmt_interval((ref.ci_low, ref.ci_high), signed=False)}; the "
                "study has no rank-swept method to compare with it."]
    seeds = int(arms.seeds.max())
    how = ("hierarchical bootstrap over seeds and test examples" if seeds > 1 else
           "McNemar's exact test and a paired bootstrap over test examples")
    parts = [f"{ref.title} reaches {ref['mean']:.3f} {fmt_interval((ref.ci_low, ref.ci_high), signed=False)}"
             + (f"; the frozen base {base.iloc[0]['mean']:.3f} "
                f"{fmt_interval((base.iloc[0].ci_low, base.iloc[0].ci_high), signed=False)}" if len(base) else "")
             + f" ({ref.score}, 95 % intervals, {seeds} seed{'s' if seeds > 1 else ''}). Each rank is compared with "
             f"full finetuning on the same test examples ({how}); equivalence is two one-sided tests against a "
             f"margin of ±{arms.margin.iloc[0]:.3g}: the 90 % interval of the difference must lie inside it."]
    for arm, g in arms.groupby("arm", sort=False):
        items = []
        for _, r in g.iterrows():
            items.append(f"r = {int(r['rank'])}: {r['diff']:+.3f} {fmt_interval((r.diff_ci_low, r.diff_ci_high))}, "
                         f"{r.verdict}")
        s = smallest[smallest.arm == arm]
        rank = s.smallest_equivalent_rank.iloc[0] if len(s) else None
        head = (f"{g.title.iloc[0]} minus full finetuning: " + "; ".join(items) + ". ")
        if rank is not None and not pd.isna(rank):
            head += (f"The smallest rank shown equivalent to full finetuning within the margin is r = {int(rank)} "
                     f"(90 % interval {fmt_interval((s.ci90_low.iloc[0], s.ci90_high.iloc[0]))}).")
        else:
            unresolved = (g.verdict == stats.UNRESOLVED).sum()
            head += ("No rank is shown equivalent to full finetuning within the margin"
                     + (f"; {unresolved} of {len(g)} are unresolved (the interval is wider than the margin), which "
                        "is not the same as different." if unresolved else "; every rank differs from it."))
        kept = g.dropna(subset=["gain_kept"])
        if len(kept):
            head += (" Share of full finetuning's gain over the base kept: " + ", ".join(
                f"r = {int(r['rank'])} {100 * r.gain_kept:.0f} % [{100 * r.gain_kept_low:.0f}, {100 * r.gain_kept_high:.0f}]"
                for _, r in kept.iterrows()) + ".")
        parts.append(head)
    if seeds < stats.MIN_SEEDS:
        parts.append(f"With {seeds} seed{'s' if seeds > 1 else ''}, the intervals hold the test-set noise but not the "
                     f"training noise: {stats.MIN_SEEDS} seeds at least are needed before a verdict is final.")
    return parts


def formatted(reach: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in reach.iterrows():
        rows.append({"method": r.title + (f" r={int(r['rank'])}" if not pd.isna(r["rank"]) else ""),
                     f"test {r.score} [95 %]": f"{r['mean']:.3f} {fmt_interval((r.ci_low, r.ci_high), signed=False)}",
                     "minus full FT [95 %]": "—" if pd.isna(r.get("diff")) else
                     f"{r['diff']:+.3f} {fmt_interval((r.diff_ci_low, r.diff_ci_high))}",
                     "p": "—" if pd.isna(r.get("p_difference")) else f"{r.p_difference:.2g}",
                     "TOST p": "—" if pd.isna(r.get("p_tost")) else f"{r.p_tost:.2g}",
                     "verdict": r.get("verdict") if isinstance(r.get("verdict"), str) else "—",
                     "gain kept [95 %]": "—" if pd.isna(r.get("gain_kept")) else
                     f"{100 * r.gain_kept:.0f} % [{100 * r.gain_kept_low:.0f}, {100 * r.gain_kept_high:.0f}]"})
    return pd.DataFrame(rows)


class Reach(Measure):
    name = "reach"
    tables = ("reach", "smallest_rank")

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        reach = reach_table(ctx.study, ctx.table("runs"))
        return {"reach": reach, "smallest_rank": smallest_rank_table(reach)}

    def figures(self, ctx: Context) -> Dict[str, object]:
        reach = ctx.table("reach")
        return {"reach": figure(ctx.study, reach)} if not reach.empty and reach["rank"].notna().any() else {}

    def sections(self, ctx: Context) -> List[Section]:
        reach = ctx.table("reach")
        seeds = seeds_phrase(r.seed for r in ctx.study.runs)
        return [Section("Does LoRA reach full finetuning, and from which rank?",
                        finding(reach, ctx.table("smallest_rank")),
                        figure="reach" if ctx.drew("reach") else None, table="reach",
                        caption="Whether each rank's interval reaches the green margin around full FT's score (black "
                                f"line, grey band: its 95 % interval); scope: the whole test split, {seeds}, "
                                "intervals from a bootstrap over seeds and test examples.",
                        table_caption="Each method's test score and its paired difference from full FT (95 % "
                                      "intervals), the equivalence test (TOST) and the share of full FT's gain kept.")]

    def formatted(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        reach = ctx.table("reach")
        return {"reach": formatted(reach)} if not reach.empty else {}
