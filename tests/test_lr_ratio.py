"""LoRA's best learning rate over full FT's (analysis/measures/learning_rate.py), from planted validation grids: the
ratio per rank, the bracket the neighbouring rates give, and the verdict on "≈ 10× and independent of rank"."""
from types import SimpleNamespace

import pytest

from lora_study.analysis.claims import FAILS, HOLDS, NOT_MEASURED, UNRESOLVED
from lora_study.analysis.measures import learning_rate as L


def study(grid, ranks=(1, 4, 16), alpha=lambda r: 2 * r, family="lora"):
    runs = [SimpleNamespace(arm="full", family="full", title="full FT", is_reference=True,
                            record={"rank": None, "alpha": None})]
    runs += [SimpleNamespace(arm="lora", family=family, title="LoRA", is_reference=False,
                             record={"rank": r, "alpha": alpha(r)}) for r in ranks]
    return SimpleNamespace(index={"lr_evidence": grid}, runs=runs)


FULL = {1e-5: 0.70, 2e-5: 0.78, 4e-5: 0.74}  # best 2e-5, bracketed by 1e-5 and 4e-5 (2x steps)


def lora(best):  # a 2x grid around each planted optimum, one rate that did not learn above it
    return {best / 2: 0.75, best: 0.80, best * 2: 0.76, best * 4: None}


def test_ratio_and_bracket_come_from_the_best_rates_and_their_neighbours():
    t = L.rate_ratios(study({"full": FULL, "lora_r1": lora(2e-4), "lora_r4": lora(2e-4)}, ranks=(1, 4)))
    r1 = t[t["rank"] == 1].iloc[0]
    assert r1.ratio == pytest.approx(10) and r1.alpha_rule == "α = 2r"
    # LoRA's lower neighbour over full FT's upper, and the reverse
    assert r1.ratio_low == pytest.approx(1e-4 / 4e-5) and r1.ratio_high == pytest.approx(4e-4 / 1e-5)


def test_ten_times_at_every_rank_holds():
    claims = L.ratio_claims(study({"full": FULL, **{f"lora_r{r}": lora(2e-4) for r in (1, 4, 16)}},
                                  alpha=lambda r: 32))
    assert [c.verdict for c in claims] == [HOLDS] and "α = 32" in claims[0].claim
    assert "r=16 10×" in claims[0].measured


def test_a_ratio_that_moves_with_the_rank_does_not_hold():
    # α = 2r keeps α/r fixed, so the best rate falls as the rank grows: r = 1 at 100x, r = 16 at 1x
    c = L.ratio_claims(study({"full": FULL, "lora_r1": lora(2e-3), "lora_r4": lora(2e-4), "lora_r16": lora(2e-5)}))
    assert c[0].verdict == FAILS


def test_a_best_rate_at_the_grid_edge_leaves_it_unresolved():
    edge = {1e-4: 0.7, 2e-4: 0.8}  # the best is the largest rate tried
    c = L.ratio_claims(study({"full": FULL, "lora_r1": edge, "lora_r4": lora(2e-4)}, ranks=(1, 4)))
    assert c[0].verdict == UNRESOLVED and "open" in c[0].measured


def test_coarse_grids_leave_it_unresolved_and_no_full_grid_is_not_measured():
    coarse_full = {3e-5: None, 1e-4: 0.8, 3e-4: 0.78}
    coarse = {5e-4: None, 1.5e-3: 0.75, 5e-3: 0.77, 1.67e-2: None}
    c = L.ratio_claims(study({"full": coarse_full, "lora_r1": coarse, "lora_r4": coarse}, ranks=(1, 4)))
    assert c[0].verdict == UNRESOLVED and "too wide" in c[0].why
    assert L.ratio_claims(study({"lora_r1": lora(2e-4)}))[0].verdict == NOT_MEASURED
    # a rank-swept arm of another family is never read as LoRA's
    assert L.ratio_claims(study({"full": FULL, "lora_r1": lora(2e-4)}, family="toy"))[0].verdict == NOT_MEASURED


def test_a_rank_searched_but_not_trained_takes_its_arms_alpha_rule():
    t = L.rate_ratios(study({"full": FULL, "lora_r1": lora(2e-4), "lora_r4": lora(2e-4)}, ranks=(4,)))
    assert list(t.alpha_rule) == ["α = 2r", "α = 2r"]


def test_ten_times_on_a_3x_grid_is_unresolved_not_holds():
    """The best rates 10× apart, but on 3× grids the bracket spans 1–100×: the grid has not placed the ratio."""
    full = {1e-5 / 3: 0.70, 1e-5: 0.78, 3e-5: 0.74}
    grid = {f"lora_r{r}": {1e-4 / 3: 0.75, 1e-4: 0.80, 3e-4: 0.76} for r in (1, 16)}
    (c,) = L.ratio_claims(study({"full": full, **grid}, ranks=(1, 16)))
    assert c.verdict == UNRESOLVED and "too" in c.why and "r=1 10×" in c.measured


def test_an_arm_in_its_own_setting_is_read_against_full_ft_in_that_setting():
    """LoRA at batch 128 names full FT at batch 128 as its reference: its ratio reads that arm's grid, not full FT's
    at the study's batch; an arm with one searched rank gives no row of its own beside arms that sweep the rank."""
    st = study({"full": FULL, "full_bs128": {4e-5: 0.7, 8e-5: 0.8, 1.6e-4: 0.75},
                "lora_r1": lora(2e-4), "lora_r4": lora(2e-4), "lora_bs128_r1": lora(8e-4), "lora_bs128_r4": lora(8e-4),
                "lora_mlp_r4": lora(2e-4)}, ranks=(1, 4))
    st.runs += [SimpleNamespace(arm="full_bs128", family="full", title="full FT (batch 128)", is_reference=False,
                                record={"rank": None, "alpha": None})]
    st.runs += [SimpleNamespace(arm="lora_bs128", family="lora", title="LoRA (batch 128)", is_reference=False,
                                reference_arm="full_bs128", record={"rank": r, "alpha": 2 * r}) for r in (1, 4)]
    st.runs += [SimpleNamespace(arm="lora_mlp", family="lora", title="LoRA (MLP)", is_reference=False,
                                record={"rank": 4, "alpha": 8})]
    t = L.rate_ratios(st)
    b = t[t.arm == "lora_bs128"]
    assert set(b.full) == {"full_bs128"} and b.ratio.tolist() == pytest.approx([10, 10])
    assert set(t[t.arm == "lora"].full) == {"full"}
    assert [c.key for c in L.ratio_claims(st)] == ["lr_ratio:lora", "lr_ratio:lora_bs128"]


def test_a_best_ratio_outside_the_band_with_a_bracket_reaching_into_it_is_unresolved_and_says_so():
    # r = 1 at 100x, bracketed 25-400x by 2x grids: neither shown inside the band nor outside it
    c = L.ratio_claims(study({"full": FULL, "lora_r1": lora(2e-3), "lora_r4": lora(1e-3)}, ranks=(1, 4)))
    assert c[0].verdict == UNRESOLVED and "r=1 (100×)" in c[0].why and "too wide" not in c[0].why


def test_a_study_that_searched_an_arm_reads_that_arm_from_its_own_search_only():
    """The preset's shipped rows for an arm (another design's ranks, another grid) give way to the study's own search
    of that arm; rows of arms it did not search stay, and a row set to null is dropped."""
    st = study({"full": FULL, "lora_r64": lora(2e-5), "none": {0.1: 0.6, 0.3: 0.65}, "lora_r16": None}, ranks=(1, 4))
    st.runs.append(SimpleNamespace(arm="none", family="none", title="frozen base", is_reference=False, record={}))
    st.index["lr_search"] = {"grid": {"lora_r1": lora(2e-4), "lora_r4": lora(2e-4)}}
    assert sorted(L.evidence(st)) == ["full", "lora_r1", "lora_r4", "none"]
