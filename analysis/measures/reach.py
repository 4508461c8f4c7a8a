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

from lora_study.artifacts import arm_key

from .. import crossed, paired, plotting, sequential
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
            lo, hi = paired.mean_interval(x)
            rows.append({"arm": role, "title": runs_of[0].label, "rank": None, "score": what, "mean": float(x.mean()),
                         "ci_low": lo, "ci_high": hi, "seeds": len(seeds), "examples": int(x.shape[1])})
    looks = study.index.get("sequential")
    for arm in study.arms("rank"):
        for rank in study.values(arm):
            runs = [r for r in study.runs if r.arm == arm and r.value == rank]
            own, _ = scores(runs)
            last = sequential.final(looks, arm_key(arm, "rank", rank))  # seeds until resolved: its final look
            alpha = last["alpha"] if last else 0.05
            if last:
                own = {s: v for s, v in own.items() if s in set(last["seeds"])}
            c = paired.compare(own, ref, m, alpha)
            if c is None:
                continue
            kept = paired.ratio_interval(own, base, ref, base) if base else None
            rows.append({"arm": arm, "title": arm_title(runs_frame, arm), "family": runs[0].family,
                         "rank": rank, "score": what, "mean": c["mean_a"], "ci_low": c["ci_a"][0],
                         "ci_high": c["ci_a"][1], "seeds": len(c["seeds"]), "examples": c["n_examples"],
                         "diff": c["diff"], "diff_ci_low": c["ci95"][0], "diff_ci_high": c["ci95"][1],
                         "ci90_low": c["ci90"][0], "ci90_high": c["ci90"][1], "p_difference": c["p_difference"],
                         "p_method": c["p_difference_method"], "p_tost": c["p_tost"], "margin": c["margin"],
                         "verdict": c["verdict"], "alpha": alpha, "look": last["look"] if last else None,
                         "se": c["se"], "df": c["df"], "var_seed": c["var_seed"],
                         "var_example": c["var_example"], "var_residual": c["var_residual"],
                         "seed_share": c["seed_share"], "resolvable_margin": c["resolvable_margin"],
                         "did_not_learn": ",".join(r.member for r in runs if r.did_not_learn),
                         "gain_kept": kept[0] if kept else None,
                         "gain_kept_low": kept[1][0] if kept else None, "gain_kept_high": kept[1][1] if kept else None})
    return pd.DataFrame(rows)


HOLM = "Holm's step-down over the ranks' TOST p (family-wise 5 %, no order of the ranks presumed)"
SEQUENTIAL = "Bonferroni over the ranks (5 % / ranks each), each spent over the looks as seeds were added"


def shown_equivalent(g: pd.DataFrame) -> dict:
    """One family's ranks (its rows of ``reach``, one or more arms) under the study's several-ranks procedure: Holm
    over the TOST p-values (``crossed.holm``), or, in a study run until resolved, each rank's final-look verdict (the
    sweeper tested each rank at 5 % / ranks, spent over the looks). Ranks are keyed (rank, arm). {smallest,
    equivalent, stopped_at, levels, procedure, alpha: the level per test (the one the power of 'none' is computed
    at)}."""
    keys = [(int(r["rank"]), r.arm) for _, r in g.iterrows()]
    alpha = 0.05 / max(len(keys), 1)
    if "look" in g and g["look"].notna().any():
        shown = sorted(k for k, (_, r) in zip(keys, g.iterrows()) if r.verdict == crossed.EQUIVALENT)
        final = {k: float(r["alpha"]) for k, (_, r) in zip(keys, g.iterrows())
                 if "alpha" in r and not pd.isna(r["alpha"])}  # the level of each rank's final look
        return {"smallest": min(shown) if shown else None, "equivalent": shown, "stopped_at": None,
                "levels": final, "procedure": SEQUENTIAL, "alpha": alpha}
    h = crossed.holm({k: float(r.p_tost) for k, (_, r) in zip(keys, g.iterrows())})
    return {**h, "procedure": HOLM, "alpha": alpha}


def rank_name(key: tuple, g: pd.DataFrame) -> str:
    """'r = 4', or 'LoRA (all linear) r = 4' in a family of several arms."""
    rank, arm = key
    if g.arm.nunique() == 1:
        return f"r = {rank}"
    return f"{g[g.arm == arm].title.iloc[0]} r = {rank}"


def smallest_rank_table(reach: pd.DataFrame) -> pd.DataFrame:
    """Per arm: the smallest rank shown equivalent to the reference within the margin with the family-wise error of
    "these ranks are equivalent" at 5 % (``shown_equivalent``: Holm, or Bonferroni spent over the looks), or none,
    with its interval; the ranks shown to differ beside it (a larger rank may be farther from full FT)."""
    rows = []
    if reach.empty:
        return pd.DataFrame()
    for arm, g in reach[reach["rank"].notna()].groupby("arm", sort=False):
        seq = shown_equivalent(g)
        best = g[g["rank"] == seq["smallest"][0]].iloc[0] if seq["smallest"] is not None else None
        rows.append({"arm": arm, "title": g.title.iloc[0],
                     "smallest_equivalent_rank": None if best is None else seq["smallest"][0],
                     "diff": None if best is None else best["diff"],
                     "ci90_low": None if best is None else best.ci90_low,
                     "ci90_high": None if best is None else best.ci90_high, "margin": g.margin.iloc[0],
                     "equivalent_ranks": ",".join(str(k[0]) for k in seq["equivalent"]),
                     "stopped_at": None if seq["stopped_at"] is None else seq["stopped_at"][0],
                     "procedure": seq["procedure"],
                     "different_ranks": ",".join(str(int(r)) for r, v in zip(g["rank"], g.verdict)
                                                 if v == crossed.DIFFERENT),
                     "seeds": int(g.seeds.max())})
    return pd.DataFrame(rows)


# -- figure ---------------------------------------------------------------------------------------

@plotting.styled
def figure(study: Study, reach: pd.DataFrame):
    """What the test is about: each rank's paired difference from full finetuning (LoRA − full FT) with its 95 %
    interval (thin) and its 90 % interval (thick, the one TOST reads), against 0 and the ±margin band."""
    fig, axes = plotting.subplots(width=6.6, height=4.0)
    ax = axes[0, 0]
    arms_ = reach[reach["rank"].notna()]
    xs = sorted(arms_["rank"].unique())
    m = float(arms_.margin.iloc[0])
    ax.axhspan(-m, m, color="tab:green", alpha=0.15, zorder=0, label=f"equivalence margin ±{m:g}")
    ax.axhline(0, color=plotting.REFERENCE_COLOR, lw=1, label="no difference from full FT")
    for i, (arm, g) in enumerate(arms_.groupby("arm", sort=False)):
        style = plotting.arm_style(i)
        shift = 1 + 0.06 * (i - (arms_.arm.nunique() - 1) / 2)
        x = g["rank"] * shift
        plotting.errorbar(ax, x, g["diff"], g.diff_ci_low, g.diff_ci_high, ms=5, lw=1.0, capsize=3,
                          label=f"{g.title.iloc[0]} − full FT (95 %; thick: 90 %)", **style)
        ax.vlines(x, g.ci90_low, g.ci90_high, color=style["color"], lw=3.2, alpha=0.6)
    ax.set_xscale("log", base=2)
    if xs:
        ax.set_xticks(xs, [str(int(x)) for x in xs])
        ax.minorticks_off()
    what = arms_.score.iloc[0] if len(arms_) else "score"
    ax.set_xlabel("rank r")
    ax.set_ylabel(f"paired difference in test {what}\n(method − full FT)")
    plotting.figure_legend(fig, axes, ncol=2)
    return plotting.finish(fig, study)


# -- finding --------------------------------------------------------------------------------------

def finding(reach: pd.DataFrame) -> List[str]:
    """How the comparison is made and the scores it compares (from ``reach``); the verdict is the reach claim's."""
    if reach.empty:
        return ["The study lacks full finetuning or per-example outputs, so no rank is compared with full finetuning."]
    ref = reach[reach.arm == "reference"].iloc[0]
    base = reach[reach.arm == "baseline"]
    arms_ = reach[reach["rank"].notna()]
    text = (f"{ref.title} reaches {ref['mean']:.3f} {fmt_interval((ref.ci_low, ref.ci_high), signed=False)}"
            + (f"; the frozen base {base.iloc[0]['mean']:.3f} "
               f"{fmt_interval((base.iloc[0].ci_low, base.iloc[0].ci_high), signed=False)}" if len(base) else "")
            + f" ({ref.score}, {int(ref.examples):,} test examples, {int(ref.seeds)} seed(s), 95 % intervals).")
    if arms_.empty:
        return [text + " The study has no rank-swept method to compare with it."]
    text += (" Each rank is compared with full finetuning on the same test examples and seeds: the difference's "
             "interval is from the crossed seeds × examples model (Banerjee's: the seeds' part of its variance on "
             "S − 1 degrees of freedom, the examples' on N − 1); "
             f"equivalence is two one-sided tests against a margin of ±{arms_.margin.iloc[0]:.3g}, the 90 % interval "
             "inside it; the several ranks make one claim, tested by " +
             ("Bonferroni over the ranks, each rank's 5 % / ranks spent over the looks as seeds were added"
              if "look" in arms_ and arms_["look"].notna().any() else
              "Holm's step-down over the ranks' TOST p-values") +
             ", so \"these ranks are equivalent\" keeps a family-wise error of 5 % without presuming that a larger "
             "rank is closer to full finetuning.")
    return [text]


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
        if reach.empty or not reach["rank"].notna().any():
            return []  # no rank-swept method: nothing to compare with full FT (the verdict table says so)
        seeds = seeds_phrase(r.seed for r in ctx.study.runs)
        return [Section("Does LoRA reach full finetuning, and from which rank?",
                        finding(reach) + ctx.sentences("reach:"),
                        figure="reach" if ctx.drew("reach") else None, table="reach",
                        caption="Whether each rank's paired difference from full FT lies inside the green margin "
                                "around 0 (its thick 90 % interval: equivalent) or off 0 (its 95 % interval: "
                                f"different); scope: the whole test split, {seeds}, intervals from the crossed "
                                "seeds × examples model.",
                        table_caption="Each method's test score and its paired difference from full FT (95 % "
                                      "intervals), the equivalence test (TOST) and the share of full FT's gain kept.")]

    def formatted(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        reach = ctx.table("reach")
        return {"reach": formatted(reach)} if not reach.empty else {}
