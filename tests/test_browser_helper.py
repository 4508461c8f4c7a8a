"""The browser helper sees what a reader sees: a wide table overflows the page, a figure squeezed far below its
resolution fails, a large figure shown at column width passes, a clean page is clean, and a missing browser is
an error (never a skip)."""
import base64
import io

import numpy as np
import pytest
from matplotlib.image import imsave

import browser
from browser import check_page


def png_uri(width: int, height: int = 40) -> str:
    """A PNG of exactly ``width`` × ``height`` pixels as a data URI."""
    buf = io.BytesIO()
    imsave(buf, np.linspace(0, 1, width * height).reshape(height, width), format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def page(tmp_path, body: str):
    p = tmp_path / "page.html"
    p.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{body}</body></html>")
    return p


def table(width_css: str) -> str:
    return (f"<table style='width:{width_css}'><tr><th>method</th><th>acc</th></tr>"
            "<tr><td>LoRA</td><td>0.8</td></tr></table>")


def test_wide_table_overflows_the_page(tmp_path):
    r = check_page(page(tmp_path, table("2000px")))
    assert r["inner_width"] == 1280
    assert r["overflow_px"] >= 2000 - r["viewport_width"]
    [t] = r["wide_tables"]
    assert t["width"] == pytest.approx(2000) and t["first_cell"] == "method" and not t["in_scroll_box"]


def test_wide_table_in_a_scroll_box_is_listed_but_the_page_does_not_overflow(tmp_path):
    r = check_page(page(tmp_path, f"<div style='overflow-x:auto'>{table('2000px')}</div>"))
    assert r["overflow_px"] == 0
    [t] = r["wide_tables"]
    assert t["in_scroll_box"]


def test_large_figure_at_column_width_passes_by_the_900px_rule(tmp_path):
    # 1000 < 0.9 × 2400, but 1000 >= 900: readable at that size. Chromium lays out in 1/64 px, so a scaled
    # image can come out a fraction of a px narrow (999.375): widths compare to within 1 px.
    column = f"<div style='width:1000px'><img style='max-width:100%' src='{png_uri(2400)}'></div>"
    r = check_page(page(tmp_path, column))
    [im] = r["images"]
    assert (im["natural_width"], im["displayed_width"], im["passes"]) == (2400, pytest.approx(1000, abs=1), True)
    assert r["overflow_px"] == 0


def test_squeezed_figure_fails(tmp_path):
    r = check_page(page(tmp_path, f"<img style='width:500px' src='{png_uri(1600)}'>"))
    [im] = r["images"]
    assert (im["natural_width"], im["displayed_width"], im["passes"]) == (1600, pytest.approx(500, abs=1), False)


def test_the_90_percent_boundary(tmp_path):
    # 800/880 = 0.91 passes; 880/1000 = 0.88 and below 900 px fails
    r = check_page(page(tmp_path, f"<img style='width:800px' src='{png_uri(880)}'>"
                                  f"<img style='width:880px' src='{png_uri(1000)}'>"))
    assert [im["passes"] for im in r["images"]] == [True, False]


def test_clean_page(tmp_path):
    r = check_page(page(tmp_path, f"<div style='max-width:1100px;margin:auto'><p>text</p>{table('auto')}"
                                  f"<img style='max-width:100%' src='{png_uri(800)}'></div>"))
    assert r["overflow_px"] == 0 and r["wide_tables"] == []
    [im] = r["images"]
    assert (im["natural_width"], im["displayed_width"], im["passes"]) == (800, pytest.approx(800, abs=1), True)


@pytest.mark.parametrize("attr", ["DRIVERS", "BROWSERS"])
def test_missing_browser_is_an_error_not_a_skip(tmp_path, monkeypatch, attr):
    monkeypatch.setattr(browser, attr, (str(tmp_path / "absent"),))
    with pytest.raises(RuntimeError, match="chromium and chromium-driver"):
        check_page(page(tmp_path, "<p>x</p>"))
