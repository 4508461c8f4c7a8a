"""Figure styling shared by every measure, in one place: titles of the module kinds, font sizes, the colours
(the reference run in black, a sequence of runs or ranks on one colour scale), the caption line naming the
study's model, task and budget, and ``save`` (PNG and PDF). Each figure is readable on its own: title, axes with
units, legend, caption."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List

import matplotlib.pyplot as plt  # headless, matplotlib falls back to Agg by itself; notebooks keep inline

KIND_TITLES = {"query": "W_q", "key": "W_k", "value": "W_v", "attn_out": "W_o (attention out)",
               "ffn_in": "FFN in", "ffn_gate": "FFN gate", "ffn_out": "FFN out"}

# font sizes (points); a figure is at most ~8 in wide, so its PNG (DPI 130) is shown at its natural size in the
# report and 7 pt there reads as 9.5 pt on screen
TITLE = 9
CAPTION = 7  # the study line under each figure, and notes beside it
TICKS = 7  # tick labels and numbers written in heatmap cells
LEGEND = 7
ANNOTATION = 7  # labels written next to points or lines

CAPTION_COLOR = "0.35"
REFERENCE_COLOR = "black"  # full finetuning (and the frozen base, dashed) wherever they appear
GUIDE_COLOR = "0.5"  # zero lines and the 90 % marks
SEQUENCE_CMAP = "viridis"  # runs in table order, and the rank colour scale
ARM_COLORS = ("tab:blue", "tab:purple", "tab:brown", "tab:olive", "tab:cyan")  # one per rank-swept arm
ARM_MARKERS = ("o", "D", "v", "P", "X")
DPI = 130


def sequence_color(i: int, n: int):
    """The i-th of n colours on the sequence scale (viridis, dark to light)."""
    return plt.get_cmap(SEQUENCE_CMAP)(i / max(n - 1, 1))


def rank_colors(ranks: Iterable) -> Dict:
    """{rank: colour}: the distinct ranks, smallest to largest, spread over the sequence scale."""
    ranks = sorted(set(ranks))
    return {r: sequence_color(i, len(ranks)) for i, r in enumerate(ranks)}


def arm_style(i: int) -> dict:
    """Colour and marker of the i-th rank-swept arm (LoRA first) in line plots."""
    return {"color": ARM_COLORS[i % len(ARM_COLORS)], "marker": ARM_MARKERS[i % len(ARM_MARKERS)]}


def caption(fig, study) -> None:
    fig.text(0.5, 0.005, study.caption(), ha="center", va="bottom", fontsize=CAPTION, color=CAPTION_COLOR)


def finish(fig, study, bottom: float = 0.05):
    """Caption the figure with the study and lay it out above the caption."""
    caption(fig, study)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return fig


def save(fig, out_dir: Path, name: str) -> List[Path]:
    """Write ``name``.png and ``name``.pdf under ``out_dir`` and close the figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return paths
