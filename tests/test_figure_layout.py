"""The figure-layout helper catches what a reader would trip over: a title drawn over a footer, a long y-label
running into the neighbouring subplot's, text off the canvas, and fonts too small at the report's width; and
it stays quiet on a clean figure."""
import io
import struct

import matplotlib.pyplot as plt
import numpy as np
import pytest

from figure_layout import min_font_pt, text_overlaps, texts_outside


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def png_width(fig, **savefig) -> int:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig)
    return struct.unpack(">I", buf.getvalue()[16:20])[0]  # IHDR width


def clean_figure():
    """Two panels as the analysis draws them: suptitle, labels, legend, colorbar, footer caption."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.4))
    a.plot([1, 2, 4], [0.6, 0.7, 0.8], label="LoRA")
    a.plot([1, 2, 4], [0.8, 0.8, 0.8], label="full FT")
    a.set(title="accuracy", xlabel="rank r", ylabel="test accuracy")
    a.legend(fontsize=7)
    im = b.imshow(np.arange(12).reshape(3, 4))
    b.set(title="rank at 90 %", xlabel="module", ylabel="layer")
    fig.colorbar(im, ax=b, label="rank")
    fig.suptitle("Does LoRA reach full finetuning?")
    fig.text(0.5, 0.005, "model: all-MiniLM-L6-v2 · task: rotten_tomatoes", ha="center", va="bottom", fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def test_title_over_footer_is_caught():
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot([0, 1], [0, 1])
    ax.set_title("Spectra of ΔW")
    fig.text(0.5, 0.9, "model: MiniLM · 120 steps", ha="center", fontsize=7)  # footer put where the title is
    assert ("Spectra of ΔW", "model: MiniLM · 120 steps") in text_overlaps(fig)


def test_clean_tight_layout_figure_has_no_overlap_and_nothing_outside():
    fig = clean_figure()
    assert text_overlaps(fig) == []
    assert texts_outside(fig) == []


def test_pad_px_flags_texts_that_nearly_touch():
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.set_axis_off()
    fig.text(0.1, 0.5, "left", ha="right")
    fig.text(0.1 + 3 / fig.bbox.width, 0.5, "right", ha="left")  # 3 px gap
    assert text_overlaps(fig) == []
    assert text_overlaps(fig, pad_px=5) == [("left", "right")]


def test_long_ylabel_running_into_the_neighbouring_subplot_is_caught():
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 4))
    top.set_ylabel("held-out accuracy after finetuning, mean over seeds")
    bottom.set_ylabel("forgetting")
    fig.tight_layout()
    assert ("held-out accuracy after finetuning, mean over seeds", "forgetting") in text_overlaps(fig)


def test_crowded_rotated_tick_labels_are_caught_and_spaced_ones_are_not():
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.set_xticks(range(7), ["W_o (attention out)"] * 7, rotation=30, ha="right")
    fig.tight_layout()
    assert ("W_o (attention out)", "W_o (attention out)") in text_overlaps(fig)
    # the same labels 58 px apart: their axis-aligned boxes (124 px wide) overlap, the rotated labels do not
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.set_xticks(range(7), ["W_o (attention out)"] * 7, rotation=30, ha="right")
    fig.tight_layout()
    assert text_overlaps(fig) == []


def test_text_off_the_canvas_is_caught():
    fig, ax = plt.subplots(figsize=(5, 3.4))
    fig.text(0.98, 0.5, "cut off", ha="left")
    assert texts_outside(fig) == ["cut off"]


def test_min_font_pt_at_the_width_the_report_shows_the_png():
    # 19.1 in at 130 dpi: the 2483-px PNG of the reference report's spectra figure
    fig, ax = plt.subplots(figsize=(19.1, 3.3), dpi=130)
    ax.set_title("Normalised spectra", fontsize=12)
    ax.set_xticks([0, 1], ["0", "1"], fontsize=3)
    ax.set_xlim(0, 1)
    ax.annotate("beyond the limits", (5, 0.5), fontsize=1)  # clipped: a data point off the axes is not drawn
    ax.text(0.5, 0.5, "hidden", fontsize=2).set_visible(False)
    fig.text(0.5, 0.005, "footer", fontsize=7)
    assert png_width(fig, dpi=130) == 2483
    # the 3-pt tick labels are the smallest drawn; the PNG is shown at 1000/2483 of its size, and a 3-pt font
    # at 130 dpi is 3·130/72 PNG px, i.e. 3·130/72 · 1000/2483 CSS px = that × 72/96 CSS pt
    expected = 3 * 130 / 72 * 1000 / 2483 * 72 / 96
    assert min_font_pt(fig, 1000) == pytest.approx(expected)
    assert min_font_pt(fig, 2000) == pytest.approx(2 * expected)
    fig.set_dpi(300)  # the dpi sets PNG width and glyph height alike
    assert min_font_pt(fig, 1000) == pytest.approx(expected)


def test_min_font_pt_uses_the_tight_width_when_saved_tight():
    fig = clean_figure()
    fig.set_dpi(130)  # the tight box is measured at the figure's dpi; savefig measures it at its own
    width = png_width(fig, dpi=130, bbox_inches="tight")
    assert width < 8 * 130
    # shown at its natural width, a 7-pt font saved at 130 dpi reads as 7·130/96 CSS pt
    assert min_font_pt(fig, width, bbox_inches="tight") == pytest.approx(7 * 130 / 96, rel=1e-3)
