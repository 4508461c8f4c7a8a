"""Verdict records that say no more than their tests show: the several-ranks claim (Holm over the ranks: a rank
equivalent on its own test but not at the family's level is neither shown equivalent nor evidence that none is; a rank
shown equivalent below one that differs still answers the question), forgetting non-inferiority (measurably more
forgetting within the margin does not refute it), and amplification's outliers named beside the median the prose
uses."""
import pandas as pd

from analysis import crossed
from analysis.claims import FAILS, HOLDS, UNRESOLVED
from analysis.measures.verdicts import reach_claims

E, D, U = crossed.EQUIVALENT, crossed.DIFFERENT, crossed.UNRESOLVED
P_TOST = {E: 0.04, U: 0.3, D: 0.6}  # an "equivalent" at 5 % alone, not at 5 % / 4


class Ctx:
    def __init__(self, verdicts, var_seed=1e-5, margin=0.03, seeds=3, p=None):
        ranks = sorted(verdicts)
        p = p or {}
        self.tables = {
            "runs": pd.DataFrame(
                [{"arm": "lora", "axis": "rank", "family": "lora", "order": 1, "title": "LoRA",
                  "member": f"lora_r{r}_s{s}", "reference": False, "did_not_learn": False}
                 for r in ranks for s in range(seeds)]
                + [{"arm": "full", "axis": None, "family": "full", "order": 0, "title": "full FT",
                    "member": f"full_s{s}", "reference": True, "did_not_learn": False} for s in range(seeds)]),
            "reach": pd.DataFrame([{"arm": "lora", "rank": r, "seeds": seeds, "examples": 6000, "margin": margin,
                                    "verdict": verdicts[r], "diff": -0.01 if verdicts[r] != D else -0.03,
                                    "diff_ci_low": -0.02, "diff_ci_high": 0.0, "ci90_low": -0.018, "ci90_high": -0.002,
                                    "var_seed": var_seed, "var_example": 0.05, "var_residual": 0.1,
                                    "p_tost": p.get(r, P_TOST[verdicts[r]])}
                                   for r in ranks])}

    def table(self, name):
        return self.tables[name]


def claim(verdicts, **kw):
    (c,) = reach_claims(Ctx(verdicts, **kw))
    return c


def test_a_rank_equivalent_alone_but_not_at_the_familys_level_leaves_the_claim_unresolved():
    c = claim({1: D, 4: E, 16: U, 64: D})  # r = 4's TOST p 0.04 is above Holm's first level, 0.05 / 4
    assert c.verdict == UNRESOLVED
    assert "r = 4 is equivalent on its own test" in c.why and "none is ruled out" in c.why
    assert "Holm" in c.why and "r = 4 at 0.0125" in c.why and "r = 1, r = 64 differ" in c.why
    assert "shown equivalent" in c.measured and "TOST p = 0.04" in c.measured


def test_holm_names_an_equivalent_rank_below_one_that_differs():
    """Unlike a fixed sequence from the largest rank down, Holm does not stop at r = 64 when it differs."""
    c = claim({1: D, 4: E, 16: E, 64: D}, p={4: 0.001, 16: 0.015})
    assert c.verdict == HOLDS and "r = 4" in c.measured
    assert "r = 4, r = 16 are shown equivalent" in c.why and "r = 1, r = 64 differ" in c.why
    # r = 16's p 0.015 passes at the second level, 0.05 / 3, only because r = 4 passed at the first
    c = claim({1: D, 4: E, 16: E, 64: D}, p={4: 0.02, 16: 0.015})
    assert c.verdict == UNRESOLVED and "it stops at r = 16" in c.why


def test_none_equivalent_with_power_does_not_hold_and_without_power_is_unresolved():
    c = claim({1: D, 4: U, 16: U, 64: D})  # 3 seeds × 6,000 examples resolve ±0.028 at 5 % / 4 with these parts
    assert c.verdict == FAILS and "±0.028" in c.why and "α = 0.0125" in c.why  # power at each rank's level
    c = claim({1: D, 4: U, 16: U, 64: D}, var_seed=2e-4)
    assert c.verdict == UNRESOLVED and "resolves only ±0.075" in c.why


class ForgettingCtx:
    """One family's pooled accuracy-drop rows against full FT, each rank with its verdict and 95 % interval."""

    def __init__(self, rows, margin=0.03):
        from analysis.measures.forgetting import FORGETS_LESS, FORGETS_MORE, NO_MORE
        names = {"less": FORGETS_LESS, "more": FORGETS_MORE, "no_more": NO_MORE, "unresolved": U}
        self.tables = {
            "runs": Ctx({1: U}).tables["runs"],
            "forgetting_vs_full": pd.DataFrame([{
                "arm": "lora", "value": r, "tasks": "mean", "unit": "accuracy", "task_list": "bbc_topic",
                "seeds": 3, "examples": 200, "minus_full": (lo + hi) / 2, "minus_full_low": lo, "minus_full_high": hi,
                "margin": margin, "verdict": names[v]} for r, (v, lo, hi) in rows.items()])}

    def table(self, name):
        return self.tables[name]


def forgetting(rows):
    from analysis.measures.verdicts import forgetting_claims
    return {c.key.split(":")[0]: c for c in forgetting_claims(ForgettingCtx(rows))}


def test_forgetting_measurably_more_but_within_the_margin_does_not_refute_no_worse():
    c = forgetting({1: ("unresolved", -0.07, 0.07), 64: ("more", 0.010, 0.043)})
    assert c["forgetting_bound"].verdict == UNRESOLVED and "0 more by more than the margin" in c["forgetting_bound"].why
    assert c["forgetting_less"].verdict == FAILS  # r = 64 forgets measurably more than full FT
    c = forgetting({1: ("unresolved", -0.07, 0.07), 64: ("more", 0.035, 0.06)})
    assert c["forgetting_bound"].verdict == FAILS
    c = forgetting({1: ("no_more", -0.02, 0.01), 64: ("less", -0.05, -0.01)})
    assert c["forgetting_bound"].verdict == HOLDS


def test_an_amplification_outlier_is_named_with_its_groups_median():
    """A factor whose denominator came near 0 (one seed of W_q at r = 1) is named beside its group's median, which
    the prose uses instead of the mean."""
    from analysis.measures.amplification import finding
    a = pd.DataFrame([{"arm": "lora", "label": "LoRA r=1", "kind": "query", "r": 1, "seed": s, "layer": 5,
                       "factor": f} for s, f in enumerate((1.5, 1.8, 33.5))])
    runs = pd.DataFrame([{"arm": "lora", "axis": "rank"}])
    text = finding(a, runs)
    assert "r = 1: 1.8" in text  # the median, not the mean 12.3
    assert "seed 2: 33.5 (median 1.8)" in text
