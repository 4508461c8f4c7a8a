"""The several-ranks claim says no more than its procedure shows: a rank equivalent on its own test below the rank
where the fixed sequence stopped is neither shown equivalent nor evidence that none is."""
import pandas as pd

from analysis import crossed
from analysis.claims import FAILS, HOLDS, UNRESOLVED
from analysis.measures.verdicts import reach_claims

E, D, U = crossed.EQUIVALENT, crossed.DIFFERENT, crossed.UNRESOLVED


class Ctx:
    def __init__(self, verdicts, resolvable=0.02, margin=0.03, seeds=3):
        ranks = sorted(verdicts)
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
                                    "resolvable_margin": resolvable, "p_tost": 0.04 if verdicts[r] == E else 0.3}
                                   for r in ranks])}

    def table(self, name):
        return self.tables[name]


def claim(verdicts, **kw):
    (c,) = reach_claims(Ctx(verdicts, **kw))
    return c


def test_an_equivalent_rank_the_sequence_does_not_reach_leaves_the_claim_unresolved():
    c = claim({1: D, 4: E, 16: U, 64: D})
    assert c.verdict == UNRESOLVED
    assert "r = 4 is equivalent on its own test" in c.why and "none is ruled out" in c.why
    assert "shown equivalent" in c.measured and "TOST p = 0.04" in c.measured


def test_none_equivalent_with_power_does_not_hold_and_without_power_is_unresolved():
    assert claim({1: D, 4: U, 16: U, 64: D}).verdict == FAILS
    c = claim({1: D, 4: U, 16: U, 64: D}, resolvable=0.05)
    assert c.verdict == UNRESOLVED and "resolves only ±0.050" in c.why


def test_the_sequence_from_the_largest_rank_names_the_smallest_equivalent_rank():
    c = claim({1: D, 4: E, 16: E, 64: E})
    assert c.verdict == HOLDS and "r = 4" in c.measured
