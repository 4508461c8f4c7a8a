"""The (seeds × examples) inference of analysis/crossed.py: known answers on planted components, and simulated
studies in an example-dominated and a seed-dominated regime whose true difference is known (coverage of the 95 %
interval, TOST's false equivalence on the margin), the several-ranks claim's family-wise error, power, and the
sequential looks' error rates."""
import math

import numpy as np
import pytest

from lora_study.analysis import crossed as C

MC_ERROR = 2  # a nominal 5 % rate is allowed two Monte-Carlo standard errors above it: a test exact at the margin
# sits at 5 % and would fail half the time on a bound without room
REGIMES = {  # (seeds, examples, seed sd of the difference, example sd, residual sd)
    "example-dominated": (3, 2000, 0.0, 0.25, 0.25),
    "seed-dominated": (3, 2000, 0.03, 0.05, 0.3),
}


def planted(rng, seeds, examples, sd_seed, sd_example, sd_residual, shift=0.0):
    return shift + rng.normal(0, sd_seed, (seeds, 1)) + rng.normal(0, sd_example, (1, examples)) + \
        rng.normal(0, sd_residual, (seeds, examples))


def probabilities(rng, seeds, examples, sd_seed, disagree, shift=0.0):
    """Each method's probability of being right: every example has an easiness shared by both methods and every
    seed; the methods disagree on a ``disagree`` share of examples in a direction drawn per example (an example
    effect on the difference), and each seed moves them apart by its own amount (a seed effect)."""
    easy = rng.beta(2, 1, examples)
    lean = np.where(rng.random(examples) < disagree, rng.choice([-0.4, 0.4], examples), 0.0)
    u = rng.normal(0, sd_seed, (seeds, 1))
    return np.clip(easy + lean / 2 + u / 2 + shift / 2, 0, 1), np.clip(easy - lean / 2 - u / 2 - shift / 2, 0, 1)


def binary_pairs(rng, seeds, examples, sd_seed, disagree, shift=0.0):
    """0/1 correctness of the two methods (one draw per seed and example: a and b share the example's luck)."""
    pa, pb = probabilities(rng, seeds, examples, sd_seed, disagree, shift)
    noise = rng.random((seeds, examples))
    return (noise < pa).astype(float), (noise < pb).astype(float)


def test_components_on_exact_rows_and_columns():
    rows, cols = np.array([0.1, -0.2, 0.4]), np.linspace(-1, 1, 50)
    c = C.components(rows[:, None] + cols[None, :])
    assert c.var_residual == pytest.approx(0, abs=1e-12)
    assert c.var_seed == pytest.approx(rows.var(ddof=1)) and c.var_example == pytest.approx(cols.var(ddof=1))
    assert c.mean == pytest.approx(rows.mean() + cols.mean())
    # V = var_seed / S + var_example / N (no residual): the seeds' and the examples' parts
    assert c.se ** 2 == pytest.approx(rows.var(ddof=1) / 3 + cols.var(ddof=1) / 50)


def test_components_recover_planted_variances():
    rng = np.random.default_rng(0)
    d = planted(rng, 40, 3000, 0.05, 0.2, 0.3)
    c = C.components(d)
    assert c.var_seed == pytest.approx(0.05 ** 2, rel=0.5)  # 39 degrees of freedom
    assert c.var_example == pytest.approx(0.2 ** 2, rel=0.1)
    assert c.var_residual == pytest.approx(0.3 ** 2, rel=0.02)
    assert 0.6 < c.share_of_seeds() < 0.95  # (0.05² / 40) against 0.2² / 3000 and 0.3² / 120,000: about 0.8


def test_one_seed_is_the_paired_interval_over_examples():
    rng = np.random.default_rng(1)
    d = rng.normal(0.1, 1.0, 500)
    c = C.components(d)
    assert c.seeds == 1 and c.df == 499 and c.se == pytest.approx(d.std(ddof=1) / math.sqrt(500))
    assert c.share_of_seeds() == 0


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_coverage_and_tost_false_equivalence_in_both_regimes(regime):
    S, N, ss, se, sw = REGIMES[regime]
    rng = np.random.default_rng(2)
    reps, margin = 4000, 0.02
    covered = false_equivalent = 0
    for _ in range(reps):
        d = planted(rng, S, N, ss, se, sw, shift=margin)  # the true difference sits on the margin
        c = C.components(d)
        lo, hi = c.interval(0.95)
        covered += lo <= margin <= hi
        false_equivalent += C.verdict(c, margin) == C.EQUIVALENT
    assert covered / reps >= 0.93
    assert false_equivalent / reps <= 0.05 + MC_ERROR * math.sqrt(0.05 * 0.95 / reps)


@pytest.mark.parametrize("sd_seed", [0.0, 0.04])
def test_coverage_on_paired_correctness(sd_seed):
    """0/1 scores as the study has them, with and without a seed effect: the interval of the difference covers the
    population's difference (the mean of pa - pb over a million examples and the seeds' symmetric effect) at least
    93 % of the time."""
    rng = np.random.default_rng(3)
    truth = np.subtract(*probabilities(rng, 1, 10 ** 6, 0.0, 0.2, 0.01)).mean()
    covered, reps = 0, 800
    for _ in range(reps):
        a, b = binary_pairs(rng, 3, 1500, sd_seed, 0.2, 0.01)
        lo, hi = C.difference(a, b).interval(0.95)
        covered += lo <= truth <= hi
    assert covered / reps >= 0.93


def test_holm_and_the_fixed_sequence_keep_the_several_ranks_claim_at_alpha():
    """Four ranks, each truly on the margin: "some rank is equivalent" would be a false "holds". Testing each rank
    alone and taking any equivalence inflates that error; Holm over the ranks' TOST p (the study's procedure) and the
    fixed sequence from the largest rank down each keep it at most 5 %."""
    rng = np.random.default_rng(4)
    reps, margin, any_alone, by_sequence, by_holm = 3000, 0.02, 0, 0, 0
    for _ in range(reps):
        tests = {r: C.compare(planted(rng, 3, 2000, 0.0, 0.25, 0.25, shift=margin * rng.choice([-1, 1])),
                              np.zeros((3, 2000)), margin) for r in (1, 4, 16, 64)}
        verdicts = {r: t["verdict"] for r, t in tests.items()}
        any_alone += any(v == C.EQUIVALENT for v in verdicts.values())
        by_sequence += C.fixed_sequence(verdicts)["smallest"] is not None
        by_holm += C.holm({r: t["p_tost"] for r, t in tests.items()})["smallest"] is not None
    bound = 0.05 + MC_ERROR * math.sqrt(0.05 * 0.95 / reps)
    assert by_sequence / reps <= bound and by_holm / reps <= bound
    assert any_alone / reps > 0.1 > max(by_sequence, by_holm) / reps


def test_holm_finds_an_equivalent_rank_below_one_that_differs():
    """Three ranks truly equivalent (difference 0), the largest truly off by twice the margin: Holm shows the smaller
    ranks equivalent in most simulated studies; the fixed sequence stops at the largest and shows none."""
    rng = np.random.default_rng(5)
    reps, margin, holm_found, seq_found = 200, 0.03, 0, 0
    for _ in range(reps):
        tests = {r: C.compare(planted(rng, 3, 2000, 0.0, 0.25, 0.25, shift=(2 * margin if r == 64 else 0.0)),
                              np.zeros((3, 2000)), margin) for r in (1, 4, 16, 64)}
        holm = C.holm({r: t["p_tost"] for r, t in tests.items()})
        holm_found += holm["smallest"] == 1 and 64 not in holm["equivalent"]
        seq_found += C.fixed_sequence({r: t["verdict"] for r, t in tests.items()})["smallest"] is not None
    assert holm_found / reps > 0.8 and seq_found == 0


def test_holm_steps_down_through_the_levels():
    h = C.holm({1: 0.2, 4: 0.01, 16: 0.016, 64: 0.03})
    # 0.01 <= 0.05/4, 0.016 <= 0.05/3, 0.03 > 0.05/2: stops at r = 64
    assert (h["equivalent"], h["smallest"], h["stopped_at"]) == ([4, 16], 4, 64)
    assert h["levels"] == {4: 0.0125, 16: 0.05 / 3, 64: 0.025}
    assert C.holm({1: 0.03, 4: 0.3})["smallest"] is None  # 0.03 > 0.05 / 2
    assert C.holm({1: 0.001, 4: float("nan")})["equivalent"] == [1]


def test_fixed_sequence_is_monotone():
    E, D, U = C.EQUIVALENT, C.DIFFERENT, C.UNRESOLVED
    assert C.fixed_sequence({1: E, 4: E, 16: E, 64: E}) == {"smallest": 1, "equivalent": [1, 4, 16, 64],
                                                            "stopped_at": None}
    # r = 4 equivalent with r = 16 different: the sequence stops at 16, so r = 4 is not claimed
    assert C.fixed_sequence({1: D, 4: E, 16: D, 64: E}) == {"smallest": 64, "equivalent": [64], "stopped_at": 16}
    assert C.fixed_sequence({1: E, 64: U})["smallest"] is None


def test_power_and_the_design_that_reaches_a_margin():
    rng = np.random.default_rng(5)
    c = C.components(planted(rng, 3, 1000, 0.002, 0.2, 0.25))
    m = C.resolvable(c)
    assert C.power_at(c, m) == pytest.approx(0.8, abs=1e-6)
    # the interval's half-width is random through the seeds' part: more than the plug-in h + z se is needed
    assert m > c.half_width(0.95) + C.t_quantile(0.9, 1e9) * c.se
    # one seed, large N: the anchor's (1.645 + 1.28) SE
    one = C.Components(0.0, 0.0, 1.0, 0.0, 1, 10 ** 9, 1.0, 1e9)
    assert C.resolvable(one) == pytest.approx(1.645 + 1.2816, abs=1e-3)
    # more examples shrink the resolvable margin; the examples needed for a margin give it
    n = C.examples_needed(c, m / 2, seeds=3)
    assert n is not None and n > 1000
    assert C.resolvable(C.design_components(c, 3, n)) <= m / 2 < C.resolvable(C.design_components(c, 3, n - 1))
    # the power the planted (true) components give at that design is what simulated studies find (true difference
    # 0); the plan itself reads the measured components, which put the seeds' variance at 0 here
    truth = C.from_parts(0.0, 0.002 ** 2, 0.2 ** 2, 0.25 ** 2, 3, n)
    hits, reps = 0, 400
    for _ in range(reps):
        hits += C.verdict(C.components(planted(rng, 3, n, 0.002, 0.2, 0.25)), m / 2) == C.EQUIVALENT
    assert abs(hits / reps - C.power_at(truth, m / 2)) <= 2.5 * math.sqrt(0.25 / reps)
    assert C.power_at(C.design_components(c, 3, n), m / 2) == pytest.approx(0.8, abs=0.01)
    # a seed variance no example count can beat at three seeds
    seedy = C.components(planted(rng, 3, 1000, 0.05, 0.0, 0.3))
    assert C.examples_needed(seedy, 0.01, seeds=3) is None and C.seeds_needed(seedy, 0.05, 1000) is not None


def test_the_interval_covers_in_the_tails_where_a_single_t_does_not():
    """Three seeds × 6,000 examples with the seeds carrying about three quarters of the variance (the default
    study's regime): TOST at 5 % / 4 on a difference on the margin. A single t on Satterthwaite's df declares it
    equivalent about twice as often as its level; Banerjee's interval stays at or under it, and every p-value is the
    level at which its interval decides."""
    rng = np.random.default_rng(11)
    reps, margin, alpha, ours, single = 2000, 0.03, 0.0125, 0, 0
    for _ in range(reps):
        d = planted(rng, 3, 6000, 0.012, 0.25, 0.3, shift=margin)
        c = C.components(d)
        ours += C.verdict(c, margin, alpha) == C.EQUIVALENT
        h = C.t_quantile(1 - alpha, c.df) * c.se
        single += -margin < c.mean - h and c.mean + h < margin
    assert ours / reps <= alpha + MC_ERROR * math.sqrt(alpha * (1 - alpha) / reps) < single / reps
    r = C.compare(d, np.zeros_like(d), margin)
    for level in (0.01, 0.05, 0.2):
        lo, hi = C.components(d).interval(1 - 2 * level)
        assert (r["p_tost"] <= level) == (-margin < lo and hi < margin)


def test_spending_sums_to_alpha():
    alphas = C.look_alphas([3, 5, 7, 10], 10)
    assert sum(alphas) == pytest.approx(0.05) and all(a > 0 for a in alphas)
    assert C.spent(0.05, 1.0) == pytest.approx(0.05)


def test_compare_reports_the_verdict_and_its_design():
    rng = np.random.default_rng(6)
    a = planted(rng, 3, 3000, 0.0, 0.2, 0.2, shift=0.0)
    r = C.compare(a, np.zeros_like(a), margin=0.05)
    assert r["verdict"] == C.EQUIVALENT and r["p_tost"] < 0.05 and r["ci90"][0] > -0.05
    assert r["resolvable_margin"] < 0.05 and r["n_seeds"] == 3 and r["n_examples"] == 3000
    far = C.compare(a + 0.1, np.zeros_like(a), margin=0.05)
    # three seeds: the seeds' part on 2 df bounds how small a p can get
    assert far["verdict"] == C.DIFFERENT and far["p_difference"] < 0.005


@pytest.mark.parametrize("call, message", [
    (lambda: C.components(np.ones((2, 1))), "x must hold at least two examples per seed, got 1."),
    (lambda: C.components([[1.0, np.nan]]), "x must hold finite numbers only, got NaN or infinity."),
    (lambda: C.difference(np.ones((2, 3)), np.ones((3, 3))),
     "a and b must score the same seeds and examples (same shape), got (2, 3) and (3, 3)."),
    (lambda: C.compare(np.ones((2, 3)), np.ones((2, 3)), margin=0), "margin must be a positive finite number, got 0."),
    (lambda: C.spent(0.05, 0), "the information fraction must lie in (0, 1], got 0."),
])
def test_bad_input_is_one_sentence(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value) == message


def test_the_design_table_keeps_one_set_of_columns_when_rows_have_their_own_margins():
    """A forgetting row in KL carries a margin of its own beside the accuracy rows': the formatted design table names
    each row's margin in a column, so every row fills the same columns (no column per margin, none left empty)."""
    import pandas as pd
    from lora_study.analysis.measures import design
    rng = np.random.default_rng(7)
    rows = []
    for i, (margin, score) in enumerate([(0.01, "accuracy"), (math.log(1.01), "kl")]):
        c = C.components(planted(rng, 3, 500, 0.01, 0.1, 0.2))
        rows.append({"title": "LoRA", "rank": 4.0, "score": score, "diff": c.mean, "var_seed": c.var_seed,
                     "var_example": c.var_example, "var_residual": c.var_residual, "seeds": c.seeds,
                     "examples": c.examples, "se": c.se, "df": c.df, "margin": margin})
    t = design.formatted(design.design_rows(pd.DataFrame(rows), pd.DataFrame()))
    assert list(t.margin) == ["±0.01", "±0.00995"]
    assert [c for c in t.columns if c.startswith("examples for")] == [
        f"examples for the margin at {s} seeds" for s in design.SEEDS_PLANNED]
    assert not t.isna().any().any() and "nan" not in t.to_string()


def test_the_design_table_powers_each_rank_at_the_level_its_family_tests_it():
    """Four ranks of one family: each rank's resolvable margin and the examples it needs are at 5 % / 4 (Holm's first
    level), wider than the same comparison alone at 5 %; a family of one rank keeps 5 %."""
    import pandas as pd
    from lora_study.analysis.measures import design
    rng = np.random.default_rng(8)
    c = C.components(planted(rng, 3, 2000, 0.01, 0.1, 0.2))
    row = {"title": "LoRA", "score": "accuracy", "diff": c.mean, "var_seed": c.var_seed, "family": "lora",
           "var_example": c.var_example, "var_residual": c.var_residual, "seeds": c.seeds,
           "examples": c.examples, "se": c.se, "df": c.df, "margin": 0.03}
    four = design.design_rows(pd.DataFrame([{**row, "rank": float(r)} for r in (1, 4, 16, 64)]), pd.DataFrame())
    one = design.design_rows(pd.DataFrame([{**row, "rank": 4.0}]), pd.DataFrame())
    assert list(four.alpha) == [0.0125] * 4 and list(one.alpha) == [0.05]
    at_design = C.from_parts(c.mean, c.var_seed, c.var_example, c.var_residual, 3, 2000)
    assert four.resolvable_margin.iloc[0] == pytest.approx(C.resolvable(at_design, 0.8, 0.0125))
    assert four.resolvable_margin.iloc[0] > one.resolvable_margin.iloc[0]
    assert four.examples_at_10_seeds.iloc[0] >= one.examples_at_10_seeds.iloc[0]
    assert "α = 0.0125" in design.finding(four)[0]
