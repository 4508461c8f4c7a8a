"""Find text a reader cannot read in a matplotlib figure: texts drawn over each other, texts cut off by the
canvas, and fonts that end up too small once the PNG is scaled to the width the HTML report shows it at.

Not a test module: tests import these functions. Each one draws the figure once with the Agg renderer and
looks only at the texts that draw actually rendered (visible, non-empty, inside the view: a tick label
matplotlib keeps for a tick beyond the axis limits is not drawn and not counted). That covers titles,
suptitles, axis and tick labels, legend texts, colorbar labels, ``fig.text`` footers and annotations.

A text's box is its rotated rectangle in display pixels (the axis-aligned ``get_window_extent`` of a
30°-rotated tick label is much larger than the label, so neighbours' boxes would overlap where the glyphs
do not); two texts overlap when their rectangles intersect with positive area.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import List, Optional, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

CSS_PX_PER_INCH = 96  # CSS fixes 1 in = 96 px = 72 pt, whatever the screen


@contextmanager
def _recording_text_draws():
    """Collect every Text whose draw runs (Annotation.draw and legends' TextArea call Text.draw too)."""
    drawn = {}
    original = Text.draw

    @functools.wraps(original)
    def draw(self, renderer):
        if self.get_visible() and self.get_text().strip():
            drawn[id(self)] = self
        return original(self, renderer)

    Text.draw = draw
    try:
        yield drawn
    finally:
        Text.draw = original


def _draw(fig):
    """Draw ``fig`` with Agg (attaching an Agg canvas if it has another) and return (renderer, drawn texts)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    with _recording_text_draws() as drawn:
        canvas.draw()
    return canvas.get_renderer(), list(drawn.values())


def _rectangle(text: Text, renderer) -> Optional[np.ndarray]:
    """The four corners (display px) of ``text``'s rotated box, or None when it has no finite extent.

    The rotated rectangle has the size of the unrotated box and the centre of the rotated box's bounding box.
    """
    aabb = Text.get_window_extent(text, renderer)  # Text's, not Annotation's (which adds the arrow)
    angle = text.get_rotation()
    if angle % 90:
        text.set_rotation(0)
        try:
            flat = Text.get_window_extent(text, renderer)
        finally:
            text.set_rotation(angle)
        w, h = flat.width, flat.height
    elif angle % 180:
        w, h = aabb.height, aabb.width
    else:
        w, h = aabb.width, aabb.height
    if not (np.isfinite(aabb.extents).all() and w > 0 and h > 0):
        return None
    t = np.deg2rad(angle)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    half = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    return (half @ rot.T) + [(aabb.x0 + aabb.x1) / 2, (aabb.y0 + aabb.y1) / 2]


def _inflate(corners: np.ndarray, by: float) -> np.ndarray:
    """Grow a rectangle by ``by`` px on every side (along its own axes)."""
    u = corners[1] - corners[0]
    v = corners[3] - corners[0]
    u, v = u / np.linalg.norm(u) * by, v / np.linalg.norm(v) * by
    signs = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]])
    return corners + signs[:, :1] * u + signs[:, 1:] * v


def _intersect(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test for two rectangles: True when they share positive area."""
    for poly in (a, b):
        for i in range(2):
            edge = poly[i + 1] - poly[i]
            axis = np.array([-edge[1], edge[0]])
            pa, pb = a @ axis, b @ axis
            if min(pa.max(), pb.max()) - max(pa.min(), pb.min()) <= 1e-9 * np.abs(axis).sum():
                return False
    return True


def overlapping_texts(fig, pad_px: float = 0) -> List[Tuple[Text, Text]]:
    """The pairs of drawn texts whose boxes intersect, or come closer than ``pad_px`` display px."""
    renderer, texts = _draw(fig)
    boxes = [(t, r) for t in texts if (r := _rectangle(t, renderer)) is not None]
    if pad_px:
        boxes = [(t, _inflate(r, pad_px / 2)) for t, r in boxes]
    return [(ta, tb) for i, (ta, ra) in enumerate(boxes) for tb, rb in boxes[i + 1:] if _intersect(ra, rb)]


def text_overlaps(fig, pad_px: float = 0) -> List[Tuple[str, str]]:
    """The pairs of drawn texts that overlap, by their content, e.g. ``[("Spectra of ΔW", "model: …")]``.

    Every real intersection is reported, including two crowded tick labels of the same axis.
    """
    return [(a.get_text(), b.get_text()) for a, b in overlapping_texts(fig, pad_px)]


def texts_outside(fig) -> List[str]:
    """The drawn texts whose box leaves the figure canvas (they are cut off unless saved with
    ``bbox_inches="tight"``, which grows the canvas to hold them)."""
    renderer, texts = _draw(fig)
    w, h = fig.bbox.width, fig.bbox.height
    out = []
    for t in texts:
        r = _rectangle(t, renderer)
        if r is not None and (r.min() < 0 or r[:, 0].max() > w or r[:, 1].max() > h):
            out.append(t.get_text())
    return out


def min_font_pt(fig, display_width_px: float = 1000, bbox_inches: Optional[str] = None,
                pad_inches: Optional[float] = None) -> float:
    """The smallest font among drawn texts, in CSS pt, when the saved PNG is shown ``display_width_px`` wide.

    A font of s pt saved at D dpi is s·D/72 PNG px tall; a PNG W_in·D px wide shown at display_width_px
    CSS px is scaled by display_width_px / (W_in·D); a CSS pt is 96/72 CSS px. So the reader sees

        s · display_width_px / (W_in · 96) pt,

    whatever the dpi: the dpi sets the PNG's width and the glyphs' pixel height alike. W_in is the figure's
    width, or its tight bounding box's (plus ``pad_inches``, default rcParams["savefig.pad_inches"]) when
    the PNG is saved with ``bbox_inches="tight"``, as analysis/plotting.py saves them. The tight box is
    measured at ``fig.dpi``, and text extents round slightly differently at another dpi (0.3 % at 100 vs
    130 dpi), so set the figure's dpi to the savefig dpi where that matters.
    """
    renderer, texts = _draw(fig)
    if not texts:
        raise ValueError("the figure draws no text, so it has no smallest font")
    width_in = fig.get_figwidth()
    if bbox_inches == "tight":
        import matplotlib

        pad = matplotlib.rcParams["savefig.pad_inches"] if pad_inches is None else pad_inches
        width_in = fig.get_tightbbox(renderer).padded(pad).width
    elif bbox_inches is not None:
        raise ValueError(f"bbox_inches={bbox_inches!r} is not supported: use None or 'tight'")
    return min(t.get_fontsize() for t in texts) * display_width_px / (width_in * CSS_PX_PER_INCH)
