"""analysis/plotting.py: a saved figure is the same bytes every time (no dates in the PDF, a fixed PNG Software
tag), its width is capped for the report's column, and the study line keeps clear of the figure legend."""
import hashlib

import matplotlib.pyplot as plt

from lora_study.analysis import plotting
from figure_layout import text_overlaps, texts_outside


class FakeStudy:
    def caption(self):
        return "model on task, 10 steps × batch 4, seeds [0] (study s)"


@plotting.styled
def draw():
    fig, axes = plotting.subplots(1, 2, width=12, height=3)
    for i, ax in enumerate(axes[0]):
        ax.plot([1, 2, 3], [3, 1, 2], label=f"line {i}")
        ax.set(xlabel="x", ylabel="y", title=f"panel {i}")
    plotting.figure_legend(fig, axes)
    return plotting.finish(fig, FakeStudy())


def test_two_saves_are_byte_identical_without_dates(tmp_path):
    digests = []
    for run in ("a", "b"):
        paths = plotting.save(draw(), tmp_path / run, "f")
        digests.append([hashlib.sha256(p.read_bytes()).hexdigest() for p in paths])
    assert digests[0] == digests[1]
    pdf = (tmp_path / "a" / "f.pdf").read_bytes()
    assert b"CreationDate" not in pdf and b"ModDate" not in pdf and b"Matplotlib" not in pdf
    assert b"lora-study" in (tmp_path / "a" / "f.png").read_bytes()[:200]


def test_width_is_capped_and_text_is_clear():
    fig = draw()
    assert fig.get_figwidth() == plotting.MAX_WIDTH_IN
    fig.set_dpi(plotting.DPI)
    assert text_overlaps(fig) == [] and texts_outside(fig) == []
    assert all(t.get_fontsize() >= plotting.SMALL for ax in fig.axes for t in ax.get_xticklabels())
    plt.close(fig)
