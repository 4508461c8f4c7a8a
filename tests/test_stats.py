"""analysis/stats.py: McNemar against scipy, bootstrap coverage and pairing, hierarchical seeds, TOST verdicts."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from analysis.stats import (DIFFERENT, EQUIVALENT, UNRESOLVED, binomial_se, compare, equivalence,
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


@pytest.mark.parametrize("call,word", [
    (lambda: mcnemar_exact([1, 0, 1], [1, 0]), "same examples"),
    (lambda: mcnemar_exact([1, 0, 2], [1, 0, 1]), "correct_a must hold 0/1"),
    (lambda: mcnemar_exact([], []), "correct_a must not be empty"),
    (lambda: paired_bootstrap([1.0, 2.0], [1.0, 2.0], level=1.0), "level"),
    (lambda: paired_bootstrap([1.0, 2.0], [1.0, np.nan]), "b must hold finite"),
    (lambda: paired_bootstrap([1.0, 2.0], [1.0, 2.0], n_boot=0), "n_boot"),
    (lambda: equivalence([1.0, 2.0], [1.0, 2.0], margin=-0.1), "margin"),
    (lambda: compare([1.0, 2.0], [0.0, 0.0], margin=0.1, relative=True), "mean\\(b\\) = 0"),
    (lambda: compare([1, 0], [1, 0], margin=0.1, alpha=0.0), "alpha"),
    (lambda: spearman_with_ci([1, 2, 3], [1, 2]), "same examples"),
    (lambda: smallest_equivalent({}, 0.1), "candidates"),
    (lambda: smallest_equivalent({4: {"ci95": (0.0, 0.1)}}, 0.1), "candidates\\[4\\] .* lacks ci90, diff"),
    (lambda: equivalence([1.0, 2.0], [1.0, 2.0], margin=0.1, alpha=0.5), "alpha must be below 0.5"),
])
def test_bad_input_names_the_argument(call, word):
    with pytest.raises(ValueError, match=word):
        call()
