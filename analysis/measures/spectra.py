"""Is the finetuning update low-rank? Spectra of every saved ΔW: rank at 90 % / 99 % energy, effective and stable
rank and ‖ΔW‖_F / ‖W‖_F per run and module (table ``spectra``); normalised spectra, cumulative energy and a
layer × module map of the reference's rank at 90 % energy (figures); and whether full finetuning's ΔW needs
fewer directions than a random matrix of the same shape (finding)."""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
import torch

from lora_study.artifacts import module_kind, module_layer
from lora_study.linalg import singular_values

from .. import plotting
from ..loader import Run, Study, label_key
from ..plotting import KIND_TITLES
from ..roles import arm_title, arms, ordered_labels, references, run_columns, swept
from ..spectral import rank_at_energy, spectrum_row
from .base import Context, Measure, Section, per_run, seeds_phrase


def spectral_table(study: Study) -> pd.DataFrame:
    """One row per run and module: rank at 90 % / 99 % energy, effective and stable rank, ‖ΔW‖_F/‖W‖_F."""
    w_info: Dict[str, tuple] = {}

    def rows(r: Run) -> List[dict]:
        out = []
        for module, s in r.dir.spectra().items():
            if module not in w_info:
                W = study.base_weight(module)
                w_info[module] = (float(W.norm()), W.shape[0], W.shape[1])
            norm, d_out, d_in = w_info[module]
            row = spectrum_row(s)
            out.append({**run_columns(r), "module": module, "layer": module_layer(module), "kind": module_kind(module),
                        "d_out": d_out, "d_in": d_in, **row, "rel_norm": row["frob"] / norm if norm else float("nan"),
                        "random_rank90": _random_rank90((d_out, d_in))})
        return out

    return pd.DataFrame(per_run(study, [r for r in study.runs if r.saved.get("spectrum")], rows))


# -- figures --------------------------------------------------------------------------------------

def _series_runs(study: Study, seed: int = None) -> List[Run]:
    """The runs to draw: the reference first, then each swept arm by its value, at one seed (the first)."""
    seed = min(r.seed for r in study.runs) if seed is None else seed
    runs = [r for r in study.runs if r.seed == seed and r.saved.get("spectrum") and (r.is_reference or r.axis)]
    return sorted(runs, key=lambda r: (not r.is_reference, label_key(r)))


@lru_cache(maxsize=None)
def random_spectrum(shape: tuple) -> np.ndarray:
    """Singular values of a Gaussian random matrix of this shape (seeded): the spectrum of an update with no
    low-rank structure, for the reference curves."""
    g = torch.Generator().manual_seed(0)
    return singular_values(torch.randn(*shape, generator=g, dtype=torch.float64)).numpy()


def _styles(runs: List[Run]) -> Dict[str, dict]:
    """{member: line style}: the reference black, each swept arm's values on the sequence scale (solid for the
    first arm, then dashed, dotted, …)."""
    out, dashes = {}, ("-", "--", ":", "-.")
    arms_ = list(dict.fromkeys(r.arm for r in runs if r.axis))
    values = {a: plotting.rank_colors(r.value for r in runs if r.arm == a) for a in arms_}
    for r in runs:
        if r.is_reference:
            out[r.member] = {"color": plotting.REFERENCE_COLOR, "ls": "-", "lw": 1.0}
        else:
            out[r.member] = {"color": values[r.arm][r.value], "ls": dashes[arms_.index(r.arm) % len(dashes)], "lw": 1.1,
                             "marker": "o" if r.axis == "rank" else None, "ms": 3}
    return out


def _curve(s: np.ndarray, cumulative: bool) -> np.ndarray:
    if cumulative:
        return np.cumsum(s ** 2) / max(float((s ** 2).sum()), 1e-300)
    return s / max(float(s[0]), 1e-300)


@plotting.styled
def figure(study: Study, cumulative: bool = False, table: Optional[pd.DataFrame] = None):
    """Small multiples, one panel per module kind: each run's normalised singular values σ_i/σ_1 (log) or
    cumulative energy against the index i (log), one thin line per layer; a rank-r method's spectrum only to
    i ≤ r (beyond it ΔW = s·B·A has nothing but float noise); a Gaussian random matrix of the same shape as the
    reference curve of an update with no low-rank structure. ``table`` (the spectra table, computed if not given)
    says which runs and modules the analysis read, and their shapes."""
    table = spectral_table(study) if table is None else table
    shape_of = {(r.member, r.module): (int(r.d_out), int(r.d_in)) for r in table.itertuples()}
    runs = [r for r in _series_runs(study) if r.member in set(table.member)]
    spectra = {r.member: {m: s for m, s in r.dir.spectra().items() if (r.member, m) in shape_of} for r in runs}
    kinds = [k for k in KIND_TITLES if any(module_kind(m) == k for sp in spectra.values() for m in sp)]
    styles = _styles(runs)
    nrows, ncols = plotting.grid_shape(len(kinds))
    fig, axes = plotting.subplots(nrows, ncols, height=0.6 + 2.3 * nrows, sharex=False, sharey=True)
    low = 1.0
    for ax, kind in zip(axes.flat, kinds):
        shapes = set()
        for r in runs:
            first = True
            for module, s in spectra[r.member].items():
                if module_kind(module) != kind:
                    continue
                s = s.double().numpy()
                shapes.add(shape_of[(r.member, module)])
                if r.axis == "rank" and r.rank:
                    s = s[:r.rank]
                y = _curve(s, cumulative)
                if not cumulative and r.is_reference:
                    low = min(low, float(y[y > 0].min()))
                ax.plot(np.arange(1, len(y) + 1), y, alpha=0.8, label=r.label if first else None, **styles[r.member])
                first = False
        for shape in sorted(shapes):
            y = _curve(random_spectrum(shape), cumulative)
            if not cumulative:
                low = min(low, float(y.min()))
            ax.plot(np.arange(1, len(y) + 1), y, color=plotting.RANDOM_COLOR, ls=(0, (4, 2)), lw=1.3,
                    label="Gaussian random matrix, same shape")
        ax.set_xscale("log")
        if cumulative:
            ax.axhline(0.9, color=plotting.GUIDE_COLOR, ls=":", lw=0.8)
            ax.set_ylim(0, 1.02)
        else:
            ax.set_yscale("log")
        ax.set_title(KIND_TITLES[kind])
    if not cumulative and kinds:
        axes.flat[0].set_ylim(max(low * 0.7, 1e-6), 1.5)
    for ax in axes.flat[len(kinds):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("energy in top i: Σσ²(≤i) / Σσ²" if cumulative else "σ_i / σ_1")
    for j in range(ncols):
        col = [ax for ax in axes[:, j] if ax.get_visible()]
        if col:
            col[-1].set_xlabel("singular value index i")
    plotting.figure_legend(fig, axes, ncol=min(4, len(runs) + 1))
    return plotting.finish(fig, study)


@plotting.styled
def rank90_heatmap(study: Study, table: pd.DataFrame, member: str):
    """Rank at 90 % energy of ΔW per layer × module for one run."""
    t = table[table.member == member]
    kinds = [k for k in KIND_TITLES if k in set(t.kind)]
    layers = sorted(set(t.layer))
    grid = np.full((len(layers), len(kinds)), np.nan)
    for _, row in t.iterrows():
        grid[layers.index(row.layer), kinds.index(row.kind)] = row.rank90
    fig, axes = plotting.subplots(width=1.9 + 0.95 * len(kinds), height=1.5 + 0.34 * len(layers))
    ax = axes[0, 0]
    im = ax.imshow(grid, cmap="magma", aspect="auto", vmin=0)
    for i in range(len(layers)):
        for j in range(len(kinds)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{int(grid[i, j])}", ha="center", va="center", fontsize=plotting.ANNOTATION,
                        color="white" if grid[i, j] < np.nanmax(grid) * 0.6 else "black")
    ax.set_xticks(range(len(kinds)), [KIND_TITLES[k] for k in kinds], rotation=30, ha="right")
    ax.set_yticks(range(len(layers)), [f"layer {l}" for l in layers])
    fig.colorbar(im, ax=ax, label="rank at 90 % energy")
    ax.set_title(f"Rank at 90 % energy of ΔW, {study.run(member).label}")
    return plotting.finish(fig, study)


@plotting.styled
def update_size(study: Study, table: pd.DataFrame):
    """‖ΔW‖_F / ‖W‖_F per layer, one panel per module kind, one line per method (mean over seeds, the band their
    range); log scale."""
    t = table[table.reference.astype(bool) | table.axis.notna()]
    kinds = [k for k in KIND_TITLES if k in set(t.kind)]
    nrows, ncols = plotting.grid_shape(len(kinds))
    fig, axes = plotting.subplots(nrows, ncols, height=0.6 + 2.2 * nrows, sharex=True, sharey=True)
    arms_ = [a for a in dict.fromkeys(t[t.axis.notna()].arm)]
    colors = {a: plotting.rank_colors(t[t.arm == a]["value"]) for a in arms_}
    dashes = ("-", "--", ":", "-.")
    for ax, kind in zip(axes.flat, kinds):
        k = t[t.kind == kind]
        for label in ordered_labels(k):
            g = k[k.label == label].groupby("layer").rel_norm.agg(["mean", "min", "max"]).sort_index()
            first = k[k.label == label].iloc[0]
            if first.reference:
                color, ls = plotting.REFERENCE_COLOR, "-"
            else:
                color, ls = colors[first.arm][first["value"]], dashes[arms_.index(first.arm) % len(dashes)]
            ax.plot(g.index, g["mean"], color=color, ls=ls, marker="o", ms=3, lw=1.2, label=label)
            ax.fill_between(g.index, g["min"], g["max"], color=color, alpha=0.15, lw=0)
        ax.set_yscale("log")
        ax.set_title(KIND_TITLES[kind])
        ax.set_xticks(sorted(set(t.layer)))
    for ax in axes.flat[len(kinds):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("‖ΔW‖_F / ‖W‖_F")
    for j in range(ncols):
        col = [ax for ax in axes[:, j] if ax.get_visible()]
        if col:
            col[-1].set_xlabel("layer")
    plotting.figure_legend(fig, axes, ncol=min(5, t.label.nunique()))
    return plotting.finish(fig, study)


# -- finding --------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _random_rank90(shape: tuple) -> int:
    """Rank at 90 % energy of a Gaussian random matrix of this shape: what 'no low-rank structure' gives."""
    return rank_at_energy(torch.from_numpy(random_spectrum(shape)), 0.9)


def energy_finding(spectra: pd.DataFrame) -> str:
    full = references(spectra)
    if full.empty:
        return "No full finetune with saved spectra: the concentration of full finetuning's ΔW is not measured here."
    full = full.assign(dim=full[["d_out", "d_in"]].min(axis=1))
    med = full.rank90.median()
    rnd: dict = {}
    ratios = []
    for _, r in full.iterrows():  # against a random matrix of each module's own shape
        shape = (int(r.d_out), int(r.d_in))
        if shape not in rnd:
            rnd[shape] = _random_rank90(shape)
        ratios.append(r.rank90 / rnd[shape])
    ratio = float(np.median(ratios))
    eff = full.effective_rank.median()
    # the measurement only: the verdict on it is the high_rank claim's (analysis.measures.verdicts), stated after it
    text = (f"Full finetuning's ΔW needs a median of {med:.0f} directions for 90 % of its energy "
            f"(median effective rank {eff:.1f}; the spectra table has both per matrix type); a Gaussian random "
            f"matrix of the same shape needs {1 / ratio:.1f}× as many (median ratio {ratio:.2f}).")
    for arm in arms(spectra, "rank"):
        per_rank = swept(spectra, "rank", arm).groupby("value").rank90.median()
        text += (f" {arm_title(spectra, arm)}'s ΔW, rank-r by construction, reaches 90 % energy at a median of "
                 + ", ".join(f"{int(v)} (r={int(k)})" for k, v in per_rank.items()) + " directions.")
    return text


def summary_table(spectra: pd.DataFrame) -> pd.DataFrame:
    """Per method and module kind (and over all its matrices, the pooled medians the finding quotes): the median over layers and seeds of rank at 90 % energy, effective and stable
    rank, ‖ΔW‖_F/‖W‖_F, and a random matrix's rank at 90 % beside them."""
    if spectra.empty:
        return pd.DataFrame()
    rows = []
    for label in ordered_labels(spectra):
        g = spectra[spectra.label == label]
        kinds = [k for k in KIND_TITLES if k in set(g.kind)]
        for kind in kinds + (["all"] if len(kinds) > 1 else []):
            k = g if kind == "all" else g[g.kind == kind]
            rows.append({"method": label, "matrix": KIND_TITLES.get(kind, "all matrices"), "matrices × seeds": f"{k.module.nunique()} × "
                         f"{k.seed.nunique()}", "rank@90 %": f"{k.rank90.median():.0f}",
                         "random rank@90 %": f"{k.random_rank90.median():.0f}",
                         "effective rank": f"{k.effective_rank.median():.1f}",
                         "stable rank": f"{k.stable_rank.median():.2f}", "‖ΔW‖/‖W‖": f"{k.rel_norm.median():.3g}"})
    return pd.DataFrame(rows)


class Spectra(Measure):
    name = "spectra"
    tables = ("spectra",)

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        return {"spectra": spectral_table(ctx.study)}

    def figures(self, ctx: Context) -> Dict[str, object]:
        table = ctx.table("spectra")
        if table.empty:
            return {}
        refs = references(table)
        target = refs.member.iloc[0] if not refs.empty else table.member.iloc[0]
        out = {"spectra": figure(ctx.study, table=table), "cumulative_energy": figure(ctx.study, True, table),
               "rank90_heatmap": rank90_heatmap(ctx.study, table, target)}
        if (table.reference.astype(bool) | table.axis.notna()).any():
            out["update_size"] = update_size(ctx.study, table)
        return out

    def sections(self, ctx: Context) -> List[Section]:
        if not ctx.drew("spectra"):
            return []
        table = ctx.table("spectra")
        first = seeds_phrase([min(table.seed)])
        every = seeds_phrase(table.seed)
        scope = "every saved ΔW (full FT: every block linear; a rank-r method: its target matrices)"
        refs = references(table)
        who = refs.label.iloc[0] if not refs.empty else table.label.iloc[0]
        out = [Section("Is the update low-rank? Spectra of ΔW", [energy_finding(table), *ctx.sentences("high_rank")],
                       figure="spectra",
                       caption=f"Where full FT's normalised singular values fall, against the Gaussian random "
                               f"matrix of the same shape (red, dashed) and each LoRA rank (drawn to i ≤ r); scope: "
                               f"{scope}, one line per layer, {first}.",
                       table="spectra", table_caption=f"Medians over layers and {every} per method and matrix kind; "
                                                      "'random' is a Gaussian matrix of the same shape."),
               Section("Cumulative energy", [
                   "Cumulative energy Σ_{i≤k} σ_i² / Σ σ_i² of each ΔW; the dotted line marks 90 %. A curve that "
                   "rises as slowly as the random matrix's has no low-rank structure in its energy."],
                   figure="cumulative_energy", level=3,
                   caption=f"How many directions each ΔW needs for 90 % of its energy (where a curve crosses the dotted "
                           f"line), against a random matrix (red, dashed); scope: {scope}, one line per layer, {first}."),
               Section("Rank at 90 % energy, layer × module", [
                   f"Rank at 90 % energy of each ΔW of {who} (or the first run with saved spectra)."],
                   figure="rank90_heatmap", level=3,
                   caption=f"Which layers and matrices of {who} need the most directions; scope: every "
                           f"saved ΔW of that run, {first}.")]
        if ctx.drew("update_size"):
            out.append(Section("Relative update size per layer", [
                "‖ΔW‖_F / ‖W‖_F per layer and method: how far finetuning moved each matrix. A larger update rotates "
                "more singular vectors whatever its rank, so read the intruder counts below beside it."],
                figure="update_size", level=3,
                caption=f"How large each method's update is relative to the pretrained matrix, layer by layer; scope: "
                        f"{scope}, mean over {every} (band: their range)."))
        return out

    def formatted(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        t = summary_table(ctx.table("spectra"))
        return {"spectra": t} if not t.empty else {}
