"""Every figure the measures draw on the tiny study reads where the report shows it: no two texts overlap (their
rendered boxes, as tests/figure_layout.py measures them), no text leaves the canvas, the PNG fits the HTML column
(so it is shown at its natural width), and the smallest text is >= 9 pt at that width."""
import io
import struct

import matplotlib
import matplotlib.pyplot as plt
import pytest

from lora_study.analysis import load_study, plotting
from lora_study.analysis.measures import MEASURES, Context
from figure_layout import min_font_pt, text_overlaps, texts_outside

MIN_PT = 9.0


@pytest.fixture(scope="module")
def figures(reported):
    """{name: figure} of every measure, drawn again from the reported study (which has learning-rate evidence and
    probes at two checkpoints, so every view is drawn)."""
    matplotlib.use("Agg")
    ctx = Context(load_study(reported))
    out = {}
    for m in MEASURES:
        out.update(m.figures(ctx))
    yield out
    plt.close("all")


def png_width(fig) -> int:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=plotting.DPI, bbox_inches="tight", pad_inches=plotting.SAVE_PAD_IN)
    return struct.unpack(">I", buf.getvalue()[16:20])[0]


def test_every_view_is_drawn(figures):
    assert {"choose_rank", "reach", "lr_heatmap", "truncation", "spectra", "cumulative_energy", "rank90_heatmap",
            "update_size", "similarity", "similarity_layers", "intruders", "forgetting_vs_rank", "pareto",
            "training_length"} <= set(figures)


def test_no_text_overlaps_or_leaves_the_canvas(figures):
    problems = {}
    for name, fig in figures.items():
        fig.set_dpi(plotting.DPI)
        overlaps, outside = text_overlaps(fig), texts_outside(fig)
        if overlaps or outside:
            problems[name] = {"overlaps": overlaps[:5], "outside": outside[:5]}
    assert problems == {}


def test_text_is_at_least_9_pt_at_the_width_the_html_shows_it(figures):
    small = {}
    for name, fig in figures.items():
        fig.set_dpi(plotting.DPI)
        natural = png_width(fig)
        assert natural <= plotting.HTML_COLUMN_PX, (name, natural)  # shown at its natural width, never shrunk
        pt = min_font_pt(fig, min(natural, plotting.HTML_COLUMN_PX), bbox_inches="tight",
                         pad_inches=plotting.SAVE_PAD_IN)
        if pt < MIN_PT:
            small[name] = round(pt, 2)
    assert small == {}
