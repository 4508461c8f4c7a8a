"""Figure styling shared by every measure, in one place: the width a figure may take, font sizes, colours (the
reference run in black, a sequence of runs or ranks on one colour scale), the study line under each figure, and
``save`` (PNG and PDF, byte for byte the same on every run).

Sizes are chosen for the report. Its HTML column is ``HTML_COLUMN_PX`` CSS px wide; a figure is at most
``MAX_WIDTH_IN`` inches wide, so its PNG (``DPI``) fits the column and is shown at its natural size, where a font of
s pt reads as s · DPI / 96 CSS pt: the smallest font here, ``SMALL`` (7 pt), reads as 9.5 pt. A figure is drawn
with ``subplots`` (constrained layout, width capped, the study line reserved at the bottom) inside ``styled``
(the font sizes as matplotlib's rcParams), so every text gets its size without each call spelling it out."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import matplotlib
import matplotlib.pyplot as plt  # headless, matplotlib falls back to Agg by itself; notebooks keep inline
import numpy as np

KIND_TITLES = {"query": "W_q", "key": "W_k", "value": "W_v", "attn_out": "W_o (attention out)",
               "ffn_in": "FFN in", "ffn_gate": "FFN gate", "ffn_out": "FFN out"}

DPI = 130
HTML_COLUMN_PX = 1100  # the report's content column (report.html's CSS uses it)
MAX_WIDTH_IN = 8.0  # 1040 px at DPI, plus the save padding: inside the column, so shown at natural size
SAVE_PAD_IN = 0.05

# font sizes (points at the figure's size); shown at natural size each reads as size · 130 / 96 CSS pt
TITLE = 10
LABEL = 9  # axis labels
TICKS = 8  # tick labels
LEGEND = 8
ANNOTATION = 7.5  # labels next to points or lines, numbers in heatmap cells
CAPTION = 7  # the study line under each figure
SMALL = 7  # the smallest text any figure uses

CAPTION_COLOR = "0.35"
REFERENCE_COLOR = "black"  # full finetuning (and the frozen base, dashed) wherever they appear
BASE_COLOR = "0.45"  # the frozen base where it is a point of its own
GUIDE_COLOR = "0.5"  # zero lines and the 90 % marks
RANDOM_COLOR = "tab:red"  # random-matrix references
SEQUENCE_CMAP = "viridis"  # runs in table order, and the rank colour scale
ARM_COLORS = ("tab:blue", "tab:purple", "tab:brown", "tab:olive", "tab:cyan")  # one per rank-swept arm
ARM_MARKERS = ("o", "D", "v", "P", "X")

RC = {"font.size": LABEL, "axes.titlesize": TITLE, "axes.labelsize": LABEL, "xtick.labelsize": TICKS,
      "ytick.labelsize": TICKS, "legend.fontsize": LEGEND, "legend.title_fontsize": LEGEND,
      "figure.titlesize": TITLE + 1, "figure.dpi": DPI, "savefig.dpi": DPI, "pdf.fonttype": 42,
      "axes.titlepad": 4.0, "legend.framealpha": 0.9}

# fixed metadata: no creation date in the PDF, no version string in either, so two saves are identical
PNG_METADATA = {"Software": "lora-study"}
PDF_METADATA = {"Creator": "lora-study", "Producer": "lora-study", "CreationDate": None}


def styled(fn):
    """Draw the figure ``fn`` returns with the report's font sizes (``RC``); tick labels, made lazily at draw time,
    keep them after the function returns."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(RC):
            fig = fn(*args, **kwargs)
            if fig is not None:
                for ax in fig.axes:
                    ax.tick_params(which="both", labelsize=TICKS)
            interactive = matplotlib.is_interactive()
        # a backend resolved inside (IPython's inline, on a notebook's first figure) turns interactive mode on, which
        # the context would undo on exit, and the notebook would show no figure after this one: keep it
        matplotlib.interactive(interactive)
        return fig
    return wrapper


def subplots(nrows: int = 1, ncols: int = 1, width: float = MAX_WIDTH_IN, height: float = 3.4,
             caption: bool = True, **kwargs):
    """``plt.subplots`` with constrained layout, at most ``MAX_WIDTH_IN`` wide, ``squeeze=False`` unless given, and
    (``caption``) a strip at the bottom kept free for the study line ``finish`` writes."""
    kwargs.setdefault("squeeze", False)
    width = min(width, MAX_WIDTH_IN)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", dpi=DPI, **kwargs)
    if caption:
        strip = 0.24 / height  # one line of CAPTION-size text and a gap, as a fraction of the height
        fig.get_layout_engine().set(rect=(0, strip, 1, 1 - strip), h_pad=0.04, w_pad=0.04)  # (left, bottom, w, h)
    return fig, axes


def grid_shape(n: int, max_cols: int = 3) -> tuple:
    """(rows, columns) of a grid of small multiples for n panels, at most ``max_cols`` wide."""
    cols = min(max(n, 1), max_cols)
    return -(-max(n, 1) // cols), cols


def sequence_color(i: int, n: int):
    """The i-th of n colours on the sequence scale (viridis, dark to light, stopping short of its pale yellow)."""
    return plt.get_cmap(SEQUENCE_CMAP)(0.88 * i / max(n - 1, 1))


def rank_colors(ranks: Iterable) -> Dict:
    """{rank: colour}: the distinct ranks, smallest to largest, spread over the sequence scale."""
    ranks = sorted(set(ranks))
    return {r: sequence_color(i, len(ranks)) for i, r in enumerate(ranks)}


def arm_style(i: int) -> dict:
    """Colour and marker of the i-th rank-swept arm (LoRA first) in line plots."""
    return {"color": ARM_COLORS[i % len(ARM_COLORS)], "marker": ARM_MARKERS[i % len(ARM_MARKERS)]}


def caption(fig, study) -> None:
    """The study line (model, task, budget, seeds) at the bottom of the figure."""
    fig.text(0.5, 0.004, study.caption(), ha="center", va="bottom", fontsize=CAPTION, color=CAPTION_COLOR)


def finish(fig, study, bottom: Optional[float] = None):
    """Caption the figure with the study. ``bottom`` is accepted for older callers and ignored: the constrained
    layout of ``subplots`` keeps the strip free."""
    caption(fig, study)
    return fig


def errorbar(ax, x, mean, low, high, **kwargs):
    """``ax.errorbar`` from an interval's ends (NaN ends draw no bar)."""
    mean, low, high = (np.asarray(v, dtype=float) for v in (mean, low, high))
    yerr = np.vstack([np.nan_to_num(mean - low), np.nan_to_num(high - mean)]).clip(min=0)
    kwargs.setdefault("capsize", 3)
    return ax.errorbar(x, mean, yerr=yerr, **kwargs)


def figure_legend(fig, axes, ncol: Optional[int] = None, **kwargs):
    """One legend for the whole figure, above the panels (every distinct label of ``axes`` once); the bottom strip
    stays the study line's."""
    handles, labels = [], []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels and not lab.startswith("_"):
                handles.append(h)
                labels.append(lab)
    if not handles:
        return None
    # as many columns as fit the figure's width (a legend wider than the figure would be cut off)
    column_in = (0.56 * LEGEND * max(len(lab) for lab in labels) + 3.5 * LEGEND) / 72
    fits = max(1, int(fig.get_figwidth() // column_in))
    return fig.legend(handles, labels, loc="outside upper center", ncol=min(ncol or 3, len(labels), fits),
                      fontsize=LEGEND, frameon=False, **kwargs)


def freeze_layout(fig, digits: int = 6) -> None:
    """Run the figure's layout engine once, round every axes' position to ``digits`` decimals of the figure and turn
    the engine off. The constrained-layout solver's last bits vary from one process to the next (its sums run in
    hash order), which the PDF, writing coordinates to 10 decimals, would show as a changed file."""
    if fig.get_layout_engine() is None:
        return
    fig.draw_without_rendering()
    for ax in fig.axes:
        ax.set_position([round(v, digits) for v in ax.get_position().bounds])
    fig.set_layout_engine("none")


def save(fig, out_dir: Path, name: str) -> List[Path]:
    """Write ``name``.png and ``name``.pdf under ``out_dir`` and close the figure; two saves of one figure, in one
    process or two, are byte for byte the same (fixed metadata, no dates, the layout rounded)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    freeze_layout(fig)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for p, meta in zip(paths, (PNG_METADATA, PDF_METADATA)):
        with matplotlib.rc_context({"svg.hashsalt": "lora-study"}):
            fig.savefig(p, dpi=DPI, bbox_inches="tight", pad_inches=SAVE_PAD_IN, metadata=meta)
    plt.close(fig)
    return paths
