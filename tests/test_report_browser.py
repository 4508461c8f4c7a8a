"""The tiny study's report.html as a reader sees it: rendered by headless Chromium at 1,280 CSS px, nothing sticks
out sideways (no horizontal scroll, no table past the viewport), and every figure is shown at >= 90 % of its natural
width or >= 900 px, so the font sizes chosen in analysis/plotting.py are the sizes read."""
import json

from browser import MIN_DISPLAY_PX, MIN_FRACTION, check_page


def test_report_fits_1280_px_and_shows_every_figure_near_natural_size(reported):
    page = check_page(reported / "report" / "report.html", width=1280)
    assert page["inner_width"] == 1280
    assert page["overflow_px"] == 0, page["scroll_width"]
    assert page["wide_tables"] == [], [t["first_cell"] for t in page["wide_tables"]]
    figures = json.loads((reported / "analysis" / "analysis.json").read_text())["figures"]
    assert len(page["images"]) == len(figures) >= 10
    small = [(im["alt"], im["natural_width"], round(im["displayed_width"])) for im in page["images"]
             if not (im["loaded"] and (im["displayed_width"] >= MIN_FRACTION * im["natural_width"]
                                       or im["displayed_width"] >= MIN_DISPLAY_PX))]
    assert small == []
    assert all(im["passes"] for im in page["images"])


def test_every_committed_report_fits_1280_px():
    """The reports committed under results/reference/ (the default study's and each preset's), as a reader opens
    them from the repository: no sideways overflow, every figure near its natural size."""
    from pathlib import Path
    pages = sorted((Path(__file__).resolve().parent.parent / "results" / "reference").rglob("report.html"))
    assert len(pages) >= 5  # the default study and the four presets
    for path in pages:
        page = check_page(path, width=1280)
        assert page["overflow_px"] == 0 and page["wide_tables"] == [], path
        assert page["images"] and all(im["passes"] for im in page["images"]), path
