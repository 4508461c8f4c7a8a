"""Do two ranks of one method learn the same directions? Hu et al.'s subspace similarity (their Section 7.2):

    φ(A1, A2, i, j) = ‖U1[:, :i]ᵀ U2[:, :j]‖_F² / min(i, j) ∈ [0, 1],

U the right-singular vectors of the learned down-projections A (r × d_in, read from the saved adapters), per
adapted matrix. Only the whole r-dimensional span of A equals the row space of ΔW = s B A; for i, j < r the
orderings differ, so φ computed on ΔW's right singular vectors is a different measure, kept beside it and
labelled as ΔW's.

Per rank-swept arm with adapters: its smallest rank against its largest (and against the next largest, as Hu et
al.'s 8 vs 64), within each seed; the controls that would show the effect is an artefact: the same rank at two
seeds (how much two independent trainings share) and two random Gaussian subspaces of the same sizes (what
chance gives, E φ(i, j) = max(i, j) / d_in). Table ``similarity``: one row per arm, basis (A or ΔW), pair (or
control), seed pair, module; the finding pools φ(1, 1) over modules and seeds with a bootstrap interval over
seeds then modules. Table ``full_energy_in_lora``: the share of full finetuning's ΔW energy inside each
rank-swept run's column and row spaces (top r of its ΔW), beside the share a random r-dimensional space holds."""
from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from lora_study.artifacts import ArtifactError, module_kind, module_layer
from lora_study.linalg import thin_svd

from .. import paired, plotting
from ..loader import Run, Study
from ..plotting import KIND_TITLES
from ..roles import arm_title
from ..subspace import (
    energy_in_subspace,
    random_subspace_control,
    subspace_similarity_grid,
    top_singular_vectors,
)
from .base import Context, Measure, Section, per_run, seeds_phrase

PAIR, SEEDS, RANDOM = "ranks", "seeds", "random"  # what a row compares
RANDOM_DRAWS = 100  # pairs of random subspaces averaged per seed for the chance level


def rank_pairs(ranks: List[int]) -> List[Tuple[int, int]]:
    """(smallest, largest) and (second largest, largest), as Hu et al.'s 8 vs 64 beside 1 vs 64."""
    ranks = sorted(set(ranks))
    if len(ranks) < 2:
        return []
    pairs = [(ranks[0], ranks[-1])]
    if len(ranks) > 2:
        pairs.append((ranks[-2], ranks[-1]))
    return pairs


def _bases(run: Run, basis: str) -> Dict[str, "np.ndarray"]:
    """{module: right-singular vectors (d_in × r)} of the run's A matrices, or of its ΔW (top r)."""
    if basis == "A":
        return {m: top_singular_vectors(f["A"].double(), f["A"].shape[0], "right")
                for m, f in run.dir.adapter_factors().items() if "A" in f}
    return {m: top_singular_vectors(d.double(), run.rank, "right") for m, d in run.dir.iter_deltas()}


def similarity_rows(study: Study) -> List[dict]:
    rows: List[dict] = []
    for arm in study.arms("rank"):
        runs = {(r.seed, r.value): r for r in study.runs if r.arm == arm}
        seeds = sorted({s for s, _ in runs})
        have_a = all(r.saved.get("adapter") for r in runs.values())
        have_delta = all(r.saved.get("delta") for r in runs.values())  # run.save_delta=false keeps none
        comparisons = [(PAIR, small, large, s, s) for small, large in rank_pairs(study.values(arm)) for s in seeds]
        for r_ in sorted({v for p in rank_pairs(study.values(arm)) for v in p}):
            comparisons += [(SEEDS, r_, r_, a, b) for a, b in itertools.combinations(seeds, 2)]
        cache: Dict[tuple, dict] = {}
        for basis in (["A"] if have_a else []) + (["ΔW"] if have_delta else []):
            for what, small, large, sa, sb in comparisons:
                ra, rb = runs.get((sa, small)), runs.get((sb, large))
                if ra is None or rb is None:
                    continue
                try:
                    ua = cache.setdefault((basis, ra.member), _bases(ra, basis))
                    ub = cache.setdefault((basis, rb.member), _bases(rb, basis))
                except ArtifactError as e:
                    study.skipped.setdefault(ra.member, str(e))
                    continue
                for module in sorted(set(ua) & set(ub)):
                    g = np.asarray(subspace_similarity_grid(ua[module], ub[module], small, large))
                    rows.append(_row(arm, basis, what, small, large, sa, sb, module, g))
                if what == PAIR and basis == "ΔW" and ua:  # the chance level for this pair and matrix size
                    n = next(iter(ua.values())).shape[0]
                    g = np.mean([np.asarray(random_subspace_control(n, small, large, seed=RANDOM_DRAWS * sa + i))
                                 for i in range(RANDOM_DRAWS)], axis=0)
                    rows.append({**_row(arm, RANDOM, RANDOM, small, large, sa, sa, None, g), "draws": RANDOM_DRAWS,
                                 "expected_phi_1_1": 1 / n})  # E φ(i, j) = max(i, j) / n
    return rows


def _row(arm, basis, what, small, large, sa, sb, module, g) -> dict:
    return {"arm": arm, "basis": basis, "compares": what, "small": small, "large": large, "seed_a": sa, "seed_b": sb,
            "module": module, "kind": module_kind(module) if module else None,
            "layer": module_layer(module) if module else None, "phi_1_1": float(g[0, 0]),
            "phi_diag_mean": float(np.mean(np.diag(g))), "phi_mean": float(g.mean())}


def similarity_table(study: Study) -> pd.DataFrame:
    return pd.DataFrame(similarity_rows(study))


def pooled(sim: pd.DataFrame, column: str = "phi_1_1") -> pd.DataFrame:
    """Per arm, basis, comparison and pair: the mean of ``column`` over seeds and modules with a 95 % interval from the
    crossed model of seed pairs and modules (``analysis.crossed``; the modules are the same in every seed pair)."""
    rows = []
    for key, g in sim.groupby(["arm", "basis", "compares", "small", "large"], sort=False):
        modules = g.module.notna().any()
        x = (g.set_index(["seed_a", "seed_b", "module"])[column].unstack("module") if modules
             else g.set_index(["seed_a", "seed_b"])[[column]]).to_numpy(dtype=float)
        lo, hi = paired.mean_interval(x) if np.isfinite(x).all() else (np.nan, np.nan)
        rows.append(dict(zip(["arm", "basis", "compares", "small", "large"], key),
                         mean=float(np.nanmean(x)), ci_low=lo, ci_high=hi, seed_pairs=x.shape[0],
                         modules=x.shape[1] if modules else 0,
                         draws=int(g.draws.sum()) if "draws" in g and g.draws.notna().any() else None,
                         expected=float(g.expected_phi_1_1.iloc[0]) if "expected_phi_1_1" in g and
                         g.expected_phi_1_1.notna().any() else None))
    return pd.DataFrame(rows)


def reference_energy_table(study: Study) -> pd.DataFrame:
    """Share of full-FT ΔW's energy ‖ΔW_full‖_F² inside each rank-swept run's column / row space (top r of its
    ΔW, same seed), averaged over its saved modules; ``random_*`` is the share a random r-dimensional space holds."""
    def rows(r: Run) -> List[dict]:
        full = study.reference(r.seed)
        if full is None or not (full.saved.get("delta") and r.saved.get("delta")):
            return []
        fr = []
        for module, dl in r.dir.iter_deltas():
            u, _, vh = thin_svd(dl.double())
            e = energy_in_subspace(full.dir.delta(module), u[:, :r.rank], vh[:r.rank].T)
            fr.append({**{k: float(v) for k, v in e.items()}, "random_col": r.rank / dl.shape[0],
                       "random_row": r.rank / dl.shape[1]})
        return [{"member": r.member, "arm": r.arm, "rank": r.rank, "seed": r.seed, "modules": len(fr),
                 **pd.DataFrame(fr).mean().to_dict()}]

    return pd.DataFrame(per_run(study, study.swept("rank"), rows))


# -- figure and finding ---------------------------------------------------------------------------

def _mean_grid(study: Study, arm: str, basis: str, small: int, large: int, pairs: List[tuple]) -> np.ndarray:
    grids = []
    runs = {(r.seed, r.value): r for r in study.runs if r.arm == arm}
    for sa, sb in pairs:
        if (sa, small) not in runs or (sb, large) not in runs:
            continue  # a rank without that seed (seeds added only to some ranks, until resolved)
        ua, ub = _bases(runs[(sa, small)], basis), _bases(runs[(sb, large)], basis)
        grids += [np.asarray(subspace_similarity_grid(ua[m], ub[m], small, large)) for m in sorted(set(ua) & set(ub))]
    return np.mean(grids, axis=0)


@plotting.styled
def heatmaps(study: Study, arm: str, basis: str, small: int, large: int, title: str):
    """φ(i, j) of r = small against r = large (mean over seeds and matrices), the same rank at two seeds, and two
    random subspaces — Hu et al.'s Figure 3 with the controls beside it."""
    seeds = sorted({r.seed for r in study.runs if r.arm == arm})
    panels = [(f"{title} r={small} vs r={large},\nsame seed",
               _mean_grid(study, arm, basis, small, large, [(s, s) for s in seeds]), small, large)]
    if len(seeds) > 1:
        pairs = list(itertools.combinations(seeds, 2))
        panels.append((f"r={large}, two seeds", _mean_grid(study, arm, basis, large, large, pairs), large, large))
    n = next(iter(_bases(next(r for r in study.runs if r.arm == arm and r.value == small), basis).values())).shape[0]
    panels.append(("two random subspaces", np.asarray(random_subspace_control(n, small, large, seed=0)), small, large))
    # the colour scale spans the data (φ of a few tenths would be a pale strip on 0–1), shared by the panels
    top = float(min(1.0, max(np.nanmax(g) for _, g, _, _ in panels) * 1.05)) or 1.0
    fig, axes = plotting.subplots(1, len(panels), width=1.2 + 2.4 * len(panels), height=3.2)
    im = None
    for ax, (name, g, a, b) in zip(axes[0], panels):
        if g.shape[0] == 1:  # rank 1 against r: one row φ(1, j), drawn as a curve, not a strip stretched square
            ax.plot(np.arange(1, g.shape[1] + 1), g[0], color="tab:blue", lw=1.4)
            ax.set_ylim(0, top)
            ax.set_ylabel(f"φ(1, j) from {basis}")
        else:
            im = ax.imshow(g, vmin=0, vmax=top, cmap=plotting.SEQUENCE_CMAP, aspect="auto", origin="upper",
                           extent=(0.5, g.shape[1] + 0.5, g.shape[0] + 0.5, 0.5))
            ax.set_ylabel(f"i (top i of r={a})")
            ax.yaxis.set_major_locator(MaxNLocator(5, integer=True, min_n_ticks=1))
        ax.set_xlabel(f"j (top j of r={b})")
        ax.set_title(name, fontsize=plotting.LABEL)
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=True, min_n_ticks=1))
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), label=f"φ(i, j) from {basis} (scale 0–{top:.2f})", shrink=0.9)
    plotting.caption(fig, study)
    return fig


@plotting.styled
def per_layer(study: Study, sim: pd.DataFrame, pool: Optional[pd.DataFrame] = None):
    """Per arm: φ(1, 1) pooled over matrices and seeds with its 95 % interval (the smallest rank against the
    largest, the largest at two seeds, random subspaces), then per layer and module kind (mean over seeds)."""
    basis = "A" if (sim.basis == "A").any() else "ΔW"
    arms_ = list(dict.fromkeys(sim.arm))
    pooled_panel = pool is not None and not pool.empty
    ncols = len(arms_) + (1 if pooled_panel else 0)
    fig, axes = plotting.subplots(1, ncols, width=1.4 + 3.2 * ncols, height=3.5, sharey=True)
    panels = list(axes[0])
    if pooled_panel:
        ax = panels.pop(0)
        ticks = []
        for i, arm in enumerate(arms_):
            small, large = rank_pairs(study.values(arm))[0]
            rows = [(f"r={small} vs {large}", pool[(pool.arm == arm) & (pool.compares == PAIR) & (pool.basis == basis)
                                                   & (pool["small"] == small) & (pool["large"] == large)]),
                    (f"r={large}, 2 seeds", pool[(pool.arm == arm) & (pool.compares == SEEDS) & (pool.basis == basis)
                                                 & (pool["small"] == large)]),
                    ("random", pool[(pool.arm == arm) & (pool.compares == RANDOM) & (pool["small"] == small)
                                    & (pool["large"] == large)])]
            for j, (name, row) in enumerate(rows):
                if row.empty:
                    continue
                r = row.iloc[0]
                x = len(ticks)
                plotting.errorbar(ax, [x], [r["mean"]], [r.ci_low], [r.ci_high], ms=6, ls="none",
                                  color=plotting.GUIDE_COLOR if name == "random" else plotting.ARM_COLORS[i % 5],
                                  marker=("o", "s", "x")[j])
                ticks.append(name if len(arms_) == 1 else f"{arm_title(study.runs_frame(), arm)} {name}")
        ax.set_xticks(range(len(ticks)), ticks, rotation=25, ha="right")
        ax.set_xlim(-0.6, len(ticks) - 0.4)
        ax.set_title("pooled (95 % interval)", fontsize=plotting.LABEL)
    for ax, arm in zip(panels, arms_):
        s = sim[(sim.arm == arm) & (sim.basis == basis)]
        small, large = rank_pairs(study.values(arm))[0]
        for i, kind in enumerate(sorted(s.kind.dropna().unique())):
            color = plotting.ARM_COLORS[i % len(plotting.ARM_COLORS)]
            for what, ls, lab in ((PAIR, "-", f"r={small} vs r={large}"), (SEEDS, "--", f"r={large}, two seeds")):
                sel = s[(s.kind == kind) & (s.compares == what) & (s["small"] == (small if what == PAIR else large))]
                g = sel.groupby("layer").phi_1_1.agg(["mean", "min", "max"])
                if len(g):
                    ax.plot(g.index, g["mean"], ls=ls, marker="o", ms=3, color=color,
                            label=f"{KIND_TITLES.get(kind, kind)}: {lab}")
                    if what == PAIR:
                        ax.fill_between(g.index, g["min"], g["max"], color=color, alpha=0.12, lw=0)
        rnd = sim[(sim.arm == arm) & (sim.compares == RANDOM) & (sim["small"] == small)].phi_1_1.mean()
        ax.axhline(rnd, color=plotting.GUIDE_COLOR, ls=":", label="random subspaces")
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{arm_title(study.runs_frame(), arm)} per layer", fontsize=plotting.LABEL)
    axes[0][0].set_ylabel(f"φ(1, 1) from {basis}")
    axes[0][0].set_ylim(-0.03, 1.03)
    plotting.figure_legend(fig, panels or axes, ncol=3)
    return plotting.finish(fig, study)


def _fmt(r) -> str:
    return f"{r['mean']:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]"


def similarity_finding(pool: pd.DataFrame, title: str) -> str:
    if pool.empty:
        return f"Fewer than two {title} ranks: no subspace similarity is measured."
    basis = "A" if (pool.basis == "A").any() else "ΔW"
    parts = []
    for (small, large), g in pool[pool.compares == PAIR].groupby(["small", "large"], sort=False):
        a = g[g.basis == basis].iloc[0]
        seeds = pool[(pool.compares == SEEDS) & (pool.basis == basis) & (pool["small"] == large)]
        rnd = pool[(pool.compares == RANDOM) & (pool["small"] == small) & (pool["large"] == large)]
        dw = g[g.basis == "ΔW"]
        text = (f"{title} r = {small} vs r = {large}: φ(1, 1) from {basis} is {_fmt(a)} (mean over "
                f"{int(a.modules)} matrices and {int(a.seed_pairs)} seed(s), 95 % interval)")
        if len(seeds):
            text += f"; the same rank r = {large} trained twice (two seeds) shares {_fmt(seeds.iloc[0])}"
        if len(rnd):
            text += f"; two random subspaces {rnd.iloc[0]['mean']:.3f}"
        if basis == "A" and len(dw):
            text += f". On ΔW's right singular vectors instead (a different measure for i, j < r) it is {_fmt(dw.iloc[0])}"
        shares = a.ci_low > 0.5
        vs_seed = len(seeds) and a.ci_high < seeds.iloc[0].ci_low
        text += (". The two ranks " + ("share their top direction (φ(1, 1) > 0.5 with its whole interval), as Hu "
                                       "et al. report for r = 8 vs 64 on GPT-3"
                                       if shares else "do not clearly share their top direction (Hu et al. report "
                                       "φ(1, 1) > 0.5 for r = 8 vs 64 on GPT-3)")
                 + ("; less than two trainings of the same rank share, so the rank changes which direction comes first"
                    if vs_seed else "") + ".")
        parts.append(text)
    return " ".join(parts)


def _name(ctx: Context, arm: str, stem: str = "similarity") -> str:
    """The figure / formatted table of an arm: ``similarity`` for the first rank-swept arm, then ``similarity_<arm>``."""
    return stem if arm == ctx.study.arms("rank")[0] else f"{stem}_{arm}"


class Similarity(Measure):
    name = "similarity"
    tables = ("similarity", "similarity_pooled", "full_energy_in_lora")

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        sim = similarity_table(ctx.study)
        return {"similarity": sim, "similarity_pooled": pooled(sim) if not sim.empty else pd.DataFrame(),
                "full_energy_in_lora": reference_energy_table(ctx.study)}

    def figures(self, ctx: Context) -> Dict[str, object]:
        study, sim, out = ctx.study, ctx.table("similarity"), {}
        if sim.empty:
            return out
        for arm in study.arms("rank"):
            pairs = rank_pairs(study.values(arm))
            if not pairs or not (sim.arm == arm).any():
                continue
            basis = "A" if ((sim.arm == arm) & (sim.basis == "A")).any() else "ΔW"
            small, large = pairs[0]
            out[_name(ctx, arm)] = heatmaps(study, arm, basis, small, large, arm_title(ctx.table("runs"), arm))
        out["similarity_layers"] = per_layer(study, sim, ctx.table("similarity_pooled"))
        return out

    def sections(self, ctx: Context) -> List[Section]:
        pool, runs = ctx.table("similarity_pooled"), ctx.table("runs")
        sim = ctx.table("similarity")
        out = []
        for arm in ctx.study.arms("rank"):
            if not ctx.drew(_name(ctx, arm)):
                continue
            title = arm_title(runs, arm)
            s = sim[sim.arm == arm]
            basis = "A" if (s.basis == "A").any() else "ΔW"
            small, large = rank_pairs(ctx.study.values(arm))[0]
            seeds = seeds_phrase(s.seed_a.dropna())
            out.append(Section(f"Do {title} ranks share directions? Subspace similarity",
                               [similarity_finding(pool[pool.arm == arm] if not pool.empty else pool, title)],
                               figure=_name(ctx, arm), table=_name(ctx, arm),
                               caption=f"Whether the top-left corner of φ(i, j) (r = {small} against r = {large}) is "
                                       "brighter than the same rank trained twice and than two random subspaces; scope: "
                                       f"every adapted matrix ({basis} of its {title} adapters), mean over matrices and "
                                       f"{seeds}.",
                               table_caption="φ(1, 1) pooled over matrices and seeds, with 95 % intervals (bootstrap "
                                             "over seed pairs, then matrices)."))
        if ctx.drew("similarity_layers"):
            out.append(Section("Subspace similarity per layer", [
                "φ(1, 1) pooled with its interval (left), then per layer and adapted matrix kind: the smallest rank "
                "against the largest (solid, band: range over seeds), the largest rank trained at two seeds (dashed), "
                "and two random subspaces (dotted)."], figure="similarity_layers", level=3,
                caption="Whether φ(1, 1) between two ranks stands above the random level in every layer or only in "
                        f"some; scope: every adapted matrix, {seeds_phrase(sim.seed_a.dropna())}."))
        energy = ctx.table("full_energy_in_lora")
        if not energy.empty:
            out.append(Section("Full finetuning's update inside LoRA's subspace", [
                "The share of full finetuning's ‖ΔW‖_F² that lies in the column space (top r left singular vectors) "
                "and the row space of each rank-swept run's ΔW at the same seed, beside the share a random "
                "r-dimensional space holds (r / dimension). Well above random: the two methods move the same "
                "directions."], table="full_energy_in_lora", level=3,
                table_caption="Energy of full FT's ΔW inside each run's rank-r subspace (mean over its adapted matrices "
                              f"and {seeds_phrase(energy.seed)}), against a random subspace of the same size."))
        return out

    def formatted(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        pool = ctx.table("similarity_pooled")
        out = {}
        energy = ctx.table("full_energy_in_lora")
        if not energy.empty:
            runs = ctx.table("runs")
            rows = []
            for (arm, rank), g in energy.groupby(["arm", "rank"], sort=False):
                rows.append({"method": f"{arm_title(runs, arm)} r={int(rank)}", "matrices × seeds":
                             f"{int(g.modules.iloc[0])} × {g.seed.nunique()}",
                             "column space": f"{g.col.mean():.3f}", "row space": f"{g.row.mean():.3f}",
                             "both": f"{g.both.mean():.3f}", "random column / row space":
                             f"{g.random_col.mean():.3f} / {g.random_row.mean():.3f}",
                             "column space ÷ random": f"{g.col.mean() / g.random_col.mean():.1f}×"})
            out["full_energy_in_lora"] = pd.DataFrame(rows)
        if pool.empty:
            return out
        for arm in ctx.study.arms("rank"):
            p = pool[pool.arm == arm]
            if p.empty:
                continue
            out[_name(ctx, arm)] = pd.DataFrame([{
                "basis": r.basis, "compares": {PAIR: "ranks, same seed", SEEDS: "same rank, two seeds",
                                               RANDOM: "random subspaces"}[r.compares],
                "r": f"{int(r['small'])} vs {int(r['large'])}", "φ(1, 1) [95 %]": _fmt(r),
                "matrices × seed pairs": f"{int(r.modules)} × {int(r.seed_pairs)}"} for _, r in p.iterrows()])
        return out
