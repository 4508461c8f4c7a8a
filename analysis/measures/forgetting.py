"""Does a low-rank update forget less? Forgetting on held-out tasks (Biderman et al. 2024): forgetting = base probe
accuracy − finetuned probe accuracy per held-out task, and its mean (table ``forgetting``, one row per run).

Every run probed the same held-out test examples, and the base's probe predictions are the same in every run
(cached base features, a deterministic probe), so two runs' forgetting is paired example by example: run A's
forgetting minus run B's is B's correctness minus A's. Table ``forgetting_vs_full`` holds, per method and rank,
its mean forgetting (pooled over the accuracy-scored tasks, and per task) with a 95 % interval, minus full
finetuning's (hierarchical bootstrap over seeds and examples), and the verdicts: "forgets less" / "forgets more"
(the 95 % interval excludes 0), "forgets no more than full finetuning within the margin" (non-inferiority: the
upper end of the 90 % interval is below the margin), else "unresolved". Figures: forgetting against the rank
with those intervals, and learning against forgetting. The Spearman correlation between intruder dimensions and
forgetting, with its interval, is the intruders measure's."""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import pandas as pd

from .. import paired, plotting, stats
from ..loader import Study, label_key
from ..paired import fmt_interval
from ..roles import ROLE_COLUMNS, arm_title, finetuned, ordered_labels, with_roles
from .base import Context, Measure, Section, seeds_phrase


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


FORGETS_LESS, FORGETS_MORE = "forgets less", "forgets more"
NO_MORE = "forgets no more than full FT within the margin"


def accuracy_tasks(study: Study) -> List[str]:
    """Held-out tasks scored by accuracy (per-example correctness saved for base and finetuned probes)."""
    tasks = []
    for r in study.runs:
        if not r.saved.get("predictions"):
            continue
        for key in r.predictions():
            if key.startswith("heldout.") and key.endswith(".base_correct"):
                tasks.append(key[len("heldout."):-len(".base_correct")])
        if tasks:
            break
    return sorted(set(tasks))


def forgetting_scores(runs, tasks: List[str], prefix: str = "heldout") -> Dict[int, np.ndarray]:
    """{seed: per-example forgetting (base correct − finetuned correct) over ``tasks``, concatenated}."""
    base = [paired.per_seed(runs, f"{prefix}.{t}.base_correct") for t in tasks]
    if prefix != "heldout":  # an intervention's variant keeps the run's own base predictions
        base = [paired.per_seed(runs, f"heldout.{t}.base_correct") for t in tasks]
    ft = [paired.per_seed(runs, f"{prefix}.{t}.finetuned_correct") for t in tasks]
    seeds = set.intersection(*(set(g) for g in base + ft)) if tasks else set()
    return {s: np.concatenate([b[s] - f[s] for b, f in zip(base, ft)]) for s in sorted(seeds)}


def _verdict(c: dict, m: float) -> str:
    if c["ci95"][1] < 0:
        return FORGETS_LESS
    if c["ci95"][0] > 0:
        return FORGETS_MORE
    return NO_MORE if c["ci90"][1] < m else stats.UNRESOLVED


def forgetting_paired(study: Study, runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Per finetuned method (and rank) and task scope (``mean`` over the accuracy tasks, then each task): mean
    forgetting with its interval and its paired difference from full finetuning's, with a verdict."""
    tasks = accuracy_tasks(study)
    refs = study.references()
    if not tasks or not refs:
        return pd.DataFrame()
    m = paired.margin(study)
    groups = {}
    for r in study.runs:
        if not r.is_baseline and not r.is_reference:
            groups.setdefault((r.arm, r.value), []).append(r)
    rows = []
    for scope, ts in [("mean", tasks)] + [(t, [t]) for t in tasks]:
        full = forgetting_scores(refs, ts)
        if not full:
            continue
        seeds, (fx,) = paired.aligned(full)
        rows.append({"arm": "reference", "title": refs[0].label, "value": None, "tasks": scope,
                     "forgetting": float(fx.mean()), "ci_low": paired.mean_interval(fx)[0],
                     "ci_high": paired.mean_interval(fx)[1], "seeds": len(seeds)})
        for (arm, value), runs in sorted(groups.items(), key=lambda kv: label_key(kv[1][0])):
            own = forgetting_scores(runs, ts)
            c = paired.compare(own, full, m) if own else None
            if c is None:
                continue
            rows.append({"arm": arm, "title": arm_title(runs_frame, arm) if runs[0].axis else runs[0].label,
                         "axis": runs[0].axis, "value": value, "tasks": scope, "forgetting": c["mean_a"],
                         "ci_low": c["ci_a"][0], "ci_high": c["ci_a"][1], "minus_full": c["diff"],
                         "minus_full_low": c["ci95"][0], "minus_full_high": c["ci95"][1], "ci90_low": c["ci90"][0],
                         "ci90_high": c["ci90"][1], "margin": m, "verdict": _verdict(c, m), "seeds": len(c["seeds"]),
                         "examples": int(len(next(iter(own.values()))))})
    return pd.DataFrame(rows)


# -- figures --------------------------------------------------------------------------------------

@plotting.styled
def forgetting_vs_rank(study: Study, table: pd.DataFrame):
    """Mean forgetting (pooled over the accuracy tasks) of each rank-swept arm by rank, with 95 % intervals, beside
    full finetuning's (line and band)."""
    fig, axes = plotting.subplots(width=6.6, height=3.9)
    ax = axes[0, 0]
    t = table[table.tasks == "mean"]
    ref = t[t.arm == "reference"]
    if len(ref):
        r = ref.iloc[0]
        ax.axhspan(r.ci_low, r.ci_high, color="0.85", zorder=0, label=f"{r.title}: 95 % interval")
        ax.axhline(r.forgetting, color=plotting.REFERENCE_COLOR, lw=1.2, label=f"{r.title} ({r.forgetting:+.3f})")
    swept_rows = t[t.axis == "rank"] if "axis" in t else t.iloc[0:0]
    for i, (arm, g) in enumerate(swept_rows.groupby("arm", sort=False)):
        plotting.errorbar(ax, g.value, g.forgetting, g.ci_low, g.ci_high, ms=5, lw=1.2, **plotting.arm_style(i),
                          label=f"{g.title.iloc[0]} (95 % interval)")
    ax.axhline(0, color=plotting.GUIDE_COLOR, ls=":", lw=0.8, label="no forgetting (frozen base)")
    ax.set_xscale("log", base=2)
    xs = sorted(swept_rows.value.dropna().unique())
    if xs:
        ax.set_xticks(xs, [str(int(x)) for x in xs])
        ax.minorticks_off()
    ax.set_xlabel("rank r")
    ax.set_ylabel("forgetting: base − finetuned\nprobe accuracy")
    plotting.figure_legend(fig, axes, ncol=2)
    return plotting.finish(fig, study)


def pareto_points(forget: pd.DataFrame, table: pd.DataFrame, reach: pd.DataFrame) -> pd.DataFrame:
    """One row per method (and rank): its test score and mean forgetting with their 95 % intervals (from ``reach``
    and ``forgetting_vs_full``; the mean over seeds without an interval where those lack the method), the frozen
    base at forgetting 0 (its features are the base's by construction)."""
    forget = with_roles(forget)
    t = table[table.tasks == "mean"] if not table.empty else table
    rows = []
    for label in ordered_labels(forget):
        g = forget[forget.label == label]
        first = g.iloc[0]
        arm = "baseline" if first.baseline else "reference" if first.reference else first.arm
        value = None if pd.isna(first["value"]) else first["value"]
        row = {"label": label, "arm": arm, "axis": first.axis, "value": value, "seeds": g.seed.nunique(),
               "score": g.test_accuracy.mean(), "score_low": np.nan, "score_high": np.nan,
               "forgetting": 0.0 if first.baseline else g.forgetting_mean.mean(), "forgetting_low": np.nan,
               "forgetting_high": np.nan}
        if not reach.empty:
            key = (reach.arm == arm) & ((reach["rank"] == value) if value is not None else reach["rank"].isna())
            if key.any():
                r = reach[key].iloc[0]
                row.update(score=r["mean"], score_low=r.ci_low, score_high=r.ci_high)
        if not t.empty and not first.baseline:
            key = (t.arm == arm) & ((t.value == value) if value is not None else t.value.isna())
            if key.any():
                f = t[key].iloc[0]
                row.update(forgetting=f.forgetting, forgetting_low=f.ci_low, forgetting_high=f.ci_high)
        rows.append(row)
    return pd.DataFrame(rows)


@plotting.styled
def pareto(study: Study, points: pd.DataFrame):
    """x: test score, y: mean forgetting, one point per method and rank with 95 % intervals on both; each rank-swept
    arm's points joined in rank order, full finetuning a black square, the frozen base a grey diamond at 0."""
    fig, axes = plotting.subplots(width=6.4, height=4.2)
    ax = axes[0, 0]
    arms_ = [a for a in dict.fromkeys(points[points.axis == "rank"].arm)]
    colors = plotting.rank_colors(points[points.axis == "rank"].value)
    runs = study.runs_frame()
    for i, arm in enumerate(arms_):
        g = points[points.arm == arm].sort_values("value")
        ax.plot(g.score, g.forgetting, lw=1, alpha=0.6, color=plotting.arm_style(i)["color"],
                label=f"{arm_title(runs, arm)}, joined by rank")
    for _, p in points.iterrows():
        if p.arm == "baseline":
            style, name = {"color": plotting.BASE_COLOR, "marker": "D"}, f"{p.label} (forgets nothing)"
        elif p.arm == "reference":
            style, name = {"color": plotting.REFERENCE_COLOR, "marker": "s"}, p.label
        elif p.axis == "rank":
            style = {"color": colors[p.value], "marker": plotting.arm_style(arms_.index(p.arm))["marker"]}
            name = f"r={int(p.value)}" if len(arms_) == 1 else p.label
        else:
            style, name = {"color": "tab:orange", "marker": "^"}, p.label
        x, y = p.score, p.forgetting
        xerr = [[max(x - p.score_low, 0)], [max(p.score_high - x, 0)]] if not pd.isna(p.score_low) else None
        yerr = [[max(y - p.forgetting_low, 0)], [max(p.forgetting_high - y, 0)]] if not pd.isna(p.forgetting_low) \
            else None
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, ms=6, capsize=2, lw=0.9, ls="none", label=name, **style)
    ax.axhline(0, color=plotting.GUIDE_COLOR, ls=":", lw=0.8)
    ax.set_xlabel("learning: test score (95 % interval)")
    ax.set_ylabel("forgetting: mean held-out\nprobe drop (95 % interval)")
    steps = (study.index.get("shared") or {}).get("budget", {}).get("max_steps")
    ax.set_title(f"One training length ({steps} steps): a scatter, not a curve over training",
                 fontsize=plotting.LABEL)
    plotting.figure_legend(fig, axes, ncol=3)
    return plotting.finish(fig, study)


def per_task_table(table: pd.DataFrame) -> pd.DataFrame:
    """Forgetting per held-out task and method, with its 95 % interval and its difference from full FT's."""
    t = table[table.tasks != "mean"]
    rows = []
    for _, r in t.iterrows():
        rows.append({"task": r.tasks, "method": r.title + ("" if pd.isna(r.value) else f" r={int(r.value)}"),
                     "forgetting [95 %]": f"{r.forgetting:+.3f} {fmt_interval((r.ci_low, r.ci_high))}",
                     "minus full FT [95 %]": "—" if pd.isna(r.get("minus_full")) else
                     f"{r.minus_full:+.3f} {fmt_interval((r.minus_full_low, r.minus_full_high))}",
                     "verdict": r.verdict if isinstance(r.get("verdict"), str) else "—"})
    return pd.DataFrame(rows)


def mean_table(table: pd.DataFrame) -> pd.DataFrame:
    t = table[table.tasks == "mean"]
    return pd.DataFrame([{
        "method": r.title + ("" if pd.isna(r.value) else f" r={int(r.value)}"),
        "mean forgetting [95 %]": f"{r.forgetting:+.3f} {fmt_interval((r.ci_low, r.ci_high))}",
        "minus full FT [95 %]": "—" if pd.isna(r.get("minus_full")) else
        f"{r.minus_full:+.3f} {fmt_interval((r.minus_full_low, r.minus_full_high))}",
        "verdict": r.verdict if isinstance(r.get("verdict"), str) else "—",
        "seeds": int(r.seeds)} for _, r in t.iterrows()])


# -- finding --------------------------------------------------------------------------------------

def forgetting_finding(forget: pd.DataFrame, table: pd.DataFrame) -> List[str]:
    if forget.empty:
        return ["Not measured in this study: its runs carry no held-out probes, so the claim that LoRA forgets less "
                "is neither supported nor refuted here."]
    parts = []
    forget = with_roles(forget)
    metrics = {c[len("metric_"):]: forget[c].dropna().iloc[0] for c in forget.columns
               if c.startswith("metric_") and forget[c].notna().any()}
    if any(m == "perplexity" for m in metrics.values()):  # units differ between tasks: each on its own
        by = finetuned(forget)
        for task, metric in metrics.items():
            col = f"forgetting_{task}"
            if col in by:
                v = by.groupby("label")[col].mean()
                unit = "perplexity, finetuned − base" if metric == "perplexity" else f"{metric}, base − finetuned"
                parts.append(f"{task} ({unit}, mean over seeds): " +
                             ", ".join(f"{k} {v[k]:+.3g}" for k in ordered_labels(by)) + ".")
    if table.empty:
        return parts or ["The runs saved no per-example probe outputs, so forgetting is not compared pairwise."]
    t = table[table.tasks == "mean"]
    ref = t[t.arm == "reference"].iloc[0]
    n = t.examples.dropna()
    parts.insert(0, f"Mean forgetting over the accuracy-scored held-out tasks (base probe accuracy − finetuned, "
                    f"{int(n.iloc[0]) if len(n) else '?'} probe examples per seed, {int(ref.seeds)} seed(s); 95 % "
                    f"intervals): {ref.title} {ref.forgetting:+.3f} {fmt_interval((ref.ci_low, ref.ci_high))}. Each "
                    "method minus full finetuning, paired on the same probe examples: " + "; ".join(
                        f"{r.title}{'' if pd.isna(r.value) else f' r={int(r.value)}'} {r.minus_full:+.3f} "
                        f"{fmt_interval((r.minus_full_low, r.minus_full_high))} ({r.verdict})"
                        for _, r in t[t.arm != "reference"].iterrows()) + ".")
    less = t[t.verdict == FORGETS_LESS]
    more = t[t.verdict == FORGETS_MORE]
    unresolved = t[t.verdict == stats.UNRESOLVED]
    summary = []
    if len(less):
        summary.append(f"{len(less)} forget{'s' if len(less) == 1 else ''} measurably less than full finetuning")
    if len(more):
        summary.append(f"{len(more)} forget{'s' if len(more) == 1 else ''} measurably more")
    if len(unresolved):
        summary.append(f"{len(unresolved)} {'is' if len(unresolved) == 1 else 'are'} unresolved (neither a difference "
                       "nor non-inferiority within the margin is shown)")
    if summary:
        parts.append("Of the compared runs, " + "; ".join(summary) + ".")
    if "cka" in forget and forget.cka.notna().any():
        fin = finetuned(forget)
        c = fin.groupby("label").cka.mean()
        n_cka = forget.cka_n.dropna() if "cka_n" in forget else pd.Series(dtype=float)
        parts.append(f"Debiased linear CKA to the base's features on {int(n_cka.iloc[0]) if len(n_cka) else 'the'} "
                     "held-out texts (1 = the same representation up to rotation and scale, ≈ 0 unrelated): " +
                     ", ".join(f"{k} {c[k]:.3f}" for k in ordered_labels(fin)) + ".")
    return parts


class Forgetting(Measure):
    name = "forgetting"
    tables = ("forgetting", "forgetting_vs_full")

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        return {"forgetting": forgetting_table(ctx.table("runs")),
                "forgetting_vs_full": forgetting_paired(ctx.study, ctx.table("runs"))}

    def figures(self, ctx: Context) -> Dict[str, object]:
        forget, table = ctx.table("forgetting"), ctx.table("forgetting_vs_full")
        out = {}
        if not table.empty:
            out["forgetting_vs_rank"] = forgetting_vs_rank(ctx.study, table)
        if not forget.empty:
            out["pareto"] = pareto(ctx.study, pareto_points(forget, table, ctx.table("reach")))
        return out

    def sections(self, ctx: Context) -> List[Section]:
        forget, table = ctx.table("forgetting"), ctx.table("forgetting_vs_full")
        seeds = seeds_phrase(forget.seed) if not forget.empty else ""
        tasks = ", ".join(accuracy_tasks(ctx.study)) or "the held-out tasks"
        out = [Section("Does LoRA forget less? Forgetting on held-out tasks",
                       forgetting_finding(forget, table),
                       figure="forgetting_vs_rank" if ctx.drew("forgetting_vs_rank") else None,
                       table="forgetting_vs_full" if not table.empty else None,
                       caption="Whether each rank's interval lies below full FT's band (forgets less) or inside it; "
                               f"scope: linear probes on {tasks}, pooled, {seeds}, 95 % intervals from a bootstrap "
                               "over seeds and probe examples.",
                       table_caption="Mean forgetting over the accuracy-scored held-out tasks and its paired "
                                     "difference from full FT's, with the verdict.")]
        if ctx.drew("pareto"):
            out.append(Section("Learning vs forgetting", [
                "Each point is one method (mean over seeds): x its test score, y its mean held-out forgetting, both "
                "with 95 % intervals; the frozen base forgets nothing by construction. Biderman et al. found LoRA "
                "and full finetuning on roughly one Pareto curve, traced over training lengths: with one training "
                "length this is a scatter, and the curve needs experiment=training_length (below, when run)."],
                figure="pareto", level=3,
                caption="Where each rank sits between the frozen base (no learning, no forgetting) and full FT, and "
                        f"whether LoRA trades learning for forgetting; scope: test split and probes on {tasks}, "
                        f"{seeds}, one training length."))
        if not table.empty and (table.tasks != "mean").any():
            out.append(Section("Forgetting per held-out task", [
                "The pooled verdict above can hide a task that moves against the others."],
                table="forgetting_per_task", level=3,
                table_caption="Forgetting per held-out task (base − finetuned probe accuracy) with 95 % intervals "
                              "and its paired difference from full FT."))
        return out

    def formatted(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        table = ctx.table("forgetting_vs_full")
        if table.empty:
            return {}
        out = {"forgetting_vs_full": mean_table(table)}
        if (table.tasks != "mean").any():
            out["forgetting_per_task"] = per_task_table(table)
        return out
