"""Is the finetuning update low-rank? Spectra of every saved ΔW: rank at 90 % / 99 % energy, effective and stable
rank and ‖ΔW‖_F / ‖W‖_F per run and module (table ``spectra``); normalised spectra, cumulative energy and a
layer × module map of the reference's rank at 90 % energy (figures); and whether full finetuning's ΔW needs
fewer directions than a random matrix of the same shape (finding)."""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, List

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from lora_study.linalg import singular_values
from lora_study.models.structure import module_kind, module_layer

from .. import plotting
from ..loader import Run, Study, label_key
from ..plotting import KIND_TITLES
from ..roles import arm_title, arms, references, run_columns, swept
from ..spectral import rank_at_energy, spectrum_row
from .base import Context, Measure, Section, per_run


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
    """The runs to draw, one line colour each: the reference first, then by swept value (first seed)."""
    seed = min(r.seed for r in study.runs) if seed is None else seed
    runs = [r for r in study.runs if r.seed == seed and r.saved.get("spectrum")]
    return sorted(runs, key=lambda r: (not r.is_reference, r.rank or 0, r.d or 0, label_key(r)))


def figure(study: Study, cumulative: bool = False):
    """Normalised singular values σ_i/σ_1 (log scale) or cumulative energy, per module kind; colour = run (the
    reference in black, then each swept run), one thin line per layer."""
    runs = _series_runs(study)
    kinds = [k for k in KIND_TITLES if any(module_kind(m) == k for r in runs for m in r.dir.spectra())]
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(3.2 * max(len(kinds), 1), 3.3), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for i, r in enumerate(runs):
            color = plotting.REFERENCE_COLOR if r.is_reference else plotting.sequence_color(i, len(runs))
            first = True
            for module, s in r.dir.spectra().items():
                if module_kind(module) != kind:
                    continue
                s = s.double().numpy()
                if cumulative:
                    y = np.cumsum(s ** 2) / max((s ** 2).sum(), 1e-30)
                else:
                    y = s / max(s[0], 1e-30)
                    y = y[y > 1e-12]
                ax.plot(np.arange(1, len(y) + 1), y, color=color, lw=0.8, alpha=0.75, label=r.label if first else None)
                first = False
        ax.set_xscale("log")
        if cumulative:
            ax.axhline(0.9, color=plotting.GUIDE_COLOR, ls=":", lw=0.8)
            ax.set_ylabel("cumulative energy Σσ²(≤i)/Σσ²")
        else:
            ax.set_yscale("log")
            ax.set_ylabel("σ_i / σ_1")
        ax.set_xlabel("singular value index i")
        ax.set_title(KIND_TITLES[kind])
    if kinds:
        axes[0][-1].legend(fontsize=plotting.LEGEND, loc="best")
    fig.suptitle("Cumulative energy of ΔW's spectrum" if cumulative else "Normalised spectra of ΔW (one line per layer)")
    return plotting.finish(fig, study, bottom=0.04)


def rank90_heatmap(study: Study, table: pd.DataFrame, member: str):
    """Rank at 90 % energy of ΔW per layer × module for one run."""
    t = table[table.member == member]
    kinds = [k for k in KIND_TITLES if k in set(t.kind)]
    layers = sorted(set(t.layer))
    grid = np.full((len(layers), len(kinds)), np.nan)
    for _, row in t.iterrows():
        grid[layers.index(row.layer), kinds.index(row.kind)] = row.rank90
    fig, ax = plt.subplots(figsize=(1.0 + 1.1 * len(kinds), 1.2 + 0.45 * len(layers)))
    im = ax.imshow(grid, cmap="magma", aspect="auto")
    for i in range(len(layers)):
        for j in range(len(kinds)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{int(grid[i, j])}", ha="center", va="center", fontsize=plotting.TICKS,
                        color="white" if grid[i, j] < np.nanmax(grid) * 0.6 else "black")
    ax.set_xticks(range(len(kinds)), [KIND_TITLES[k] for k in kinds], rotation=30, ha="right", fontsize=plotting.TICKS)
    ax.set_yticks(range(len(layers)), [f"layer {l}" for l in layers], fontsize=plotting.TICKS)
    fig.colorbar(im, ax=ax, label="rank at 90 % energy")
    ax.set_title(f"Rank at 90 % energy of ΔW, {study.run(member).label}")
    return plotting.finish(fig, study)


# -- finding --------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _random_rank90(shape: tuple) -> int:
    """Rank at 90 % energy of a Gaussian random matrix of this shape: what 'no low-rank structure' gives."""
    g = torch.Generator().manual_seed(0)
    return rank_at_energy(singular_values(torch.randn(*shape, generator=g, dtype=torch.float64)), 0.9)


def energy_finding(spectra: pd.DataFrame) -> str:
    full = references(spectra)
    if full.empty:
        return "No full finetune with saved spectra: the concentration of full finetuning's ΔW is not measured here."
    full = full.assign(dim=full[["d_out", "d_in"]].min(axis=1))
    med = full.rank90.median()
    frac = (full.rank90 / full.dim).median()
    rnd: dict = {}
    ratios = []
    for _, r in full.iterrows():  # against a random matrix of each module's own shape
        shape = (int(r.d_out), int(r.d_in))
        if shape not in rnd:
            rnd[shape] = _random_rank90(shape)
        ratios.append(r.rank90 / rnd[shape])
    ratio = float(np.median(ratios))
    eff = full.effective_rank.median()
    verdict = ("supports" if ratio <= 0.25 else "only partly supports" if ratio < 0.75 else "does not support")
    text = (f"Full finetuning's ΔW needs a median of {med:.0f} directions for 90 % of its energy "
            f"({100 * frac:.1f} % of the matrix dimension; median effective rank {eff:.1f}); a Gaussian random "
            f"matrix of the same shape needs {1 / ratio:.1f}× as many (median ratio {ratio:.2f}). "
            f"This {verdict} the claim that the finetuning update concentrates its energy in a few directions "
            f"(thresholds: ratio ≤ 0.25 supports, < 0.75 partly).")
    for arm in arms(spectra, "rank"):
        per_rank = swept(spectra, "rank", arm).groupby("value").rank90.median()
        text += (f" {arm_title(spectra, arm)}'s ΔW, rank-r by construction, reaches 90 % energy at a median of "
                 + ", ".join(f"{int(v)} (r={int(k)})" for k, v in per_rank.items()) + " directions.")
    return text


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
        return {"spectra": figure(ctx.study), "cumulative_energy": figure(ctx.study, cumulative=True),
                "rank90_heatmap": rank90_heatmap(ctx.study, table, target)}

    def sections(self, ctx: Context) -> List[Section]:
        if not ctx.drew("spectra"):
            return []
        return [Section("Spectra of ΔW", [energy_finding(ctx.table("spectra"))], figure="spectra"),
                Section("Cumulative energy", ["Cumulative energy Σ_{i≤k} σ_i² / Σ σ_i² of each ΔW; the dotted line "
                                              "marks 90 %."], figure="cumulative_energy"),
                Section("Rank at 90 % energy, layer × module", [
                    "Rank at 90 % energy of each ΔW of the full finetune (or the first run with saved spectra)."],
                    figure="rank90_heatmap")]
