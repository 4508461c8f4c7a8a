"""analysis/stats.py: McNemar against scipy, bootstrap coverage and pairing, hierarchical seeds, TOST verdicts."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from lora_study.analysis import stats
from lora_study.analysis.stats import (DIFFERENT, EQUIVALENT, UNRESOLVED, binomial_se, compare, equivalence,
                            hierarchical_bootstrap, mcnemar_exact, paired_bootstrap, smallest_equivalent,
                            spearman_with_ci, tost, unpaired_difference_se, verdict)


def table(n11: int, n10: int, n01: int, n00: int) -> tuple[np.ndarray, np.ndarray]:
    """Correctness vectors with the given 2 x 2 table (first index A, second B; 1 = right)."""
    a = np.r_[np.ones(n11 + n10), np.zeros(n01 + n00)].astype(int)
    b = np.r_[np.ones(n11), np.zeros(n10), np.ones(n01), np.zeros(n00)].astype(int)
    return a, b


def correlated_accuracy(n: int, shift: float, seed: int, noise: float = 0.4):
    """0/1 scores of two models sharing each example's difficulty z: right iff z + noise e > threshold.
    P(right) = Phi(-threshold / sqrt(1 + noise^2)), so the true difference is known in closed form."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    ta, tb = -0.7 - shift, -0.7
    a = (z + noise * rng.normal(size=n) > ta).astype(int)
    b = (z + noise * rng.normal(size=n) > tb).astype(int)
    s = math.sqrt(1 + noise ** 2)
    return a, b, sps.norm.cdf(-ta / s) - sps.norm.cdf(-tb / s)


# ---------------------------------------------------------------- McNemar

@pytest.mark.parametrize("cells", [(50, 12, 3, 35), (10, 0, 7, 3), (40, 5, 5, 50), (0, 1, 0, 0), (30, 21, 9, 40)])
def test_mcnemar_is_the_binomial_test_on_discordant_pairs(cells):
    a, b = table(*cells)
    r = mcnemar_exact(a, b)
    n11, n10, n01, n00 = cells
    assert (r["n"], r["n10"], r["n01"]) == (sum(cells), n10, n01)
    assert r["acc_a"] == pytest.approx((n11 + n10) / sum(cells))
    assert r["diff"] == pytest.approx((n10 - n01) / sum(cells))
    assert r["p_value"] == pytest.approx(sps.binomtest(n10, n01 + n10, 0.5).pvalue, rel=1e-12)
    s = mcnemar_exact(b, a)  # swapping the models flips the counts and the sign, not the p-value
    assert (s["n10"], s["n01"], s["diff"], s["p_value"]) == (n01, n10, pytest.approx(-r["diff"]), r["p_value"])


def test_mcnemar_hand_value_and_no_discordance():
    a, b = table(10, 0, 7, 3)
    assert mcnemar_exact(a, b)["p_value"] == pytest.approx(2 * 0.5 ** 7)  # all 7 discordant pairs favour B
    a, b = table(5, 0, 0, 5)
    assert mcnemar_exact(a, b)["p_value"] == 1.0
    assert mcnemar_exact(np.array([True, False]), np.array([True, False]))["diff"] == 0.0


# ---------------------------------------------------------------- bootstrap

def test_paired_interval_much_narrower_than_unpaired_when_correlated():
    a, b, _ = correlated_accuracy(1000, shift=0.05, seed=0, noise=0.2)
    r = paired_bootstrap(a, b, n_boot=1000, seed=1)
    assert r["diff"] == pytest.approx(a.mean() - b.mean())
    lo, hi = r["interval"]
    assert lo <= r["diff"] <= hi
    unpaired = 2 * 1.96 * unpaired_difference_se(a.mean(), b.mean(), a.size, b.size)
    assert hi - lo < 0.5 * unpaired
    assert r["se"] == pytest.approx((hi - lo) / (2 * 1.96), rel=0.15)


def test_paired_bootstrap_coverage_of_a_known_difference():
    hits = 0
    for k in range(200):
        a, b, truth = correlated_accuracy(200, shift=0.25, seed=100 + k)
        lo, hi = paired_bootstrap(a, b, n_boot=400, seed=k)["interval"]
        hits += lo <= truth <= hi
    assert truth > 0.05  # a sign error would centre the interval on -truth and miss
    assert 0.90 <= hits / 200 <= 0.99


def test_bootstrap_p_value_agrees_with_interval_and_seed():
    a, b, _ = correlated_accuracy(400, shift=0.3, seed=2)
    r = paired_bootstrap(a, b, n_boot=1000, seed=3)
    assert r["interval"][0] > 0 and r["p_value"] < 0.05
    assert r["p_value"] == pytest.approx(1 / 1000)  # clipped: no replicate at or below 0
    assert paired_bootstrap(a, b, n_boot=1000, seed=3) == r
    assert paired_bootstrap(a, b, n_boot=1000, seed=4)["interval"] != r["interval"]
    same = paired_bootstrap(a, a, n_boot=100)
    assert (same["diff"], same["interval"], same["p_value"]) == (0.0, (0.0, 0.0), 1.0)


def test_a_custom_statistic_resamples_the_same_indices_as_the_mean_path():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=60), rng.normal(size=60)
    fast = paired_bootstrap(a, b, n_boot=300, seed=7)
    slow = paired_bootstrap(a, b, n_boot=300, seed=7, stat=lambda x: float(np.mean(x)))
    assert slow["interval"] == pytest.approx(fast["interval"], abs=1e-12)
    ppl = paired_bootstrap(a, b, n_boot=300, seed=7, stat=lambda x: np.exp(np.mean(x)))
    assert ppl["diff"] == pytest.approx(np.exp(a.mean()) - np.exp(b.mean()))


def test_hierarchical_with_one_seed_is_the_paired_bootstrap():
    a, b, _ = correlated_accuracy(300, shift=0.1, seed=6)
    h = hierarchical_bootstrap(a[None], b[None], n_boot=500, seed=9)
    p = paired_bootstrap(a, b, n_boot=500, seed=9)
    assert h["interval"] == pytest.approx(p["interval"], abs=1e-12)
    assert (h["n_seeds"], h["n_examples"]) == (1, 300)


def test_hierarchical_interval_widens_with_seed_spread():
    rng = np.random.default_rng(7)
    S, N = 5, 400
    difficulty = rng.normal(size=N)
    b = difficulty + 0.3 * rng.normal(size=(S, N))
    calm = b + 0.1 + 0.3 * rng.normal(size=(S, N))
    noisy = calm + rng.normal(0, 0.5, size=(S, 1))  # each seed of A shifted: training noise
    w_calm = np.diff(hierarchical_bootstrap(calm, b, n_boot=1000, seed=0)["interval"])[0]
    r = hierarchical_bootstrap(noisy, b, n_boot=1000, seed=0)
    w_noisy = np.diff(r["interval"])[0]
    assert w_noisy > 3 * w_calm
    flat = paired_bootstrap(noisy.ravel(), b.ravel(), n_boot=1000, seed=0)  # hides the seed noise
    assert w_noisy > 3 * np.diff(flat["interval"])[0]
    assert r["diff"] == pytest.approx((noisy - b).mean())
    assert (r["n_seeds"], r["n_examples"]) == (S, N)


def test_hierarchical_needs_a_rectangle():
    with pytest.raises(ValueError, match="rectangular"):
        hierarchical_bootstrap([[1, 0, 1], [1, 0]], [[1, 0, 1], [1, 0]])
    with pytest.raises(ValueError, match="2-D"):
        hierarchical_bootstrap([1, 0, 1], [1, 0, 1])


# ---------------------------------------------------------------- equivalence

def test_tost_on_known_replicates():
    d = np.linspace(-0.5, 1.5, 2001)  # uniform replicates
    r = tost(d, margin=1.0)
    assert r["p_lower"] == pytest.approx(1 / 2001)  # none at or below -1: clipped
    assert r["p_upper"] == pytest.approx(501 / 2001)  # 1.0, 1.001, ..., 1.5
    assert r["p_tost"] == r["p_upper"] and not r["equivalent"]
    centred = tost(d - 0.5, margin=0.92)
    assert centred["interval"] == pytest.approx((-0.9, 0.9)) and centred["equivalent"]  # the 90 % interval
    assert not tost(d - 0.5, margin=0.85)["equivalent"]  # the 90 % interval is (-0.9, 0.9)


def test_tost_equivalent_for_a_tiny_difference_and_not_for_twice_the_margin():
    margin = 0.02
    a, b, truth = correlated_accuracy(20000, shift=0.005, seed=8)
    assert abs(truth) < 0.2 * margin
    r = equivalence(a, b, margin, n_boot=1000)
    assert r["equivalent"] and r["p_tost"] < 0.05
    a, b, truth = correlated_accuracy(20000, shift=0.14, seed=9)
    assert truth == pytest.approx(2 * margin, rel=0.2)
    r = equivalence(a, b, margin, n_boot=1000)
    assert not r["equivalent"] and r["p_tost"] > 0.5


def test_not_significant_at_small_n_is_unresolved_not_equivalent():
    a, b, _ = correlated_accuracy(60, shift=0.0, seed=10)
    r = compare(a, b, margin=0.01, n_boot=1000)
    assert r["p_difference"] > 0.05 and r["p_difference_method"] == "mcnemar_exact"
    assert (r["verdict"], r["equivalent"], r["different"]) == (UNRESOLVED, False, False)
    assert "seed" in r["note"]


def test_significant_and_within_margin_reports_both_flags():
    a, b = table(15000, 60, 0, 4940)  # A better on 60 of 20000 examples: diff 0.003
    r = compare(a, b, margin=0.01, n_boot=1000)
    assert r["p_difference"] < 1e-10 and r["different"] and r["equivalent"]
    assert r["verdict"] == EQUIVALENT
    assert r["ci95"][0] <= r["ci90"][0] and r["ci90"][1] <= r["ci95"][1]
    assert r["ci95"][1] - r["ci95"][0] > 1.1 * (r["ci90"][1] - r["ci90"][0])  # two levels, not one interval
    assert compare(a, b, margin=0.002, n_boot=1000)["verdict"] == DIFFERENT


def test_verdict_rule():
    assert verdict((0.001, 0.005), (0.0015, 0.0045), 0.01) == EQUIVALENT  # significant, but inside the margin
    assert verdict((-0.004, 0.006), (-0.003, 0.005), 0.01) == EQUIVALENT
    assert verdict((0.01, 0.05), (0.015, 0.045), 0.01) == DIFFERENT
    assert verdict((-0.05, 0.03), (-0.04, 0.02), 0.01) == UNRESOLVED  # wide: neither shown
    assert verdict((-0.001, 0.03), (0.001, 0.025), 0.01) == UNRESOLVED  # only the 90 % interval excludes 0
    assert verdict((-0.012, 0.008), (-0.0101, 0.007), 0.01) == UNRESOLVED  # 90 % just crosses -margin
    with pytest.raises(ValueError, match="margin"):
        verdict((0, 1), (0, 1), 0.0)
    with pytest.raises(ValueError, match="interval_90"):
        verdict((0, 1), (1, 0), 0.1)


def test_relative_margin_is_a_fraction_of_the_reference_mean():
    rng = np.random.default_rng(11)
    b = 10 + rng.normal(size=2000)  # per-example losses around 10
    a = b + 0.05 + 0.01 * rng.normal(size=2000)
    rel = compare(a, b, margin=0.01, relative=True, n_boot=500)  # +-0.1 in absolute terms
    assert rel["margin"] == pytest.approx(0.01 * b.mean()) and rel["verdict"] == EQUIVALENT
    assert rel["p_difference_method"] == "paired_bootstrap"
    assert compare(a, b, margin=0.01, n_boot=500)["verdict"] == DIFFERENT
    assert equivalence(a, b, margin=0.01, relative=True, n_boot=500)["equivalent"]


def test_compare_with_seeds_is_hierarchical():
    rng = np.random.default_rng(12)
    a = (rng.random((3, 500)) < 0.8).astype(int)
    b = (rng.random((3, 500)) < 0.8).astype(int)
    r = compare(a, b, margin=0.05, n_boot=500)
    assert (r["n_seeds"], r["n_examples"], r["note"]) == (3, 500, "")
    assert r["p_difference_method"] == "hierarchical_bootstrap"
    with pytest.raises(ValueError, match="hierarchical=False"):
        compare(a, b, margin=0.05, hierarchical=False)
    with pytest.raises(ValueError, match="hierarchical=True"):
        compare(a[0], b[0], margin=0.05, hierarchical=True)


def test_smallest_equivalent_picks_the_smallest_shown_rank():
    def result(ci95, ci90, margin=0.01):
        return {"ci95": ci95, "ci90": ci90, "margin": margin, "diff": sum(ci90) / 2}
    cands = {8: result((-0.004, 0.004), (-0.003, 0.003)),  # unsorted on purpose
             1: result((-0.06, -0.03), (-0.055, -0.035)),
             4: result((-0.008, 0.002), (-0.007, 0.001)),
             16: result((-0.02, 0.01), (-0.018, 0.008)),
             2: result((-0.03, 0.001), (-0.028, -0.002))}
    r = smallest_equivalent(cands, margin=0.01)
    assert r["rank"] == 4 and r["ci90"] == (-0.007, 0.001) and r["equivalent_ranks"] == [4, 8]
    assert r["verdicts"][1] == DIFFERENT and r["verdicts"][16] == UNRESOLVED
    assert "does not claim" in r["sentence"] or "says nothing" in r["sentence"]
    assert smallest_equivalent(cands, margin=0.005)["rank"] == 8
    none = smallest_equivalent(cands, margin=0.001)
    assert none["rank"] is None and "No rank" in none["sentence"]


def test_smallest_equivalent_on_real_comparisons():
    rng = np.random.default_rng(13)
    ref = (rng.random(5000) < 0.8).astype(int)
    cands = {}
    for rank, drop in [(1, 0.08), (4, 0.03), (16, 0.0)]:
        lora = ref.copy()
        lora[rng.random(5000) < drop] = 0  # LoRA loses a fraction of the reference's right answers
        cands[rank] = compare(lora, ref, margin=0.01, n_boot=500)
    assert smallest_equivalent(cands, margin=0.01)["rank"] == 16
    assert smallest_equivalent(cands, margin=None)["rank"] == 16


# ---------------------------------------------------------------- association, simple errors, bad input

def test_spearman_with_ci():
    x = np.arange(12.0)
    r = spearman_with_ci(x, x ** 3, n_boot=300)
    assert r["rho"] == pytest.approx(1.0) and r["interval"] == pytest.approx((1.0, 1.0))
    r = spearman_with_ci(x, -np.exp(x), n_boot=300)
    assert r["rho"] == pytest.approx(-1.0)
    rng = np.random.default_rng(14)
    u, v = rng.normal(size=80), rng.normal(size=80)
    w = u + rng.normal(size=80)
    r = spearman_with_ci(u, w, n_boot=500)
    assert (r["rho"], r["p_value"]) == pytest.approx(tuple(sps.spearmanr(u, w)))
    assert r["interval"][0] < r["rho"] < r["interval"][1] and r["interval"][0] > 0.3
    lo, hi = spearman_with_ci(u, v, n_boot=500)["interval"]
    assert lo < 0 < hi
    for x, y in [([1.0, 2.0], [2.0, 1.0]), ([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]), ([4.0] * 5, [1.0, 2.0, 3.0, 4.0, 5.0])]:
        out = spearman_with_ci(x, y)
        assert out["rho"] is None and out["interval"] is None and out["p_value"] is None


def test_standard_errors_match_the_anchor():
    assert binomial_se(0.77, 1000) == pytest.approx(math.sqrt(0.77 * 0.23 / 1000))
    assert 2 * unpaired_difference_se(0.77, 0.77, 1000, 1000) == pytest.approx(0.038, abs=5e-4)
    assert 2 * binomial_se(0.77, 1000) == pytest.approx(0.026, abs=1e-3)
    with pytest.raises(ValueError, match="p2"):
        unpaired_difference_se(0.5, 1.5, 10, 10)


# ---------------------------------------------------------------- results, defaults and replicates by hand

def manual_mean_replicates(d: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """The paired bootstrap of a mean as the module docstring states it, one replicate at a time: rows of
    example indices drawn with replacement from default_rng(seed), d* = mean(d[i*])."""
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n_boot, d.size))
    return np.array([d[i].mean() for i in idx])


def test_result_keys_and_defaults():
    a, b = table(30, 6, 2, 12)  # accuracies 0.72 and 0.64 on 50 examples
    m = mcnemar_exact(a, b)
    assert m == {"n": 50, "acc_a": 0.72, "acc_b": 0.64, "diff": pytest.approx(0.08), "n01": 2, "n10": 6,
                 "p_value": pytest.approx(sps.binomtest(6, 8, 0.5).pvalue)}
    pb = paired_bootstrap(a, b)
    assert set(pb) == {"diff", "interval", "level", "se", "p_value", "n_boot", "n"}
    assert (pb["level"], pb["n_boot"], pb["n"]) == (0.95, 2000, 50) and pb == paired_bootstrap(a, b, 2000, 0, 0.95)
    hb = hierarchical_bootstrap(np.stack([a, b]), np.stack([b, b]))
    assert set(hb) == {"diff", "interval", "level", "se", "p_value", "n_boot", "n_seeds", "n_examples"}
    assert (hb["n_boot"], hb["level"]) == (2000, 0.95) and hb == hierarchical_bootstrap(np.stack([a, b]), np.stack([b, b]), 2000, 0)
    t = tost(np.linspace(-1, 1, 11), 0.5)
    assert set(t) == {"interval", "level", "margin", "p_lower", "p_upper", "p_tost", "equivalent"}
    assert t["level"] == pytest.approx(0.9) and t["margin"] == 0.5 and tost(np.linspace(-1, 1, 11), 0.5, 0.1)["level"] == pytest.approx(0.8)
    e = equivalence(a, b, 0.1)
    assert set(e) == set(t) | {"diff", "margin_given", "relative"}
    assert (e["margin"], e["margin_given"], e["relative"], e["diff"]) == (0.1, 0.1, False, pytest.approx(0.08))
    assert e == equivalence(a, b, 0.1, 0.05, 2000, 0) and equivalence(a, b, 0.1, alpha=0.1)["level"] == pytest.approx(0.8)
    r = equivalence(a, b, 0.1, relative=True)
    assert (r["margin"], r["relative"]) == (pytest.approx(0.1 * 0.64), True)
    c = compare(a, b, 0.1)
    assert set(c) == {"diff", "ci95", "ci90", "p_difference", "p_difference_method", "p_lower", "p_upper", "p_tost",
                      "equivalent", "different", "verdict", "margin", "margin_given", "relative", "n_seeds",
                      "n_examples", "n_boot", "note"}
    assert (c["diff"], c["n_boot"], c["relative"], c["margin_given"]) == (pytest.approx(0.08), 2000, False, 0.1)
    assert c == compare(a, b, 0.1, 0.05, 2000, 0) and compare(a, b, 0.02, relative=True)["relative"] is True
    sp = spearman_with_ci(np.arange(6.0), np.arange(6.0) ** 2)
    assert set(sp) == {"rho", "p_value", "interval", "level", "n", "n_valid"} and (sp["n"], sp["level"]) == (6, 0.95)
    assert sp == spearman_with_ci(np.arange(6.0), np.arange(6.0) ** 2, 2000, 0, 0.95)
    flat = spearman_with_ci([1.0, 2.0, 3.0], [5.0, 5.0, 5.0])
    assert flat == {"rho": None, "p_value": None, "interval": None, "level": 0.95, "n": 3, "n_valid": 0}


def test_mean_replicates_are_the_paired_bootstrap_of_the_docstring():
    rng = np.random.default_rng(20)
    a, b = rng.normal(size=40), rng.normal(size=40)
    samples = manual_mean_replicates(a - b, 300, 5)
    r = paired_bootstrap(a, b, n_boot=300, seed=5)
    assert r["interval"] == pytest.approx(tuple(np.quantile(samples, [0.025, 0.975])), abs=1e-12)
    assert r["se"] == pytest.approx(np.std(samples, ddof=1), rel=1e-12)
    assert r["p_value"] == pytest.approx(max(2 * min(np.mean(samples <= 0), np.mean(samples >= 0)), 1 / 300))
    # one replicate has no spread; two have a sample standard deviation
    one = paired_bootstrap(a, b, n_boot=1, seed=5)
    assert (one["se"], one["n_boot"], one["interval"]) == (0.0, 1, pytest.approx((samples[0], samples[0]), abs=1e-12))
    two = paired_bootstrap(a, b, n_boot=2, seed=5)
    assert two["se"] == pytest.approx(abs(samples[0] - samples[1]) / math.sqrt(2), rel=1e-12) and two["se"] > 0


def test_any_other_statistic_is_resampled_replicate_by_replicate():
    rng = np.random.default_rng(21)
    a, b = rng.exponential(size=30), rng.exponential(size=30)  # skewed: the median differs from the mean
    draw = np.random.default_rng(4)
    samples = [np.median(a[i]) - np.median(b[i]) for i in (draw.integers(0, 30, size=30) for _ in range(200))]
    r = paired_bootstrap(a, b, n_boot=200, seed=4, stat=np.median)
    assert r["diff"] == pytest.approx(np.median(a) - np.median(b))
    assert r["interval"] == pytest.approx(tuple(np.quantile(samples, [0.025, 0.975])), abs=1e-12)


def test_two_sided_p_and_its_clip():
    assert stats._two_sided_p(np.array([-1.0, 1.0, 2.0, 3.0])) == 0.5  # 2 min(1/4, 3/4)
    assert stats._two_sided_p(np.array([1.0, 2.0, 3.0, 4.0])) == 0.25  # none at or below 0: clipped to 1/4
    assert stats._two_sided_p(np.array([0.0, 0.0])) == 1.0


def test_two_seeds_are_already_hierarchical():
    rng = np.random.default_rng(22)
    b = rng.normal(size=(2, 300))
    a = b + 0.1 + np.array([[-0.5], [0.5]]) + 0.1 * rng.normal(size=(2, 300))  # the two seeds disagree
    h = hierarchical_bootstrap(a, b, n_boot=500)
    flat = paired_bootstrap(a.ravel(), b.ravel(), n_boot=500)
    assert np.diff(h["interval"])[0] > 3 * np.diff(flat["interval"])[0]
    assert compare(a, b, margin=0.05, n_boot=200)["p_difference_method"] == "hierarchical_bootstrap"
    # one seed as a 2-D array may be flattened; two may not
    assert compare(a[:1], b[:1], margin=0.05, n_boot=100, hierarchical=False)["n_seeds"] == 1
    with pytest.raises(ValueError, match="noise of 2 seeds"):
        equivalence(a, b, margin=0.05, n_boot=100, hierarchical=False)


def test_compare_reads_its_replicates_through_tost_and_the_verdict():
    rng = np.random.default_rng(23)
    b = rng.normal(size=80)
    a = b + 0.02 + 0.05 * rng.normal(size=80)
    c = compare(a, b, margin=0.03, alpha=0.1, n_boot=400, seed=2)
    samples = manual_mean_replicates(a - b, 400, 2)
    t = tost(samples, 0.03, 0.1)
    assert (c["ci90"], c["p_lower"], c["p_upper"], c["p_tost"]) == (pytest.approx(t["interval"], abs=1e-12),
                                                                    t["p_lower"], t["p_upper"], t["p_tost"])
    assert c["ci95"] == pytest.approx(tuple(np.quantile(samples, [0.05, 0.95])), abs=1e-12)  # the (1 - alpha) interval
    assert c["diff"] == pytest.approx(a.mean() - b.mean()) and c["p_difference_method"] == "paired_bootstrap"
    same = compare(a, a, margin=0.03, n_boot=100)  # every replicate is 0: not different, equivalent
    assert same["ci95"] == (0.0, 0.0) and not same["different"] and same["verdict"] == EQUIVALENT


def test_boundaries_of_tost_and_the_verdict():
    # replicates exactly at -margin count against H0-; an interval ending exactly on the margin is not inside it
    assert tost(np.array([-1.0, 0.0, 0.0, 0.0]), 1.0)["p_lower"] == 0.25
    assert not tost(np.array([-0.5] * 10 + [0.2] * 10), 0.5)["equivalent"]  # 5 % quantile = -0.5 = -margin
    assert not tost(np.array([-0.2] * 10 + [0.5] * 10), 0.5)["equivalent"]  # 95 % quantile = 0.5 = margin
    assert tost(np.array([-0.2] * 10 + [0.2] * 10), 0.5)["equivalent"]
    assert verdict((-0.02, 0.005), (-0.01, 0.004), 0.01) == UNRESOLVED  # 90 % interval starts on -margin
    assert verdict((-0.02, 0.005), (-0.004, 0.01), 0.01) == UNRESOLVED  # ... or ends on +margin
    assert verdict((0.0, 0.05), (0.01, 0.04), 0.01) == UNRESOLVED  # 95 % interval starts on 0: not excluded
    assert verdict((-0.05, 0.0), (-0.04, -0.01), 0.01) == UNRESOLVED


def test_spearman_small_samples_and_constant_resamples():
    r = spearman_with_ci([1.0, 2.0, 3.0], [1.0, 3.0, 2.0], n_boot=300)  # three points are enough for a rho
    assert r["rho"] == pytest.approx(0.5) and r["interval"] is not None
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0])
    r = spearman_with_ci(x, y, n_boot=300, seed=1)
    idx = np.random.default_rng(1).integers(0, 4, size=(300, 4))
    rho = [sps.spearmanr(x[i], y[i]).statistic for i in idx if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0]
    assert r["n_valid"] == len(rho) < 300  # resamples constant in x or y are dropped, not NaN
    assert r["interval"] == pytest.approx(tuple(np.quantile(rho, [0.025, 0.975])), abs=1e-12)
    assert r == spearman_with_ci(x, y, n_boot=300, seed=1)
    # a single replicate whose resample is constant: a rho but no interval
    seed = next(s for s in range(100) if len(set(np.random.default_rng(s).integers(0, 3, size=(1, 3))[0])) == 1)
    r = spearman_with_ci([1.0, 2.0, 3.0], [1.0, 3.0, 2.0], n_boot=1, seed=seed)
    assert r["rho"] == pytest.approx(0.5) and r["interval"] is None and r["n_valid"] == 0


def test_smallest_equivalent_sentences_and_keys():
    def result(ci95, ci90, margin=0.01):
        return {"ci95": ci95, "ci90": ci90, "margin": margin, "diff": sum(ci90) / 2}
    cands = {2: result((-0.03, 0.001), (-0.028, -0.002)), 4: result((-0.008, 0.002), (-0.007, 0.001), margin=0.02)}
    r = smallest_equivalent(cands, margin=0.01)
    assert set(r) == {"rank", "ci90", "ci95", "diff", "equivalent_ranks", "verdicts", "sentence"}
    assert (r["rank"], r["ci95"], r["diff"]) == (4, (-0.008, 0.002), pytest.approx(-0.003))
    assert r["sentence"] == ("Rank 4 is the smallest rank shown equivalent to the reference within +-0.01 (90 % interval "
                             "-0.0070 to +0.0010); this says nothing of the larger ranks beyond their own verdicts.")
    assert "within +-0.02 " in smallest_equivalent(cands)["sentence"]  # each result's own margin
    none = smallest_equivalent(cands, margin=0.001)
    assert none == {"rank": None, "ci90": None, "ci95": None, "diff": None, "equivalent_ranks": [],
                    "verdicts": {2: UNRESOLVED, 4: UNRESOLVED},
                    "sentence": "No rank among [2, 4] was shown equivalent to the reference within +-0.001."}
    tight = {2: result((-0.03, 0.001), (-0.028, -0.002), margin=0.001)}
    assert smallest_equivalent(tight)["sentence"] == ("No rank among [2] was shown equivalent to the reference within "
                                                      "its margin.")
    # with a margin given, the candidates need no margin of their own
    bare = {4: {"ci95": (-0.008, 0.002), "ci90": (-0.007, 0.001), "diff": -0.003}}
    assert smallest_equivalent(bare, margin=0.01)["rank"] == 4


def test_standard_errors_at_their_bounds():
    assert binomial_se(0.5, 1) == 0.5 and binomial_se(0.0, 10) == 0.0 and binomial_se(1.0, 10) == 0.0
    assert unpaired_difference_se(0.5, 0.5, 1, 1) == pytest.approx(math.sqrt(0.5))


def test_boolean_and_integer_inputs_are_scores():
    r = paired_bootstrap([True, False, True], [False, False, True], n_boot=50)
    assert r["diff"] == pytest.approx(1 / 3)
    assert compare([1, 0, 1, 1], [True, False, False, True], margin=0.5, n_boot=50)["diff"] == pytest.approx(0.25)


@pytest.mark.parametrize("call,message", [
    (lambda: mcnemar_exact([1, 0, 1], [1, 0]), "correct_a and correct_b must score the same examples, got lengths 3 and 2."),
    (lambda: mcnemar_exact([0, 1, 2, 3, 4, 5, 6], [0] * 7),
     "correct_a must hold 0/1 (or boolean) correctness values, got [0.0, 1.0, 2.0, 3.0, 4.0]."),
    (lambda: mcnemar_exact([0, 1], [0, 2]), "correct_b must hold 0/1 (or boolean) correctness values, got [0.0, 2.0]."),
    (lambda: mcnemar_exact([], []), "correct_a must not be empty, got shape (0,)."),
    (lambda: paired_bootstrap([1.0, 2.0], [1.0, 2.0], level=1.0), "level must lie strictly between 0 and 1, got 1.0."),
    (lambda: paired_bootstrap([1.0, np.nan], [1.0, 2.0]), "a must hold finite numbers only, got NaN or infinity."),
    (lambda: paired_bootstrap([1.0, 2.0], [1.0, np.nan]), "b must hold finite numbers only, got NaN or infinity."),
    (lambda: paired_bootstrap([1.0, 2.0], [1.0, 2.0, 3.0]), "a and b must score the same examples (same shape), got (2,) and (3,)."),
    (lambda: paired_bootstrap([[1.0, 2.0]], [[1.0, 2.0]]), "a must be a 1-D array, got shape (1, 2)."),
    (lambda: paired_bootstrap([1.0, 2.0], [1.0, 2.0], n_boot=0), "n_boot must be a positive integer, got 0."),
    (lambda: paired_bootstrap([1.0, 2.0], [1.0, 2.0], n_boot=True), "n_boot must be a positive integer, got True."),
    (lambda: paired_bootstrap(["a", "b"], [1.0, 2.0]), "a must be a rectangular numeric array, got ragged or non-numeric input."),
    (lambda: hierarchical_bootstrap([[1, 0, 1], [1, 0]], [[1, 0, 1], [1, 0]]),
     "a must be a rectangular numeric array, got ragged or non-numeric input."),
    (lambda: hierarchical_bootstrap([1, 0, 1], [1, 0, 1]), "a must be a 2-D array, got shape (3,)."),
    (lambda: compare(np.ones((2, 2, 2)), np.ones((2, 2, 2)), margin=0.1), "a must be a 1-D or 2-D array, got shape (2, 2, 2)."),
    (lambda: tost([], 0.1), "diff_samples must not be empty, got shape (0,)."),
    (lambda: tost([0.1], 0.0), "margin must be a positive finite number, got 0.0."),
    (lambda: tost([0.1], 0.1, alpha=0.0), "alpha must lie strictly between 0 and 1, got 0.0."),
    (lambda: equivalence([1.0, 2.0], [1.0, 2.0], margin=-0.1), "margin must be a positive finite number, got -0.1."),
    (lambda: equivalence([1.0, 2.0], [1.0, 2.0], margin=0.1, alpha=0.5),
     "alpha must be below 0.5 for a (1 - 2 alpha) interval, got 0.5."),
    (lambda: compare([1.0, 2.0], [0.0, 0.0], margin=0.1, relative=True),
     "margin cannot be relative to mean(b) = 0; pass an absolute margin (relative=False)."),
    (lambda: compare(np.ones((3, 4)), np.ones((3, 4)), margin=0.05, hierarchical=False),
     "hierarchical=False would drop the seed-to-seed noise of 3 seeds; pass hierarchical=None or True."),
    (lambda: compare(np.ones(4), np.ones(4), margin=0.05, hierarchical=True),
     "hierarchical=True needs (seeds x examples) arrays a and b, got 1-D vectors."),
    (lambda: verdict((0, 1), (0, 1), 0.0), "margin must be a positive finite number, got 0.0."),
    (lambda: verdict((1, 0), (0, 1), 0.1), "interval_95 must be a finite (low, high) pair with low <= high, got (1, 0)."),
    (lambda: verdict((0, 1), (1, 0), 0.1), "interval_90 must be a finite (low, high) pair with low <= high, got (1, 0)."),
    (lambda: spearman_with_ci([1, 2, 3], [1, 2]), "a and b must score the same examples (same shape), got (3,) and (2,)."),
    (lambda: smallest_equivalent({}, 0.1), "candidates must hold at least one rank -> compare(...) result."),
    (lambda: smallest_equivalent({4: {"ci95": (0.0, 0.1)}}, 0.1),
     "candidates[4] must be a compare(...) result; it lacks ci90, diff."),
    (lambda: smallest_equivalent({4: {"ci95": (0.0, 0.1), "ci90": (0.0, 0.1), "diff": 0.05}}),
     "candidates[4] must be a compare(...) result; it lacks margin."),
    (lambda: binomial_se(1.5, 10), "p must be a proportion in [0, 1], got 1.5."),
    (lambda: binomial_se(0.5, 0), "n must be a positive count, got 0."),
    (lambda: unpaired_difference_se(1.5, 0.5, 10, 10), "p1 must be a proportion in [0, 1], got 1.5."),
    (lambda: unpaired_difference_se(0.5, 1.5, 10, 10), "p2 must be a proportion in [0, 1], got 1.5."),
    (lambda: unpaired_difference_se(0.5, 0.5, 0, 10), "n1 must be a positive count, got 0."),
    (lambda: unpaired_difference_se(0.5, 0.5, 10, 0), "n2 must be a positive count, got 0."),
])
def test_bad_input_is_one_sentence_naming_the_argument(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value) == message


# ---------------------------------------------------------------- replicates of several means, and intervals

def manual_hierarchical(d: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """The hierarchical bootstrap of a (seeds x examples) mean as documented, one replicate at a time: every
    replicate's example indices drawn first (one block), then its seed indices, from default_rng(seed)."""
    S, N = d.shape
    rng = np.random.default_rng(seed)
    ie = rng.integers(0, N, size=(n_boot, N))
    iseed = rng.integers(0, S, size=(n_boot, S)) if S > 1 else np.zeros((n_boot, 1), dtype=int)
    return np.array([d[iseed[b]][:, ie[b]].mean() for b in range(n_boot)])


def test_replicate_means_resample_the_same_seeds_and_examples_for_every_array():
    rng = np.random.default_rng(30)
    a, b = rng.normal(size=(3, 25)), rng.normal(0.3, 1.0, size=(3, 25))
    reps = stats.replicate_means({"a": a, "b": b}, n_boot=200, seed=4)
    assert set(reps) == {"a", "b"} and reps["a"].shape == (200,)
    assert reps["a"] == pytest.approx(manual_hierarchical(a, 200, 4), abs=1e-12)
    assert reps["b"] == pytest.approx(manual_hierarchical(b, 200, 4), abs=1e-12)
    # the same draws for both: the difference of the replicates is the replicates of the difference
    assert reps["a"] - reps["b"] == pytest.approx(manual_hierarchical(a - b, 200, 4), abs=1e-12)
    one = stats.replicate_means({"x": a[:1]}, n_boot=150, seed=9)["x"]  # one seed: the paired bootstrap
    assert one == pytest.approx(manual_mean_replicates(a[0], 150, 9), abs=1e-12)
    assert stats.replicate_means({"x": a}, n_boot=7, seed=1)["x"] == pytest.approx(
        stats.replicate_means({"x": a, "y": b}, n_boot=7, seed=1)["x"], abs=0)
    # a ratio of means (a share of a gain kept) gets its interval from the same replicates
    gain = (reps["b"] - reps["a"]) / reps["b"]
    assert np.isfinite(gain).all()


def test_replicate_means_refuses_bad_input_in_one_sentence():
    a = np.ones((2, 5))
    with pytest.raises(ValueError, match=r"^arrays must hold at least one \(seeds x examples\) array\.$"):
        stats.replicate_means({})
    with pytest.raises(ValueError, match=r"^arrays must share one \(seeds x examples\) shape, got \[\(2, 4\), \(2, 5\)\]\.$"):
        stats.replicate_means({"a": a, "b": np.ones((2, 4))})
    with pytest.raises(ValueError, match=r"^n_boot must be a positive integer, got 0\.$"):
        stats.replicate_means({"a": a}, n_boot=0)
    with pytest.raises(ValueError, match=r"^a must be a 2-D array, got shape \(5,\)\.$"):
        stats.replicate_means({"a": np.ones(5)})


def test_mean_interval_is_the_percentile_interval_of_the_mean():
    rng = np.random.default_rng(31)
    x = rng.normal(0.5, 1.0, size=60)
    manual = manual_mean_replicates(x, 400, 3)
    assert stats.mean_interval(x, n_boot=400, seed=3) == pytest.approx(
        tuple(np.quantile(manual, [0.025, 0.975])), abs=1e-12)
    assert stats.mean_interval(x, n_boot=400, seed=3, level=0.8) == pytest.approx(
        tuple(np.quantile(manual, [0.1, 0.9])), abs=1e-12)
    lo, hi = stats.mean_interval(x)
    assert lo < x.mean() < hi and stats.mean_interval(x) == stats.mean_interval(x, 2000, 0, 0.95)
    grid = rng.normal(size=(3, 20))
    assert stats.mean_interval(grid, n_boot=100, seed=2) == pytest.approx(
        tuple(np.quantile(manual_hierarchical(grid, 100, 2), [0.025, 0.975])), abs=1e-12)
    with pytest.raises(ValueError, match=r"^level must lie strictly between 0 and 1, got 1\.0\.$"):
        stats.mean_interval(x, level=1.0)
    with pytest.raises(ValueError, match=r"^a must be a 1-D or 2-D array, got shape \(1, 1, 2\)\.$"):
        stats.mean_interval(np.ones((1, 1, 2)))


def test_interval_drops_non_finite_replicates():
    samples = np.array([np.nan, 1.0, np.inf, 2.0, 3.0, 4.0, -np.inf, 5.0])
    assert stats.interval(samples) == pytest.approx(tuple(np.quantile([1, 2, 3, 4, 5], [0.025, 0.975])))
    assert stats.interval(samples, level=0.5) == pytest.approx((2.0, 4.0))
    lo, hi = stats.interval([np.nan, np.inf])
    assert math.isnan(lo) and math.isnan(hi)
    assert stats.interval([7.0]) == (7.0, 7.0)
    with pytest.raises(ValueError, match=r"^level must lie strictly between 0 and 1, got 0\.$"):
        stats.interval([1.0, 2.0], level=0)
