"""analysis/dimension.py: d90 and d90-gain on hand-made curves (expected values worked out on log d)."""
import pytest

from lora_study.analysis.dimension import PUBLISHED_D90, crossing, d90, d90_gain, published_range

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


def test_d90_on_a_curve_that_dips_and_then_crosses():
    # 0.50 at d = 10, 0.70 at 100, a dip to 0.60 at 1000, then 0.90 at 10^4 (unsorted on purpose).
    ds, acc = [1000, 10, 10000, 100], [0.60, 0.50, 0.90, 0.70]
    # target 0.9 × 0.8 = 0.72: 0.70 before the dip falls short, so the first crossing is between the dip (d = 1000,
    # 0.60) and d = 10^4 (0.90), not between the best point before it (d = 100, 0.70) and 10^4:
    # log10 d = 3 + (0.72 − 0.60) / 0.30 = 3.4
    assert d90(ds, acc, 0.8) == pytest.approx(10 ** 3.4, rel=1e-9)
    # target 0.9 × 0.75 = 0.675, reached before the dip: between d = 10 (0.5) and 100 (0.7), 1 + 0.175 / 0.2 = 1.875;
    # the dip below it at d = 1000 does not undo the crossing
    assert d90(ds, acc, 0.75) == pytest.approx(10 ** 1.875, rel=1e-9)
    # gain target 0.5 + 0.9 × (0.9 − 0.5) = 0.86: between 1000 (0.60) and 10^4 (0.90), 3 + 0.26 / 0.30
    assert d90_gain(ds, acc, 0.9, 0.5) == pytest.approx(10 ** (3 + 0.26 / 0.30), rel=1e-9)
    # a target equal to a point after the dip is reached at that point: 0.9 × 1.0 = 0.90 at d = 10^4 exactly
    assert d90(ds, acc, 1.0) == pytest.approx(10000, rel=1e-12)


def test_crossing_edge_cases():
    # d = 1 is a valid dimension (log 1 = 0): 0.6 between d=1 (0.5) and d=10 (0.7), log10 d = 0.5
    assert crossing([1, 10], [0.5, 0.7], 0.6) == pytest.approx(10 ** 0.5, rel=1e-12)
    # reached exactly at the smallest d, then falling: the smallest d, not None
    assert crossing([10, 100], [0.9, 0.5], 0.9) == 10.0
    # nothing left after dropping missing points (NaN, or None as a JSON null reads), or nothing at all: None
    assert crossing([10, 100], [float("nan"), float("nan")], 0.5) is None and crossing([], [], 0.5) is None
    assert crossing([10, 100, 1000], [None, 0.6, 0.8], 0.7) == pytest.approx(10 ** 2.5, rel=1e-12)
    assert crossing([10, 100], [0.5, 0.9], float("nan")) is None  # no full FT: no target


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
    from lora_study.analysis.dimension import crossing, grid_crossing
    ds = [10, 100, 1000, 10000, 100000]
    acc = [0.65, 0.65, 0.647, 0.693, 0.751]
    t = 0.9 * 0.781
    assert grid_crossing(ds, acc, t) == (100000.0, 10000.0)  # the smallest tested d that reaches it, and the one below
    assert 10000 < crossing(ds, acc, t) < 100000  # the interpolation lies strictly inside the bracket
    assert grid_crossing(ds, acc, 0.6) == (10.0, None) and grid_crossing(ds, acc, 0.9) is None
    # a noisy crossing: reached at 100, dips below at 1000, reached again at 10000: d90 is the first reach
    assert grid_crossing(ds, [0.5, 0.72, 0.69, 0.75, 0.76], 0.7) == (100.0, 10.0)
    assert grid_crossing(list(reversed(ds)), list(reversed(acc)), t) == (100000.0, 10000.0)  # order of input is free
