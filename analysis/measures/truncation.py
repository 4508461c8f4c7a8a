"""Does full finetuning's update live in a few directions? Each full-finetuning run evaluated its ΔW truncated to
rank k (and k = 0, no matrix update: the control) in three scopes (``lora_study.run.post_training.SCOPES``):

- ``finetuned_rest``: every analysed ΔW truncated; embeddings, norms, biases and everything else finetuned;
- ``pretrained_rest``: every analysed ΔW truncated; every other parameter but the head back at W_pre;
- ``targets_only``: only the LoRA arm's target matrices carry the truncated ΔW, everything else at W_pre but the
  head — the like-for-like comparison with LoRA trained at rank r on the same matrices.

Tables: ``truncation`` (scope × k: the truncated model's test score with its interval, its paired difference
from the untruncated full finetune, the share of full finetuning's gain over the base it keeps) and
``trained_vs_truncated`` (scope × arm × rank: the method trained at rank k minus full finetuning truncated to
rank k, paired on the same test examples and seeds, with a verdict)."""
from __future__ import annotations

from typing import Any, Dict, List

import pandas as pd

from lora_study.artifacts import SCOPES

from .. import paired, plotting, stats
from ..loader import Study
from ..paired import fmt_interval
from ..roles import arm_title
from .base import Context, Measure, Section, seeds_phrase
from .reach import score_margin, scores

LIKE_FOR_LIKE = "targets_only"
SCOPE_TITLES = {"finetuned_rest": "rest finetuned", "pretrained_rest": "rest at W_pre",
                "targets_only": "only the LoRA targets, rest at W_pre"}


def _scopes(study: Study) -> Dict[str, List[int]]:
    """{scope: the ks evaluated} over the reference runs, in the order of SCOPES."""
    found: Dict[str, set] = {}
    for r in study.references():
        for scope, e in ((r.summary.get("truncation") or {}).get("scopes") or {}).items():
            found.setdefault(scope, set()).update(int(x["k"]) for x in e["ranks"])
    return {s: sorted(found[s]) for s in SCOPES if s in found}


def truncation_tables(study: Study, runs_frame: pd.DataFrame) -> Dict[str, pd.DataFrame]:
    refs = study.references()
    full, what = scores(refs)
    base, _ = scores(study.baselines())
    if not full:
        return {"truncation": pd.DataFrame(), "trained_vs_truncated": pd.DataFrame()}
    m = score_margin(study, what)
    rows, versus = [], []
    for scope, ks in _scopes(study).items():
        for k in ks:
            trunc, _ = scores(refs, f"truncation.{scope}.k{k}")
            n = min((len(v) for v in trunc.values()), default=0)  # truncation reads the test split's first n
            full_n, base_n = _head(full, n), _head(base, n)
            c = paired.compare(trunc, full_n, m)
            if c is None:
                continue
            kept = paired.ratio_interval(trunc, base_n, full_n, base_n) if base else None
            rows.append({"scope": scope, "k": k, "score": what, "mean": c["mean_a"], "ci_low": c["ci_a"][0],
                         "ci_high": c["ci_a"][1], "seeds": len(c["seeds"]), "minus_full": c["diff"],
                         "minus_full_low": c["ci95"][0], "minus_full_high": c["ci95"][1],
                         "verdict_vs_full": c["verdict"], "full_mean": c["mean_b"], "examples": n,
                         "gain_kept": kept[0] if kept else None, "gain_kept_low": kept[1][0] if kept else None,
                         "gain_kept_high": kept[1][1] if kept else None})
            for arm in study.arms("rank"):
                trained, _ = scores([r for r in study.runs if r.arm == arm and r.value == k])
                v = paired.compare(_head(trained, n), trunc, m) if trained else None
                if v is not None:
                    versus.append({"scope": scope, "arm": arm, "title": arm_title(runs_frame, arm), "rank": k,
                                   "trained": v["mean_a"], "trained_low": v["ci_a"][0], "trained_high": v["ci_a"][1],
                                   "truncated": v["mean_b"], "diff": v["diff"],
                                   "diff_low": v["ci95"][0], "diff_high": v["ci95"][1],
                                   "p_difference": v["p_difference"], "verdict": v["verdict"],
                                   "seeds": len(v["seeds"]), "examples": n})
    return {"truncation": pd.DataFrame(rows), "trained_vs_truncated": pd.DataFrame(versus)}


def _head(scores_by_seed: Dict[int, Any], n: int) -> Dict[int, Any]:
    """Each seed's first ``n`` per-example scores (the examples truncation was evaluated on)."""
    return {s: v[:n] for s, v in scores_by_seed.items()}


# -- figure ---------------------------------------------------------------------------------------

@plotting.styled
def figure(study: Study, trunc: pd.DataFrame, versus: pd.DataFrame, reach: pd.DataFrame):
    """One panel per scope: full FT truncated to rank k (k = 0: no matrix update) and each arm trained at rank k,
    with 95 % intervals, and untruncated full FT, all on the same test examples (the ones truncation read), against
    k on an evenly spaced axis."""
    scopes = [s for s in SCOPES if s in set(trunc.scope)]
    fig, axes = plotting.subplots(1, len(scopes), width=2.3 + 1.9 * len(scopes), height=3.6, sharey=True)
    for ax, scope in zip(axes[0], scopes):
        t = trunc[trunc.scope == scope].sort_values("k")
        pos = {k: i for i, k in enumerate(t.k)}
        ax.axhline(t.full_mean.iloc[0], color=plotting.REFERENCE_COLOR, lw=1, label="full FT, untruncated")
        plotting.errorbar(ax, [pos[k] for k in t.k], t["mean"], t.ci_low, t.ci_high, color="tab:red", marker="s",
                          ms=4, capsize=2, lw=1, label="full FT truncated to rank k (95 % interval)")
        trained = versus[versus.scope == scope] if not versus.empty else versus
        for i, (arm, g) in enumerate(trained.groupby("arm", sort=False) if len(trained) else []):
            g = g[g["rank"].isin(pos)]
            if g.empty:
                continue
            plotting.errorbar(ax, [pos[k] + 0.18 * (i + 1) for k in g["rank"]], g["trained"], g.trained_low,
                              g.trained_high, ls="none", ms=4, capsize=2, **plotting.arm_style(i),
                              label=f"{g.title.iloc[0]} trained at rank k (95 % interval)")
        ax.set_xticks(range(len(t)), [str(k) for k in t.k])
        ax.set_xlabel("rank k")
        ax.set_title(SCOPE_TITLES.get(scope, scope), fontsize=plotting.LABEL)
    what = trunc.score.iloc[0]
    axes[0][0].set_ylabel(f"test {what}")
    plotting.figure_legend(fig, axes, ncol=2)
    return plotting.finish(fig, study)


# -- finding --------------------------------------------------------------------------------------

def finding(trunc: pd.DataFrame, versus: pd.DataFrame) -> List[str]:
    if trunc.empty:
        return ["No full finetune recorded truncated evaluations, so truncation is not measured here."]
    parts = [f"Truncation is evaluated on the test split's first {int(trunc.examples.iloc[0]):,} examples "
             "(run.truncation_max_examples); every comparison below pairs on those examples."] \
        if "examples" in trunc and trunc.examples.notna().any() else []
    for scope in [s for s in SCOPES if s in set(trunc.scope)]:
        t = trunc[trunc.scope == scope].sort_values("k")
        k0 = t[t.k == 0]
        ok = t[(t.k > 0) & (t.verdict_vs_full == stats.EQUIVALENT)]
        text = (f"{SCOPES[scope][0].upper()}{SCOPES[scope][1:]} ({scope}): " + ", ".join(
            f"k = {int(r.k)} {r['mean']:.3f} {fmt_interval((r.ci_low, r.ci_high), signed=False)}"
            for _, r in t.iterrows()) + f", against {t.full_mean.iloc[0]:.3f} untruncated.")
        if len(k0):
            text += (f" The k = 0 control (no matrix update at all) scores {k0.iloc[0]['mean']:.3f}"
                     + (f", keeping {100 * k0.iloc[0].gain_kept:.0f} % of full finetuning's gain over the base"
                        if not pd.isna(k0.iloc[0].gain_kept) else "") + ".")
        text += (" Shown equivalent to the untruncated model within the margin at k = " +
                 ", ".join(str(int(k)) for k in ok.k) + "." if len(ok) else
                 " No tested k is shown equivalent to the untruncated model within the margin.")
        parts.append(text)
    if not versus.empty:
        like = versus[versus.scope == LIKE_FOR_LIKE]
        for arm, g in like.groupby("arm", sort=False):
            parts.append(f"Like for like ({SCOPES[LIKE_FOR_LIKE]}), {g.title.iloc[0]} trained at rank k minus full "
                         "finetuning truncated to rank k: " + "; ".join(
                             f"k = {int(r['rank'])} {r['diff']:+.3f} {fmt_interval((r.diff_low, r.diff_high))} "
                             f"({r.verdict})" for _, r in g.iterrows()) + ".")
    return parts


def formatted(trunc: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([{
        "scope": r.scope, "k": int(r.k), f"test {r.score} [95 %]": f"{r['mean']:.3f} "
        f"{fmt_interval((r.ci_low, r.ci_high), signed=False)}",
        "minus untruncated [95 %]": f"{r.minus_full:+.3f} {fmt_interval((r.minus_full_low, r.minus_full_high))}",
        "verdict": r.verdict_vs_full,
        "gain kept [95 %]": "—" if pd.isna(r.gain_kept) else
        f"{100 * r.gain_kept:.0f} % [{100 * r.gain_kept_low:.0f}, {100 * r.gain_kept_high:.0f}]"}
        for _, r in trunc.iterrows()])


class Truncation(Measure):
    name = "truncation"
    tables = ("truncation", "trained_vs_truncated")

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        return truncation_tables(ctx.study, ctx.table("runs"))

    def figures(self, ctx: Context) -> Dict[str, object]:
        trunc = ctx.table("truncation")
        if trunc.empty:
            return {}
        return {"truncation": figure(ctx.study, trunc, ctx.table("trained_vs_truncated"), ctx.table("reach"))}

    def sections(self, ctx: Context) -> List[Section]:
        trunc, versus = ctx.table("truncation"), ctx.table("trained_vs_truncated")
        if trunc.empty:
            return []  # no truncated evaluations: no section
        seeds = seeds_phrase(r.seed for r in ctx.study.references()) if ctx.study.references() else "no seed"
        out = [Section("Does full finetuning's update survive truncation to a few directions?",
                       finding(trunc, versus), figure="truncation" if ctx.drew("truncation") else None,
                       table="truncation" if not trunc.empty else None,
                       caption="From which rank k full FT's truncated update (red) comes back to the untruncated "
                               "score (black line and grey band), and where LoRA trained at rank k lies beside it; "
                               f"scope: the analysed ΔW of each panel's matrices (titles), the test split's first "
                               f"{int(trunc.examples.iloc[0]) if 'examples' in trunc and len(trunc) else 'all'} "
                               f"examples (truncation's), {seeds}, "
                               "95 % intervals.",
                       table_caption="Full FT with every ΔW of the scope truncated to rank k (k = 0: no matrix update), "
                                     "against the untruncated model, paired on the test examples.")]
        if not versus.empty:
            out.append(Section("Trained at rank k against truncated to rank k", [
                "Each rank-swept method trained at rank k minus full finetuning truncated to rank k, paired on the "
                "same test examples and seeds, in every scope; the like-for-like one is "
                f"{SCOPE_TITLES[LIKE_FOR_LIKE]!r} ({LIKE_FOR_LIKE})."], table="trained_vs_truncated", level=3,
                table_caption="Trained minus truncated at equal rank, with 95 % intervals and a verdict."))
        return out

    def formatted(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        trunc, versus = ctx.table("truncation"), ctx.table("trained_vs_truncated")
        out = {"truncation": formatted(trunc)} if not trunc.empty else {}
        if not versus.empty:
            out["trained_vs_truncated"] = pd.DataFrame([{
                "scope": r.scope, "method": f"{r.title} r={int(r['rank'])}", "trained": f"{r.trained:.3f}",
                "truncated full FT": f"{r.truncated:.3f}",
                "trained − truncated [95 %]": f"{r['diff']:+.3f} {fmt_interval((r.diff_low, r.diff_high))}",
                "verdict": r.verdict, "seeds": int(r.seeds)} for _, r in versus.iterrows()])
        return out
