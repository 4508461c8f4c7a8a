"""analysis/dimension.py: d90 and d90-gain on hand-made curves (expected values worked out on log d)."""
import pytest

from analysis.dimension import PUBLISHED_D90, crossing, d90, d90_gain, published_range

# a curve over four decades; full FT 0.8, frozen base 0.6
DS = [1000, 10, 10000, 100]  # unsorted on purpose
ACC = [0.80, 0.50, 0.85, 0.60]


def test_d90_interpolates_linearly_on_log_d():
    # target 0.9 × 0.8 = 0.72 lies between d=100 (0.60) and d=1000 (0.80): log10 d = 2 + 0.12/0.20 = 2.6
    assert d90(DS, ACC, 0.8) == pytest.approx(10 ** 2.6, rel=1e-9)
    # gain target 0.6 + 0.9 × (0.8 − 0.6) = 0.78: log10 d = 2 + 0.18/0.20 = 2.9
    assert d90_gain(DS, ACC, 0.8, 0.6) == pytest.approx(10 ** 2.9, rel=1e-9)
    # not decades: 0.9 × 0.7 = 0.63 between d=16 (0.5) and d=256 (0.7): log2 d = 4 + 4 × 0.13/0.2 = 6.6
    assert d90([16, 256], [0.5, 0.7], 0.7) == pytest.approx(2 ** 6.6, rel=1e-9)
    # a different fraction: 0.5 × 0.8 = 0.40 is below the first point, so the smallest d
    assert d90(DS, ACC, 0.8, fraction=0.5) == 10


def test_d90_never_reached_and_reached_at_the_first_d():
    assert d90(DS, ACC, 1.0) is None  # target 0.90 > best 0.85
    assert d90_gain(DS, ACC, 0.95, 0.5) is None  # target 0.905
    assert d90(DS, ACC, 0.5) == 10  # target 0.45: already reached at the smallest d, never extrapolated below it
    assert d90_gain(DS, ACC, 0.52, 0.3) == 10  # target 0.498 ≤ 0.50
    # the first crossing counts, not a later one after a dip: 0.9 reached exactly at d=100
    assert crossing([10, 100, 1000], [0.5, 0.9, 0.6], 0.9) == pytest.approx(100)
    assert crossing([10, 100], [float("nan"), 0.9], 0.8) == 100  # NaN points are dropped


def test_d90_refuses_bad_curves():
    with pytest.raises(ValueError, match="repeats"):
        d90([10, 10], [0.5, 0.6], 0.6)
    with pytest.raises(ValueError, match="positive"):
        d90([0, 10], [0.5, 0.6], 0.6)
    with pytest.raises(ValueError, match="one length"):
        d90([10, 100], [0.5], 0.6)


def test_published_range_spans_every_quoted_d90():
    lo, hi = published_range()
    assert (lo, hi) == (207, 9295)
    assert all(lo <= v <= hi for m in PUBLISHED_D90.values() for v in m.values())


def test_grid_crossing_is_a_tested_d_with_its_bracket():
    from analysis.dimension import crossing, grid_crossing
    ds = [10, 100, 1000, 10000, 100000]
    acc = [0.65, 0.65, 0.647, 0.693, 0.751]
    t = 0.9 * 0.781
    assert grid_crossing(ds, acc, t) == (100000.0, 10000.0)  # the smallest tested d that reaches it, and the one below
    assert 10000 < crossing(ds, acc, t) < 100000  # the interpolation lies strictly inside the bracket
    assert grid_crossing(ds, acc, 0.6) == (10.0, None) and grid_crossing(ds, acc, 0.9) is None
    # a noisy crossing: reached at 100, dips below at 1000, reached again at 10000: d90 is the first reach
    assert grid_crossing(ds, [0.5, 0.72, 0.69, 0.75, 0.76], 0.7) == (100.0, 10.0)
    assert grid_crossing(list(reversed(ds)), list(reversed(acc)), t) == (100000.0, 10000.0)  # order of input is free
