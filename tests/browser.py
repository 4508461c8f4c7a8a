"""Measure how a page lays out in a real browser: headless Chromium driven by selenium.

Not a test module: tests import ``check_page`` and assert on what it returns. The page is opened at a fixed
viewport (``width`` CSS px wide, device scale factor 1), so one CSS px is one screen pixel and an image's
natural width is its PNG's pixel width. An image *passes* when it is shown at ≥ 90 % of its natural width or at
≥ 900 CSS px, i.e. it is neither squeezed far below the resolution it was drawn at nor left small.

The driver is always the system chromedriver (never Selenium Manager, which would try to download one); when
Chromium or its driver is missing this raises RuntimeError rather than skipping, so CI cannot pass silently.
"""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

MIN_FRACTION = 0.9   # an image passes at >= 90 % of its natural width ...
MIN_DISPLAY_PX = 900  # ... or at >= 900 CSS px, whatever its natural width
HEIGHT = 900

DRIVERS = ("chromedriver", "/usr/bin/chromedriver")
BROWSERS = ("chromium", "/usr/bin/chromium", "chromium-browser")
MISSING = ("headless Chromium and its driver are needed for the browser checks but {what} was not found: "
           "install the Debian packages chromium and chromium-driver (.ci/install-browser does it).")

# One script, run after the load event (embedded data-URI images are decoded by then).
MEASURE = """
const root = document.documentElement, vw = root.clientWidth;
function scrolls(el) {  // inside a box that scrolls or clips sideways, a wide child does not widen the page
  for (let p = el.parentElement; p && p !== document.body && p !== root; p = p.parentElement) {
    const o = getComputedStyle(p).overflowX;
    if (o === 'auto' || o === 'scroll' || o === 'hidden' || o === 'clip') return true;
  }
  return false;
}
return {
  inner_width: window.innerWidth,
  viewport_width: vw,
  scroll_width: root.scrollWidth,
  images: Array.from(document.images).map((im, i) => ({
    index: i, alt: im.alt, loaded: im.complete && im.naturalWidth > 0,
    natural_width: im.naturalWidth, displayed_width: im.getBoundingClientRect().width})),
  tables: Array.from(document.querySelectorAll('table')).map((t, i) => {
    const r = t.getBoundingClientRect(), th = t.querySelector('th, td');
    return {index: i, left: r.left + window.scrollX, right: r.right + window.scrollX, width: r.width,
            first_cell: th ? th.textContent.trim().slice(0, 60) : '', in_scroll_box: scrolls(t)};
  }),
};
"""


def _find(candidates) -> Optional[str]:
    for name in candidates:
        path = shutil.which(name) or (name if Path(name).is_file() else None)
        if path:
            return path
    return None


@contextmanager
def chromium(width: int = 1280) -> Iterator["object"]:
    """A headless Chromium whose viewport is ``width`` × HEIGHT CSS px at device scale factor 1."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        raise RuntimeError("selenium is needed for the browser checks: install the dev extra "
                           "(pip install -e '.[dev]').") from e
    driver_path, browser_path = _find(DRIVERS), _find(BROWSERS)
    if driver_path is None:
        raise RuntimeError(MISSING.format(what="chromedriver"))
    if browser_path is None:
        raise RuntimeError(MISSING.format(what="the chromium binary"))
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser_path
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--force-device-scale-factor=1", f"--window-size={width},{HEIGHT}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        # --window-size sizes the window, not the viewport; pin the viewport itself
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
        yield driver
    finally:
        driver.quit()


def measure(driver, html_path) -> dict:
    """Load ``html_path`` in an open ``chromium()`` and measure it (see ``check_page``)."""
    path = Path(html_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no page to check at {path}")
    driver.get(path.as_uri())
    m = driver.execute_script(MEASURE)
    vw = m["viewport_width"]
    images = [{**im, "passes": im["loaded"] and (im["displayed_width"] >= MIN_FRACTION * im["natural_width"]
                                                 or im["displayed_width"] >= MIN_DISPLAY_PX)}
              for im in m["images"]]
    return {"inner_width": m["inner_width"], "viewport_width": vw, "scroll_width": m["scroll_width"],
            "overflow_px": max(0, m["scroll_width"] - vw), "images": images,
            "wide_tables": [t for t in m["tables"] if t["right"] > vw + 0.5]}


def check_page(html_path, width: int = 1280) -> dict:
    """Open ``html_path`` in headless Chromium at ``width`` CSS px and return what a reader would see.

    Keys: ``inner_width`` (window.innerWidth, = width), ``viewport_width`` (documentElement.clientWidth, the
    width less a vertical scrollbar), ``scroll_width`` (documentElement.scrollWidth), ``overflow_px``
    (scroll_width − viewport_width, 0 when nothing sticks out sideways); ``images``: one dict per <img> with
    ``natural_width``, ``displayed_width`` (bounding client rect), ``loaded`` and ``passes``; ``wide_tables``:
    each <table> whose right edge is past the viewport, with ``right``, ``width``, ``first_cell`` and
    ``in_scroll_box`` (true when an ancestor scrolls or clips it sideways, so the page itself need not overflow).
    """
    with chromium(width) as driver:
        return measure(driver, html_path)
