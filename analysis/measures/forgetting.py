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

from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from .. import paired, plotting, stats
from ..loader import Study, label_key
from ..paired import fmt_interval
from ..roles import ROLE_COLUMNS, arm_title, finetuned, ordered_labels, with_roles
from .base import Context, Measure, Section, seeds_phrase


def forgetting_table(runs: pd.DataFrame, tasks: Optional[List[str]] = None) -> pd.DataFrame:
    """Per run: target gain over the frozen base (same seed), mean forgetting, per-task forgetting, CKA.
    ``tasks``: the informative accuracy tasks; ``forgetting_mean`` is then the mean over them alone (a run's
    summary averages every probe, those at chance included)."""
    if runs.empty or "forgetting_mean" not in runs:
        return pd.DataFrame()
    runs = with_roles(runs)
    base = runs[runs.baseline.astype(bool)].set_index("seed").test_accuracy
    cols = ["member", "method", "label", "rank", "d", "seed", *ROLE_COLUMNS, "test_accuracy", "forgetting_mean",
            "cka"] + [c for c in runs.columns if c.startswith("forgetting_") and c != "forgetting_mean"] + \
        [c for c in runs.columns if c.startswith(("heldout_", "metric_"))] + ["probe_n_test"]
    t = runs[[c for c in cols if c in runs]].copy()
    t["gain_over_base"] = [a - base.get(s, np.nan) for a, s in zip(t.test_accuracy, t.seed)]
    columns = [f"forgetting_{task}" for task in tasks or []]
    if tasks is not None and all(c in t for c in columns):
        t["forgetting_mean"] = t[columns].mean(axis=1) if columns else np.nan
    return t


FORGETS_LESS, FORGETS_MORE = "forgets less", "forgets more"
NO_MORE = "forgets no more than full FT within the margin"
# the units forgetting is measured in, each pooled only with itself: {unit: (what it is, how a value reads)}
UNITS = {
    "accuracy": ("held-out accuracy drop (base − finetuned)", lambda x: f"{x:+.3f}"),
    "perplexity": ("held-out cross-entropy increase (finetuned − base, nats per token)", lambda x: f"{x:+.3f} nats"),
    "kl": ("KL(base ‖ finetuned) on held-out text (nats per token)", lambda x: f"{x:+.4f} nats"),
}
# per-example keys of a held-out task in each unit: (unit, the key that marks it)
_MARKS = (("accuracy", ".base_correct"), ("perplexity", ".base_nll"), ("kl", ".finetuned_kl_sum"))


def heldout_tasks(study: Study) -> Dict[str, str]:
    """{held-out task: its unit}, from the per-example outputs the runs saved."""
    tasks: Dict[str, str] = {}
    for r in study.runs:
        if not r.saved.get("predictions") or r.is_baseline:
            continue
        for key in r.predictions():
            for unit, mark in _MARKS:
                if key.startswith("heldout.") and key.endswith(mark):
                    tasks[key[len("heldout."):-len(mark)]] = unit
        if tasks:
            break
    return dict(sorted(tasks.items()))


def accuracy_tasks(study: Study) -> List[str]:
    """Held-out tasks scored by accuracy (per-example correctness saved for base and finetuned probes)."""
    return [t for t, unit in heldout_tasks(study).items() if unit == "accuracy"]


def informative(study: Study, task: str) -> tuple:
    """(whether an accuracy task can show forgetting, why not). Not when the base's probe sits at chance (its 95 %
    interval reaches the majority class's share, which a probe that learned nothing scores) or when every run and
    the base are at the floor (0) or the ceiling (1): no drop can be measured from there."""
    base = paired.per_seed(study.runs, f"heldout.{task}.base_correct")
    ft = paired.per_seed(study.runs, f"heldout.{task}.finetuned_correct")
    if not base:
        return False, "no per-example outputs"
    b = next(iter(base.values()))
    p, n = float(b.mean()), len(b)
    chance = next((((r.summary.get("heldout") or {}).get("tasks") or {}).get(task, {}).get("chance")
                   for r in study.runs if r.summary.get("heldout")), None)
    means = [p] + [float(v.mean()) for v in ft.values()]
    if all(m == 0 for m in means) or all(m == 1 for m in means):
        return False, f"every run scores {means[0]:.0f} on {task} (the {'floor' if means[0] == 0 else 'ceiling'})"
    if chance is not None and p - 1.96 * np.sqrt(p * (1 - p) / n) <= chance:
        return False, (f"the base scores {p:.3f} on {task}, within its interval of chance ({chance:.3f}, the "
                       f"majority class's share of {n} examples)")
    return True, ""


def forgetting_scores(runs, tasks: List[str], prefix: str = "heldout", unit: str = "accuracy") -> Dict[int, np.ndarray]:
    """{seed: per-example forgetting over ``tasks``, concatenated}: base correct − finetuned correct (accuracy),
    finetuned − base cross-entropy per token (perplexity), or the finetuned model's KL to the base per token
    (kl). ``prefix``: an intervention's variant (``intruder_scaled.heldout``) against the run's own base."""
    if unit == "accuracy":
        base = [paired.per_seed(runs, f"heldout.{t}.base_correct") for t in tasks]
        ft = [paired.per_seed(runs, f"{prefix}.{t}.finetuned_correct") for t in tasks]
    elif unit == "perplexity":
        base = [_per_token(runs, f"heldout.{t}.base") for t in tasks]
        ft = [_per_token(runs, f"{prefix}.{t}.finetuned") for t in tasks]
        base, ft = ft, base  # finetuned − base: more cross-entropy is more forgetting
    else:
        ft = [{s: np.zeros_like(v) for s, v in _per_token(runs, f"{prefix}.{t}.finetuned", "kl_sum").items()}
              for t in tasks]
        base = [_per_token(runs, f"{prefix}.{t}.finetuned", "kl_sum") for t in tasks]
    seeds = set.intersection(*(set(g) for g in base + ft)) if tasks else set()
    return {s: np.concatenate([b[s] - f[s] for b, f in zip(base, ft)]) for s in sorted(seeds)}


def _per_token(runs, prefix: str, what: str = "nll") -> Dict[int, np.ndarray]:
    total, tokens = paired.per_seed(runs, f"{prefix}_{what}"), paired.per_seed(runs, f"{prefix}_tokens")
    return {s: total[s] / np.maximum(tokens[s], 1) for s in total if s in tokens}


def _verdict(c: dict, m: float) -> str:
    if c["ci95"][1] < 0:
        return FORGETS_LESS
    if c["ci95"][0] > 0:
        return FORGETS_MORE
    return NO_MORE if c["ci90"][1] < m else stats.UNRESOLVED


def unit_margin(study: Study, unit: str) -> float:
    """The margin of a unit: accuracy points; log(1 + m) nats per token for a relative perplexity margin m; nats
    per token for KL."""
    return {"accuracy": paired.margin(study), "perplexity": float(np.log1p(paired.margin(study, "perplexity"))),
            "kl": paired.margin(study, "kl")}[unit]


def forgetting_paired(study: Study, runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Per finetuned method (and rank), unit and task scope (``mean`` over the unit's informative tasks, then each
    task): mean forgetting with its interval and its paired difference from full finetuning's, with a verdict. A
    task that cannot show forgetting (``informative``) keeps its rows, marked, and stays out of the pooled one."""
    units = heldout_tasks(study)
    refs = study.references()
    if not units or not refs:
        return pd.DataFrame()
    groups = {}
    for r in study.runs:
        if not r.is_baseline and not r.is_reference:
            groups.setdefault((r.arm, r.value), []).append(r)
    rows = []
    for unit in UNITS:
        tasks = [t for t, u in units.items() if u == unit]
        if not tasks:
            continue
        flags = {t: informative(study, t) if unit == "accuracy" else (True, "") for t in tasks}
        kept = [t for t in tasks if flags[t][0]]
        m = unit_margin(study, unit)
        scopes = ([("mean", kept)] if kept else []) + [(t, [t]) for t in tasks]
        for scope, ts in scopes:
            full = forgetting_scores(refs, ts, unit=unit)
            if not full:
                continue
            seeds, (fx,) = paired.aligned(full)
            info = {"unit": unit, "tasks": scope, "task_list": ", ".join(ts),
                    "informative": scope == "mean" or flags[scope][0],
                    "why_uninformative": "" if scope == "mean" else flags[scope][1]}
            lo, hi = paired.mean_interval(fx)
            rows.append({"arm": "reference", "title": refs[0].label, "value": None, **info,
                         "forgetting": float(fx.mean()), "ci_low": lo, "ci_high": hi, "seeds": len(seeds),
                         "examples": int(fx.shape[1])})
            for (arm, value), runs in sorted(groups.items(), key=lambda kv: label_key(kv[1][0])):
                own = forgetting_scores(runs, ts, unit=unit)
                c = paired.compare(own, full, m) if own else None
                if c is None:
                    continue
                rows.append({"arm": arm, "title": arm_title(runs_frame, arm) if runs[0].axis else runs[0].label,
                             "family": runs[0].family, "axis": runs[0].axis, "value": value, **info,
                             "forgetting": c["mean_a"], "ci_low": c["ci_a"][0], "ci_high": c["ci_a"][1],
                             "minus_full": c["diff"], "minus_full_low": c["ci95"][0], "minus_full_high": c["ci95"][1],
                             "ci90_low": c["ci90"][0], "ci90_high": c["ci90"][1], "margin": m,
                             "verdict": _verdict(c, m), "seeds": len(c["seeds"]),
                             "examples": int(len(next(iter(own.values())))), "se": c["se"], "df": c["df"],
                             "var_seed": c["var_seed"], "var_example": c["var_example"],
                             "var_residual": c["var_residual"], "seed_share": c["seed_share"],
                             "resolvable_margin": c["resolvable_margin"]})
    return pd.DataFrame(rows)


# -- figures --------------------------------------------------------------------------------------

YLABELS = {"accuracy": "forgetting: base − finetuned\nheld-out accuracy", "perplexity": "cross-entropy increase\n"
           "(nats per token)", "kl": "KL(base ‖ finetuned)\n(nats per token)"}


@plotting.styled
def forgetting_vs_rank(study: Study, table: pd.DataFrame):
    """One panel per unit: mean forgetting (pooled over that unit's informative tasks) of each rank-swept arm by rank,
    with 95 % intervals, beside full finetuning's (line and band)."""
    units = [u for u in UNITS if ((table.tasks == "mean") & (table.unit == u)).any()]
    fig, axes = plotting.subplots(1, len(units), width=1.6 + 4.4 * len(units), height=3.9, squeeze=False)
    for ax, unit in zip(axes[0], units):
        t = table[(table.tasks == "mean") & (table.unit == unit)]
        ref = t[t.arm == "reference"]
        if len(ref):
            r = ref.iloc[0]
            ax.axhspan(r.ci_low, r.ci_high, color="0.85", zorder=0, label=f"{r.title}: 95 % interval")
            ax.axhline(r.forgetting, color=plotting.REFERENCE_COLOR, lw=1.2, label=f"{r.title}")
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
        ax.set_ylabel(YLABELS[unit])
        ax.set_title(t.task_list.iloc[0] if len(t) else unit, fontsize=plotting.LABEL)
    plotting.figure_legend(fig, axes, ncol=2)
    return plotting.finish(fig, study)


def pareto_points(forget: pd.DataFrame, table: pd.DataFrame, reach: pd.DataFrame) -> pd.DataFrame:
    """One row per method (and rank): its test score and mean forgetting with their 95 % intervals (from ``reach``
    and ``forgetting_vs_full``; the mean over seeds without an interval where those lack the method), the frozen
    base at forgetting 0 (its features are the base's by construction)."""
    forget = with_roles(forget)
    t = table[(table.tasks == "mean") & (table.unit == "accuracy")] if not table.empty else table
    rows = []
    for label in ordered_labels(forget):
        g = forget[forget.label == label]
        first = g.iloc[0]
        arm = "baseline" if first.baseline else "reference" if first.reference else first.arm
        value = None if pd.isna(first["value"]) else first["value"]
        row = {"label": label, "arm": arm, "axis": first.axis, "value": value, "seeds": g.seed.nunique(),
               "score": g.test_accuracy.mean(), "score_low": np.nan, "score_high": np.nan,
               "forgetting": 0.0 if first.baseline else np.nan, "forgetting_low": np.nan,
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


def _method(r) -> str:
    return r.title + ("" if pd.isna(r.value) else f" r={int(r.value)}")


def per_task_table(table: pd.DataFrame) -> pd.DataFrame:
    """Forgetting per held-out task and method, in the task's unit, with its 95 % interval, its difference from full
    FT's, and whether the task can show forgetting at all."""
    t = table[table.tasks != "mean"]
    rows = []
    for _, r in t.iterrows():
        fmt = UNITS[r.unit][1]
        rows.append({"task": r.tasks, "unit": r.unit, "method": _method(r),
                     "forgetting [95 %]": f"{fmt(r.forgetting)} {fmt_interval((r.ci_low, r.ci_high))}",
                     "minus full FT [95 %]": "—" if pd.isna(r.get("minus_full")) else
                     f"{fmt(r.minus_full)} {fmt_interval((r.minus_full_low, r.minus_full_high))}",
                     "verdict": (r.verdict if isinstance(r.get("verdict"), str) else "—") if r.informative else
                     "uninformative"})
    return pd.DataFrame(rows)


def mean_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per unit: each method's forgetting pooled over the unit's informative tasks, minus full FT's, the verdict."""
    t = table[table.tasks == "mean"]
    return pd.DataFrame([{
        "unit": r.unit, "method": _method(r),
        "forgetting [95 %]": f"{UNITS[r.unit][1](r.forgetting)} {fmt_interval((r.ci_low, r.ci_high))}",
        "minus full FT [95 %]": "—" if pd.isna(r.get("minus_full")) else
        f"{UNITS[r.unit][1](r.minus_full)} {fmt_interval((r.minus_full_low, r.minus_full_high))}",
        "verdict": r.verdict if isinstance(r.get("verdict"), str) else "—",
        "seeds": int(r.seeds), "examples": int(r.examples)} for _, r in t.iterrows()])


# -- finding --------------------------------------------------------------------------------------

def forgetting_finding(forget: pd.DataFrame, table: pd.DataFrame) -> List[str]:
    """What was measured, unit by unit (the verdicts are the claims'): the pooled tasks and their size, full FT's
    forgetting, the tasks left out, and CKA."""
    if forget.empty:
        return ["Not measured in this study: its runs carry no held-out probes, so the claim that LoRA forgets less "
                "is neither supported nor refuted here."]
    if table.empty:
        return ["The runs saved no per-example held-out outputs, so forgetting is not compared pairwise."]
    parts = []
    for unit, (what, fmt) in UNITS.items():
        t = table[(table.tasks == "mean") & (table.unit == unit)]
        ref = t[t.arm == "reference"]
        if ref.empty:
            continue
        r = ref.iloc[0]
        parts.append(f"{what[0].upper()}{what[1:]}, pooled over {r.task_list} ({int(r.examples)} examples per seed, "
                     f"{int(r.seeds)} seed(s), 95 % intervals, paired on the same examples): {r.title} "
                     f"{fmt(r.forgetting)} {fmt_interval((r.ci_low, r.ci_high))}.")
    left = table[(table.tasks != "mean") & ~table.informative.astype(bool)].drop_duplicates("tasks")
    for _, r in left.iterrows():
        parts.append(f"{r.tasks} is left out of the pooled rows: {r.why_uninformative}.")
    forget = with_roles(forget)
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
        tasks = [t for t in accuracy_tasks(ctx.study) if informative(ctx.study, t)[0]]
        return {"forgetting": forgetting_table(ctx.table("runs"), tasks if accuracy_tasks(ctx.study) else None),
                "forgetting_vs_full": forgetting_paired(ctx.study, ctx.table("runs"))}

    def figures(self, ctx: Context) -> Dict[str, object]:
        forget, table = ctx.table("forgetting"), ctx.table("forgetting_vs_full")
        out = {}
        if not table.empty and (table.tasks == "mean").any():  # some informative task to pool
            out["forgetting_vs_rank"] = forgetting_vs_rank(ctx.study, table)
        if not forget.empty:
            out["pareto"] = pareto(ctx.study, pareto_points(forget, table, ctx.table("reach")))
        return out

    def sections(self, ctx: Context) -> List[Section]:
        forget, table = ctx.table("forgetting"), ctx.table("forgetting_vs_full")
        if forget.empty:
            return []  # no held-out probes: the verdict table's row says "not measured"
        seeds = seeds_phrase(forget.seed) if not forget.empty else ""
        kept = table[(table.tasks != "mean") & table.informative.astype(bool)] if not table.empty else table
        tasks = ", ".join(dict.fromkeys(kept.tasks)) if len(kept) else "the held-out tasks"
        out = [Section("Does LoRA forget less? Forgetting on held-out tasks",
                       forgetting_finding(forget, table) + ctx.sentences("forgetting_less:", "forgetting_bound:"),
                       figure="forgetting_vs_rank" if ctx.drew("forgetting_vs_rank") else None,
                       table="forgetting_vs_full" if not table.empty else None,
                       caption="Whether each rank's interval lies below full FT's band (forgets less) or inside it, "
                               f"one panel per unit; scope: the informative held-out tasks ({tasks}), pooled within "
                               f"a unit, {seeds}, 95 % t intervals over seeds and examples.",
                       table_caption="Forgetting pooled over each unit's informative held-out tasks and its paired "
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
                table_caption="Forgetting per held-out task, in its unit, with 95 % intervals and its paired "
                              "difference from full FT; a task that cannot show forgetting is marked uninformative."))
        return out

    def formatted(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        table = ctx.table("forgetting_vs_full")
        if table.empty:
            return {}
        out = {"forgetting_vs_full": mean_table(table)}
        if (table.tasks != "mean").any():
            out["forgetting_per_task"] = per_task_table(table)
        return out
