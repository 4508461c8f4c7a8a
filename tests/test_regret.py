"""LoRA Without Regret at small scale (analysis/measures/regret.py): each LoRA arm against full FT in its own setting,
on planted per-example outputs whose answers are known (LoRA's gap to full FT is planted per arm, seed and example),
the claims' verdicts both ways, and an arm's reference and training settings through a tiny study and its report."""
import json

import numpy as np
import pytest

from analysis.claims import FAILS, HOLDS, NOT_MEASURED, TOO_LITTLE
from analysis.loader import Run, Study
from analysis.measures import regret as R

N = 2000
BUDGET = {"max_steps": 120, "batch_size": 16, "grad_accum": 1, "max_length": 64}


class _Dir:
    def metrics(self):
        return []


def _run(member, arm, seed, correct, *, value=None, family="lora", role="treatment", train=None, reference=None,
         options=None, trainable=1000, alpha=None):
    record = {"id": member, "method": "lora" if family == "lora" else family, "family": family, "arm": arm,
              "title": arm, "label": arm, "axis": "rank" if value is not None else None, "value": value,
              "role": role, "variant": None, "order": 2 if family == "lora" else 1, "seed": seed, "lr": 1e-3,
              "options": options or {}, "alpha": alpha if alpha is not None else (2 * value if value else None)}
    if train:
        record["train"] = train
    if reference:
        record["reference_arm"] = reference
    summary = {"saved": {"predictions": True}, "params": {"trainable": trainable},
               "learning": {"did_not_learn": bool(correct.mean() == 0 or correct.mean() == 1)}}
    return Run(member, record, _Dir(), summary, _predictions={"test.correct": correct.astype(np.float64)})


def planted(gaps, seeds=3, full_acc=0.8):
    """A study of full FT per setting and LoRA arms whose per-example correctness is full FT's with a planted share
    of its correct answers turned wrong (gap < 0) or wrong ones right (gap > 0), per seed and example.
    ``gaps``: {(arm, rank): (gap, setting arm or None, train settings, options)}."""
    rng = np.random.default_rng(0)
    runs = []
    refs = {None: {}}
    settings = {ref: train for (_, _), (_, ref, train, *_) in gaps.items() if ref}
    for s in range(seeds):
        refs[None][s] = rng.random(N) < full_acc
        runs.append(_run(f"full_s{s}", "full", s, refs[None][s], family="full", role="reference"))
        for ref, train in settings.items():
            refs.setdefault(ref, {})[s] = rng.random(N) < full_acc
            runs.append(_run(f"{ref}_s{s}", ref, s, refs[ref][s], family="full", train=train))
    for (arm, rank), (gap, ref, train, options, *alpha) in gaps.items():
        for s in range(seeds):
            base = refs[ref][s].copy()
            k = int(round(abs(gap) * N))
            pool = np.flatnonzero(base if gap < 0 else ~base)
            flip = rng.choice(pool, size=k, replace=False) if k else []
            base[flip] = ~base[flip]
            noise = rng.choice(N, size=20, replace=False)  # a little per-seed noise, both ways
            base[noise] = rng.random(20) < full_acc
            runs.append(_run(f"{arm}_r{rank}_s{s}", arm, s, base, value=rank, train=train, reference=ref,
                             options=options, alpha=alpha[0] if alpha else None))
    study = object.__new__(Study)
    study.index = {"shared": {"budget": BUDGET}, "study": {"margin": 0.03}}
    study.runs, study.skipped = runs, {}
    return study


ALL = {"target_modules": "all_linear"}
MATCHED = {"target_modules": "attn", "match_params": "all_linear"}
EX480 = {"max_steps": 30}
EX7680 = {"max_steps": 480}
BS8 = {"batch_size": 8, "max_steps": 240}
BS128 = {"batch_size": 128, "max_steps": 15}


def placement(all_gap, matched_gap, seeds=3):
    return planted({("lora", 4): (-0.01, None, None, None), ("lora_all", 4): (all_gap, None, None, ALL),
                    ("lora_attn_matched", 4): (matched_gap, None, None, MATCHED)}, seeds=seeds)


def test_every_arm_is_compared_with_full_ft_in_its_own_setting():
    st = planted({("lora", 1): (0.0, None, None, None), ("lora_bs128", 1): (-0.08, "full_bs128", BS128, None)})
    t = R.regret_table(st)
    row = t.set_index("arm").loc["lora_bs128"]
    assert row.reference == "full_bs128" and row.batch == 128 and row.examples_seen == 1920 and row.steps == 15
    assert row.gap == pytest.approx(-0.08, abs=0.01) and row.verdict == R.DIFFERENT
    assert t.set_index("arm").loc["lora"].reference == "full" and t.set_index("arm").loc["lora"].examples_seen == 1920
    # the reach section keeps to the study's own setting: the batch-128 arm is not one of its arms
    assert st.arms("rank") == ["lora"] and st.arms("rank", settings=True) == ["lora", "lora_bs128"]


def test_placement_holds_when_all_linear_matches_and_attention_at_its_count_is_worse():
    st = placement(0.0, -0.08)
    c = R.placement_claim(st, R.regret_table(st))
    assert c.verdict == HOLDS and c.seeds == 3 and c.estimate == pytest.approx(-0.08, abs=0.01)
    assert "all linear r=4" in c.measured and "attention r=4" in c.measured


def test_placement_does_not_hold_when_attention_at_matched_count_keeps_up():
    st = placement(0.0, 0.0)
    assert R.placement_claim(st, R.regret_table(st)).verdict == FAILS
    st = placement(-0.1, -0.1)  # all-linear itself falls short of full FT
    c = R.placement_claim(st, R.regret_table(st))
    assert c.verdict == FAILS and "all-linear LoRA is shown different" in c.why


def test_placement_needs_three_seeds_and_both_arms():
    st = placement(0.0, -0.08, seeds=2)
    assert R.placement_claim(st, R.regret_table(st)).verdict == TOO_LITTLE
    st = planted({("lora", 4): (0.0, None, None, None), ("lora_all", 4): (0.0, None, None, ALL)})
    assert R.placement_claim(st, R.regret_table(st)).verdict == NOT_MEASURED


def capacity(big_gap):
    return planted({("lora", 1): (-0.005, None, None, None), ("lora", 16): (0.0, None, None, None),
                    ("lora_ex480", 1): (0.0, "full_ex480", EX480, None),
                    ("lora_ex480", 16): (0.0, "full_ex480", EX480, None),
                    ("lora_ex7680", 1): (big_gap, "full_ex7680", EX7680, None),
                    ("lora_ex7680", 16): (0.0, "full_ex7680", EX7680, None),
                    # α = 32 at r = 1 and 16: another LoRA, kept out of the sweep even at r = 16, where α = 2r too
                    ("lora_a32", 1): (-0.2, None, None, None, 32), ("lora_a32", 16): (-0.2, None, None, None, 32)})


def test_capacity_holds_when_the_lowest_rank_falls_behind_with_more_data():
    st = capacity(-0.08)
    t = R.regret_table(st)
    s = R.sweeps(t, st)["data"]
    assert sorted(s.examples_seen.unique()) == [480, 1920, 7680] and sorted(s["rank"].unique()) == [1, 16]
    assert "lora_a32" not in set(s.arm) and len(s) == 6
    ch = R.gap_changes(st, t)
    r1 = ch[(ch.sweep == "data") & (ch["rank"] == 1)].iloc[0]
    assert (r1["from"], r1["to"]) == (480, 7680) and r1.change == pytest.approx(-0.08, abs=0.01) and r1.ci_high < 0
    c = R.capacity_claim(st, t, ch)
    assert c.verdict == HOLDS and "r=1 at 7,680" in c.measured


def test_capacity_does_not_hold_when_the_lowest_rank_keeps_up():
    st = capacity(0.0)
    t = R.regret_table(st)
    assert R.capacity_claim(st, t, R.gap_changes(st, t)).verdict == FAILS


def batch(gap16):
    return planted({("lora", 1): (0.0, None, None, None), ("lora", 16): (0.0, None, None, None),
                    ("lora_bs8", 1): (0.0, "full_bs8", BS8, None), ("lora_bs8", 16): (0.0, "full_bs8", BS8, None),
                    ("lora_bs128", 1): (-0.08, "full_bs128", BS128, None),
                    ("lora_bs128", 16): (gap16, "full_bs128", BS128, None)})


def test_batch_holds_when_every_rank_pays_at_large_batch_and_fails_when_a_higher_rank_does_not():
    st = batch(-0.08)
    t = R.regret_table(st)
    ch = R.gap_changes(st, t)
    assert set(ch[ch.sweep == "batch"]["from"]) == {8} and set(ch[ch.sweep == "batch"]["to"]) == {128}
    assert R.batch_claim(st, t, ch).verdict == HOLDS
    st = batch(0.0)
    t = R.regret_table(st)
    c = R.batch_claim(st, t, R.gap_changes(st, t))
    assert c.verdict == FAILS and "r=16" in c.why


def test_a_declared_full_arm_is_a_treatment_and_a_reference_must_name_a_full_ft_arm():
    from conftest import compose
    from lora_study.config import ConfigError
    from lora_study.study.planning import main_members, validate_study
    arms = ("study.arms={full_bs128:{method:full,train:{batch_size:128,max_steps:4}},"
            "lora_bs128:{method:lora,train:{batch_size:128,max_steps:4},reference:full_bs128}}")
    st = compose(["study.methods=[full,lora]", "study.ranks=[1]", "study.seeds=[0]", arms], "study").study
    validate_study(st)
    records = {m.id: m.record() for m in main_members(st, {})}
    assert records["full_s0"]["role"] == "reference" and records["full_bs128_s0"]["role"] == "treatment"
    assert records["lora_bs128_r1_s0"]["reference_arm"] == "full_bs128"
    assert records["lora_bs128_r1_s0"]["train"] == {"batch_size": 128, "max_steps": 4}
    assert "reference_arm" not in records["lora_r1_s0"] and "train" not in records["lora_r1_s0"]
    for bad, needle in [("full_bs12", "study.arms.lora_bs128.reference='full_bs12' is not valid; it must name another "
                                      "arm of the study"),
                        ("lora", "study.arms.lora_bs128.reference=lora names an arm of method lora, which is swept "
                                 "over rank")]:
        st = compose(["study.methods=[full,lora]", "study.ranks=[1]",
                      arms.replace("reference:full_bs128", f"reference:{bad}")], "study").study
        with pytest.raises(ConfigError) as e:
            validate_study(st)
        msg = str(e.value)
        assert needle in msg and msg.endswith(".") and msg.count(". ") == 0, msg


def test_arms_in_their_own_settings_flow_through_a_tiny_study_and_its_report(tmp_path):
    """Tiny runs: full FT and LoRA at the study's batch and at batch 4 (the same examples seen), an all-linear arm and
    attention at its parameter count; the index, the regret tables and the report's sections."""
    from lora_study.analysis import load_study
    from lora_study.analysis.analyze import analyze
    from conftest import STUDY_ARGS, study_in_process
    arms = ("study.arms={lora_all:{method:lora,options:{target_modules:all_linear},ranks:[1]},"
            "lora_attn_matched:{method:lora,options:{target_modules:attn,match_params:all_linear},ranks:[1]},"
            "full_bs4:{method:full,train:{batch_size:4,max_steps:24}},"
            "lora_bs4:{method:lora,ranks:[1],train:{batch_size:4,max_steps:24},reference:full_bs4}}")
    code = study_in_process(*STUDY_ARGS, "study.methods=[full,lora]", "study.ranks=[1]", arms,
                            "study.lr_by_rank={lora_all:{1:0.004},lora_attn_matched:{1:0.004},lora_bs4:{1:0.005}}",
                            "+study.lr.full_bs4=1e-3", "heldout.enabled=false", "run.truncation_ranks=[]",
                            f"study.root={tmp_path}", "study.name=regret")
    assert code == 0
    index = json.loads((tmp_path / "regret" / "study.json").read_text())
    roles = {m["id"]: m["role"] for m in index["members"]}
    assert roles["full_s0"] == "reference" and roles["full_bs4_s0"] == "treatment"
    study = load_study(tmp_path / "regret")
    assert study.run("full_bs4_s0").summary["steps"] == 24
    matched = study.run("lora_attn_matched_r1_s0").summary
    assert matched["matched_params"]["rank"] >= 1
    ctx = analyze(study, tmp_path / "regret" / "analysis")
    t = ctx.table("regret").set_index("arm")
    assert t.loc["lora_bs4"].reference == "full_bs4" and t.loc["lora_bs4"].batch == 4
    assert t.loc["lora_bs4"].examples_seen == t.loc["lora"].examples_seen  # 24 x 4 = 12 x 8
    assert t.loc["lora_attn_matched"].rank_used == matched["matched_params"]["rank"]
    # the parameter formula r (d + k) + head reads the rank the matched arm trained at, not the swept one
    cost = ctx.table("tradeoff").set_index("arm")
    assert cost.loc["lora_attn_matched"].formula_params == cost.loc["lora_attn_matched"].trainable_params
    assert matched["params"]["trainable"] == cost.loc["lora_attn_matched"].trainable_params
    reach = ctx.table("reach")
    assert list(reach[reach["rank"].notna()].arm.unique()) == ["lora", "lora_all", "lora_attn_matched"]
    claims = {c.key: c for c in ctx.claims()}
    assert claims["regret:placement"].verdict == TOO_LITTLE  # one seed
    # one claim over the arms at one rank: each row names its arm, so the r = 1 rows cannot be confused
    titles = {r.arm: r.title for r in study.runs}
    for arm in ("lora", "lora_all", "lora_attn_matched"):
        assert f"{titles[arm]} r = 1:" in claims["reach:lora"].measured
    assert claims["regret:capacity"].verdict == NOT_MEASURED  # one number of examples seen at the study's batch
    # one seed: too little evidence; or, where the tiny full FT did not learn at a batch, no change to test at all
    collapsed = study.run("full_s0").did_not_learn or study.run("full_bs4_s0").did_not_learn
    assert claims["regret:batch"].verdict == (NOT_MEASURED if collapsed else TOO_LITTLE)


def test_a_zero_width_interval_decides_nothing():
    """Runs that answer alike on every example (every run collapsed to one class) give [0, 0]: too little evidence,
    not 'equivalent'."""
    st = placement(0.0, 0.0)
    for r in st.runs:
        r._predictions["test.correct"] = np.ones(N)
    c = R.placement_claim(st, R.regret_table(st))
    assert c.verdict == TOO_LITTLE and "zero width" in c.why


def test_a_setting_where_full_ft_did_not_learn_is_left_out_of_the_change():
    st = capacity(-0.08)
    for r in st.runs:
        if r.arm == "full_ex480":
            r.summary["learning"]["did_not_learn"] = True
    t = R.regret_table(st)
    ch = R.gap_changes(st, t)
    assert set(ch[ch.sweep == "data"]["from"]) == {1920}
    c = R.capacity_claim(st, t, ch)
    assert "480 examples: full FT did not learn, left out of the change" in c.measured
    assert "full_ex480_s0" in c.did_not_learn


def test_the_preset_validates_with_an_inherited_evidence_row_dropped():
    """experiment=without_regret sets rank_sweep's lora_r64 evidence row to null (it trains no r = 64): the config
    validates, and the search record leaves that row out."""
    from conftest import compose
    from lora_study.config import validate
    from lora_study.study.lr_search import evidence
    cfg = compose(["experiment=without_regret"], "study")
    validate(cfg)
    assert "lora_r64" not in evidence(cfg.study) and "lora_a32_r4" in evidence(cfg.study)


def test_the_sweeps_follow_the_targets_of_the_arms_in_other_settings():
    """A study whose LoRA adapts every linear layer sweeps that LoRA, not the W_q, W_v default."""
    st = planted({("lora_all", 1): (0.0, None, None, ALL), ("lora", 1): (-0.2, None, None, None),
                  ("lora_bs128", 1): (-0.08, "full_bs128", BS128, ALL), ("lora_bs8", 1): (0.0, "full_bs8", BS8, ALL)})
    s = R.sweeps(R.regret_table(st), st)["batch"]
    assert sorted(s.arm) == ["lora_all", "lora_bs128", "lora_bs8"]
