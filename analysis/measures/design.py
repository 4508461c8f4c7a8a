"""What can this study resolve? For every paired comparison behind a verdict (each rank against full finetuning on
the test split, each rank's forgetting against full finetuning's), its variance split into the seeds' part and the
examples' part (``analysis.crossed``: var_seed / S against var_example / N + var_residual / (S N)), the smallest
margin this design resolves with 80 % power at a true difference of 0, and the test examples it would need at 3, 5
and 10 seeds (and the seeds at its own examples) to resolve the study's margin; a rank's comparison at the level the
several-ranks claim tests it at (5 % / the family's ranks), a forgetting comparison at 5 %. ``lora-study-plan`` prints the same
table for any margin and power.

A row whose needed examples exceed what the task can give says so in the README's terms: more seeds, not more
examples, is then the way (the seeds' own variance does not shrink with examples)."""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import pandas as pd

from .. import crossed
from .base import Context, Measure, Section

SEEDS_PLANNED = (3, 5, 10)
POWER = 0.8


def _components(r) -> crossed.Components:
    """A table row's comparison as components at its own design (the mean squares at their expected values)."""
    return crossed.from_parts(float(r.get("diff", r.get("minus_full", 0.0))), float(r.var_seed),
                              float(r.var_example), float(r.var_residual), int(r.seeds), int(r.examples))


def design_rows(reach: pd.DataFrame, forgetting: pd.DataFrame, margin: float = None, power: float = POWER,
                seeds_planned=SEEDS_PLANNED) -> pd.DataFrame:
    """One row per comparison (from the ``reach`` and ``forgetting_vs_full`` tables' variance columns)."""
    rows: List[dict] = []
    sources = []
    if not reach.empty and "var_seed" in reach:
        ranked = reach[reach["rank"].notna()]
        # the ranks of one family make one claim, each rank tested at 5 % / their number (Holm's first level, the
        # Bonferroni bound): the power that matters for the claim is at that level
        family = next((ranked[c] for c in ("family", "arm") if c in ranked), pd.Series("", index=ranked.index))
        size = family.map(family.value_counts())
        for (_, r), k in zip(ranked.iterrows(), size):
            sources.append((f"{r.title} r={int(r['rank'])} − full FT", f"test {r.score}", r, r.margin, 0.05 / k))
    if not forgetting.empty and "var_seed" in forgetting:
        t = forgetting[(forgetting.tasks == "mean") & forgetting.var_seed.notna()]
        for _, r in t.iterrows():
            sources.append((f"{r.title} r={int(r.value)} − full FT" if not pd.isna(r.value) else f"{r.title} − full FT",
                            f"forgetting ({r.unit}, {_tasks(r.task_list, r.unit)})", r, r.margin, 0.05))
    for name, what, r, m, alpha in sources:
        c = _components(r)
        m = float(m if margin is None else margin)
        v = c.se ** 2
        row = {"comparison": name, "score": what, "seeds": c.seeds, "examples": c.examples,
               "difference": c.mean, "se": c.se, "df": c.df, "alpha": alpha,
               "seed_part": (c.var_seed / c.seeds) / v if v else 0.0,
               "example_part": 1 - ((c.var_seed / c.seeds) / v if v else 0.0),
               "resolvable_margin": crossed.resolvable(c, power, alpha), "margin": m,
               "seeds_needed_here": crossed.seeds_needed(c, m, c.examples, power, alpha) if c.seeds > 1 else None}
        for s in seeds_planned:
            row[f"examples_at_{s}_seeds"] = crossed.examples_needed(c, m, s, power, alpha) if c.seeds > 1 else None
        rows.append(row)
    return pd.DataFrame(rows)


def _tasks(task_list: str, unit: str) -> str:
    """The held-out tasks of a forgetting row without the unit the row already names (``lee_wiki_kl`` → lee_wiki)."""
    suffix = f"_{unit}"
    return ", ".join(t[:-len(suffix)] if t.endswith(suffix) else t for t in str(task_list).split(", "))


def _n(x) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{int(x):,}"


def formatted(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([{
        "comparison": r.comparison, "score": r.score, "seeds × examples": f"{r.seeds} × {r.examples:,}",
        "difference ± SE": f"{r.difference:+.4f} ± {r.se:.4f}", "seeds' share of the variance":
        f"{100 * r.seed_part:.0f} %", "α per test": f"{r.alpha:.3g}",
        "resolvable margin (80 % power)": f"±{r.resolvable_margin:.4f}",
        "margin": f"±{r.margin:.3g}",
        **{f"examples for the margin at {s} seeds": _n(r[f"examples_at_{s}_seeds"]) for s in SEEDS_PLANNED},
        "seeds for the margin at these examples": _n(r.seeds_needed_here)} for _, r in t.iterrows()])


def finding(t: pd.DataFrame) -> List[str]:
    if t.empty:
        return ["The study has no paired comparison with its variance recorded."]
    test = t[t.score.str.startswith("test")]
    parts = []
    if len(test):
        worst = test.resolvable_margin.max()
        share = test.seed_part.median()
        parts.append(f"On the test split this design resolves ±{worst:.4f} with 80 % power at every rank, each "
                     f"rank tested at α = {test.alpha.max():.3g} (the family's 5 % over its ranks, the level Holm's "
                     f"first step uses; the study's margin is ±{test.margin.iloc[0]:g}); the seeds carry a median "
                     f"{100 * share:.0f} % of a difference's variance, the test examples the rest.")
    forget = t[t.score.str.startswith("forgetting")]
    if len(forget):
        parts.append(f"For forgetting it resolves ±{forget.resolvable_margin.min():.4f}–"
                     f"±{forget.resolvable_margin.max():.4f} in the units of each row.")
    return parts


class Design(Measure):
    name = "design"
    tables = ("design",)

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        return {"design": design_rows(ctx.table("reach"), ctx.table("forgetting_vs_full"))}

    def sections(self, ctx: Context) -> List[Section]:
        t = ctx.table("design")
        if t.empty:
            return []
        return [Section("What this design can resolve: power and the seeds × examples it would take", finding(t),
                        table="design", table_caption=(
                            "Per paired comparison: its variance split into the seeds' and the examples' parts "
                            "(crossed random effects), the smallest margin the design resolves with 80 % power at a "
                            "true difference of 0, and the test examples (or seeds) it would take to resolve the "
                            "row's margin (the study's, in the row's units); — where no count reaches it."))]

    def formatted(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        t = ctx.table("design")
        return {"design": formatted(t)} if not t.empty else {}
