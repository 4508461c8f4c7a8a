"""Figures of a study, each readable on its own: title, axes with units, legend, and the study's model,
task and budget in the caption line. Every function returns a matplotlib Figure; ``save`` writes PNG and PDF."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import matplotlib.pyplot as plt  # headless, matplotlib falls back to Agg by itself; notebooks keep inline
import numpy as np
import pandas as pd

from lora_study.artifacts import module_kind

from .study import Study

KIND_TITLES = {"query": "W_q", "key": "W_k", "value": "W_v", "attn_out": "W_o (attention out)",
               "ffn_in": "FFN in", "ffn_gate": "FFN gate", "ffn_out": "FFN out"}


def _caption(fig, study: Study) -> None:
    fig.text(0.5, 0.005, study.caption(), ha="center", va="bottom", fontsize=7, color="0.35")


def save(fig, out_dir: Path, name: str) -> List[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return paths


def _series_runs(study: Study, seed: int = None):
    """The runs to draw, one per method/rank: full FT and each LoRA rank (first seed)."""
    seed = min(r.seed for r in study.runs) if seed is None else seed
    runs = [r for r in study.runs if r.seed == seed and r.summary.get("saved", {}).get("spectrum")]
    return sorted(runs, key=lambda r: (r.method != "full", r.rank or 0, r.d or 0))


def spectra(study: Study, cumulative: bool = False):
    """Normalised singular values σ_i/σ_1 (log scale) or cumulative energy, per module kind; colour =
    run (full FT and each LoRA rank), one thin line per layer."""
    runs = _series_runs(study)
    kinds = [k for k in KIND_TITLES if any(module_kind(m) == k for r in runs for m in r.dir.spectra())]
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(3.2 * max(len(kinds), 1), 3.3), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, kind in zip(axes[0], kinds):
        for i, r in enumerate(runs):
            color = "black" if r.method == "full" else cmap(i / max(len(runs) - 1, 1))
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
            ax.axhline(0.9, color="0.5", ls=":", lw=0.8)
            ax.set_ylabel("cumulative energy Σσ²(≤i)/Σσ²")
        else:
            ax.set_yscale("log")
            ax.set_ylabel("σ_i / σ_1")
        ax.set_xlabel("singular value index i")
        ax.set_title(KIND_TITLES[kind])
    if kinds:
        axes[0][-1].legend(fontsize=6, loc="best")
    fig.suptitle("Cumulative energy of ΔW's spectrum" if cumulative else "Normalised spectra of ΔW (one line per layer)")
    _caption(fig, study)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


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
                ax.text(j, i, f"{int(grid[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if grid[i, j] < np.nanmax(grid) * 0.6 else "black")
    ax.set_xticks(range(len(kinds)), [KIND_TITLES[k] for k in kinds], rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(len(layers)), [f"layer {l}" for l in layers], fontsize=7)
    fig.colorbar(im, ax=ax, label="rank at 90 % energy")
    label = study.run(member).label
    ax.set_title(f"Rank at 90 % energy of ΔW, {label}")
    _caption(fig, study)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def similarity_heatmaps(study: Study, grids: Dict[str, np.ndarray], small: int, large: int):
    """φ(A_r=small, A_r=large, i, j) per module kind beside the random Gaussian control (Hu et al., Fig. 3)."""
    names = [k for k in grids if k != "random"] + (["random"] if "random" in grids else [])
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        g = grids[name]
        im = ax.imshow(g, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="upper",
                       extent=(0.5, g.shape[1] + 0.5, g.shape[0] + 0.5, 0.5))
        ax.set_xlabel(f"j (top-j directions, r={large})")
        ax.set_ylabel(f"i (top-i directions, r={small})")
        ax.set_title("random Gaussian control" if name == "random" else f"ΔW {KIND_TITLES.get(name, name)}, layer mean")
    fig.colorbar(im, ax=axes[0].tolist(), label="φ(i, j)", shrink=0.85)
    fig.suptitle(f"Subspace similarity of LoRA r={small} and r={large}")
    _caption(fig, study)
    return fig


def intruders(study: Study, table: pd.DataFrame):
    """Intruder dimensions (top-10 singular vectors of W_ft with max |cos| < ε to all of W_pre's) vs ε."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    cmap = plt.get_cmap("viridis")
    labels = sorted(set(zip(table.method, table["rank"].fillna(0), table.label)), key=lambda x: (x[0] != "full", x[1]))
    for i, (method, _, label) in enumerate(labels):
        t = table[table.label == label].groupby("eps").intruders.agg(["mean", "std"]).reset_index()
        color = "black" if method == "full" else cmap(i / max(len(labels) - 1, 1))
        ax.errorbar(t.eps, t["mean"], yerr=t["std"].fillna(0), color=color, marker="o", ms=3, lw=1, label=label)
    ax.set_xlabel("ε (cosine threshold)")
    ax.set_ylabel("intruder dimensions (sum over modules)")
    ax.set_title("Intruder dimensions among the top-10 singular vectors")
    ax.legend(fontsize=6)
    _caption(fig, study)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def truncation(study: Study, trunc: pd.DataFrame, runs: pd.DataFrame):
    """Test accuracy: full FT truncated to rank k, LoRA trained at rank k, full FT and the frozen base."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    if not trunc.empty:
        t = trunc.groupby("k").truncated_full_accuracy.agg(["mean", "std"]).reset_index()
        ax.errorbar(t.k, t["mean"], yerr=t["std"].fillna(0), marker="s", ms=3, color="tab:red",
                    label="full FT, ΔW truncated to rank k")
    lora = runs[runs.method == "lora"].groupby("rank").test_accuracy.agg(["mean", "std"]).reset_index()
    if not lora.empty:
        ax.errorbar(lora["rank"], lora["mean"], yerr=lora["std"].fillna(0), marker="o", ms=3, color="tab:blue",
                    label="LoRA trained at rank r")
    for method, style, name in (("full", "-", "full FT"), ("none", "--", "frozen base (head only)")):
        acc = runs[runs.method == method].test_accuracy
        if len(acc):
            ax.axhline(acc.mean(), color="black", ls=style, lw=1, label=f"{name} ({acc.mean():.3f})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rank k (log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Does the finetuning update live in a few directions?")
    ax.legend(fontsize=6)
    _caption(fig, study)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig
