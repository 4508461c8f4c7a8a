"""A study's arms (lora_study/study/arms.py) without training: members, overrides and records of each arm, per-arm
learning rates, rsLoRA per arm, and every invalid arm refused with one sentence naming its field."""
from pathlib import Path

import pytest

from conftest import CONF, compose
from lora_study import methods
from lora_study.study.arms import find_arm, study_arms
from lora_study.artifacts import parse_member_id
from lora_study.config import ConfigError, validate
from lora_study.study.lr_search import search_members
from lora_study.methods.base import Variant
from lora_study.study.planning import lr_for, main_members, validate_study

ALL = "study.arms={lora_all:{method:lora,title:'LoRA (all linear)',options:{target_modules:all_linear}}}"


def study(*overrides):
    return compose(list(overrides), "study").study


def by_id(members):
    return {m.id: m for m in members}


def test_the_causal_lm_preset_has_mlp_and_all_linear_arms_at_their_searched_rates():
    cfg = compose(["experiment=lm_rank_sweep"], "study")
    validate(cfg)
    validate_study(cfg.study)
    members = by_id(main_members(cfg.study, {}))
    assert list(members) == ["none_s0", "full_s0", "lora_r1_s0", "lora_r4_s0", "lora_r16_s0", "lora_r64_s0",
                             "lora_mlp_r16_s0", "lora_all_r16_s0"]
    rates = {k: m.lr for k, m in members.items()}
    assert rates["full_s0"] == 2e-4 and rates["lora_mlp_r16_s0"] == 3e-4 and rates["lora_all_r16_s0"] == 3e-3
    assert {rates[f"lora_r{r}_s0"] for r in (1, 4, 16, 64)} == {3e-3}
    assert "method.target_modules=mlp" in members["lora_mlp_r16_s0"].overrides()
    assert "method.target_modules=all_linear" in members["lora_all_r16_s0"].overrides()


def test_the_all_linear_preset():
    cfg = compose(["experiment=all_linear"], "study")
    validate(cfg)
    validate_study(cfg.study)
    assert list(cfg.study.seeds) == [0, 1, 2, 3, 4]  # the default study's seeds
    assert dict(cfg.study.lr_by_rank.lora_all) == {1: 3e-3, 16: 1e-3}  # searched at two seeds
    evidence = cfg.study.lr_evidence
    assert evidence.lora_all_r1[3e-3] == 0.784 and evidence.lora_all_r16[3e-3] is None  # a seed did not learn
    assert evidence.full == compose(["experiment=rank_sweep"], "study").study.lr_evidence.full  # rank_sweep's row
    members = by_id(m for m in main_members(cfg.study, {}) if m.seed == 0)
    assert list(members) == ["none_s0", "full_s0", "lora_all_r1_s0", "lora_all_r16_s0"]
    r16 = members["lora_all_r16_s0"]
    o = r16.overrides()
    assert o[-5:] == ["method.rank=16", "method.alpha=32", "method.target_modules=all_linear",
                      "run.latency=true", "run.intruder_scaling=true"]  # the first seed's measurements last
    rec = r16.record()
    assert (rec["arm"], rec["title"], rec["method"], rec["rank"], rec["alpha"]) == \
        ("lora_all", "LoRA (all linear)", "lora", 16, 32.0)  # alpha = 2r
    assert rec["options"] == {"target_modules": "all_linear"}
    assert methods.get("lora").label(rec) == "LoRA (all linear) r=16"
    assert methods.get("lora").label(members["lora_all_r1_s0"].record()) == "LoRA (all linear) r=1"
    full = members["full_s0"].record()
    assert full["title"] == "full FT" and methods.get("full").label(full) == full["label"] == "full FT"
    assert (full["role"], full["family"], rec["role"], rec["family"], rec["label"], rec["value"]) == \
        ("reference", "full", "treatment", "lora", "LoRA (all linear) r=16", 16)
    assert cfg.run.intervention_targets == "all_linear"  # full FT's interventions act on the arm's matrices
    # ids parse back into the arm, with its underscore
    assert parse_member_id("lora_all_r16_s0") == {"arm": "lora_all", "axis": "rank", "value": 16, "seed": 0}


def test_methods_stay_the_simple_way_and_arms_add_to_them():
    plain = study("study.methods=[full,lora]", "study.ranks=[2]")
    assert [(a.name, a.method, a.title) for a in study_arms(plain)] == [("full", "full", None), ("lora", "lora", None)]
    both = study("study.methods=[full,lora]", "study.ranks=[2,8]", ALL.replace("}}}", "},ranks:[4]}}"))
    ids = [m.id for m in main_members(both, {})]
    assert ids == ["full_s0", "lora_r2_s0", "lora_r8_s0", "lora_all_r4_s0"]  # the arm's own ranks
    lora = by_id(main_members(both, {}))["lora_r2_s0"]
    assert "method.target_modules=all_linear" not in lora.overrides() and lora.record()["title"] == "LoRA"
    # an arm declared without a title is named apart from its method's own arm
    untitled = study("study.methods=[lora]", "study.ranks=[2]", "study.arms={wide:{method:lora,options:{dropout:0.1}}}")
    labels = [methods.get("lora").label(m.record()) for m in main_members(untitled, {})]
    assert labels == ["LoRA r=2", "LoRA (wide) r=2"]


def test_options_follow_the_methods_options_and_a_subspace_arm_names_its_variants():
    st = study("study.methods=[none]", "study.dims=[10]", "study.said=[false,true]",
               "study.method_options={subspace:{head_lr:0.3}}",
               "study.arms={sub_sparse:{method:subspace,options:{projection:sparse},dims:[100]}}")
    validate_study(st)
    members = by_id(main_members(st, {}))
    assert list(members) == ["none_s0", "sub_sparse_did_d100_s0", "sub_sparse_said_d100_s0"]
    said = members["sub_sparse_said_d100_s0"]
    assert {"method.head_lr=0.3", "method.projection=sparse", "method.d=100", "method.said=true"} <= \
        set(said.overrides())
    assert said.lr == st.lr["subspace"]  # the method's rate, the arm having none of its own
    assert parse_member_id(said.id)["arm"] == "sub_sparse_said"


def test_rates_per_arm():
    st = study("study.methods=[none,lora]", "study.ranks=[1,16]", ALL, "+study.lr.lora_all=0.002",
               "study.lr_by_rank={1:0.005,lora_all:{16:0.0007}}")
    lrs = {m.id: m.lr for m in main_members(st, {})}
    assert lrs == {"none_s0": st.lr["none"], "lora_r1_s0": 0.005, "lora_r16_s0": st.lr["lora"],  # flat table
                   "lora_all_r1_s0": 0.002, "lora_all_r16_s0": 0.0007}  # its own table, then study.lr.lora_all
    # without a rate of its own, the arm takes its method's
    st = study("study.methods=[lora]", "study.ranks=[1]", ALL)
    assert {m.id: m.lr for m in main_members(st, {})} == {"lora_r1_s0": st.lr["lora"], "lora_all_r1_s0": st.lr["lora"]}
    # a flat table serves every rank-swept arm without its own
    st = study("study.methods=[lora]", "study.ranks=[1]", ALL, "study.lr_by_rank={1:0.004}")
    assert {m.lr for m in main_members(st, {})} == {0.004}
    # searched rates are keyed per arm and rank; the nearest searched rank is taken within the arm
    chosen = {"lora_r1": 1e-3, "lora_all_r16": 3e-4, "lora_all": 9.9}
    st = study("study.methods=[lora]", "study.ranks=[1,8]", ALL)
    assert lr_for("lora_all", Variant("lora_all", 8), st, chosen) == 3e-4
    assert lr_for("lora", Variant("lora", 8), st, chosen) == 1e-3
    assert lr_for(find_arm(st, "lora_all"), Variant("lora_all", 1), st, chosen) == 3e-4


def test_search_keys_and_grids_per_arm():
    st = study("study.methods=[full]", "study.ranks=[1,16]", ALL, "study.lr_search=true", "study.lr_search_ranks=all",
               "+study.lr_grid.lora_all=[0.001,0.003]", "study.lr_search_seeds=1")
    keys = {}
    for m in search_members(st):
        keys.setdefault(m.search_key, []).append(m.lr)
    assert keys == {"full": list(st.lr_grid["full"]), "lora_all_r1": [1e-3, 3e-3], "lora_all_r16": [1e-3, 3e-3]}
    m = next(m for m in search_members(st) if m.search_key == "lora_all_r16")
    assert m.id == "lora_all_r16_lr0.001_s0" and "method.target_modules=all_linear" in m.overrides()
    # without a grid of its own the arm searches its method's grid, at study.lr_search_ranks when not all
    st = study("study.methods=[full]", "study.ranks=[1,16]", ALL, "study.lr_search=true", "study.lr_search_ranks=[4]",
               "study.lr_search_seeds=1")
    assert [(m.search_key, m.lr) for m in search_members(st) if m.method == "lora"] == \
        [("lora_all_r4", lr) for lr in st.lr_grid.lora]


def test_rslora_per_arm():
    st = study("study.methods=[lora]", "study.ranks=[4]",
               "study.arms={lora_rs:{method:lora,alpha_rule:rslora,alpha:8},lora_rs2r:{method:lora,"
               "options:{use_rslora:true}}}")
    validate_study(st)
    members = by_id(main_members(st, {}))
    plain, rs, rs2r = members["lora_r4_s0"], members["lora_rs_r4_s0"], members["lora_rs2r_r4_s0"]
    assert "method.use_rslora=true" not in plain.overrides() and "method.alpha=8" in plain.overrides()  # 2r
    assert {"method.use_rslora=true", "method.alpha=8"} <= set(rs.overrides()) and rs.record()["alpha"] == 8.0
    assert {"method.use_rslora=true", "method.alpha=8"} <= set(rs2r.overrides())  # alpha = 2r scaled by 1/sqrt(r)
    assert rs2r.record()["options"] == {"use_rslora": True}
    # a study-wide rslora with an arm that asks for the plain scale contradicts the sweep
    with pytest.raises(ConfigError,
                       match=r"study.arms.plain.options.use_rslora=false contradicts method.use_rslora=true"):
        validate_study(study("study.methods=[lora]", "study.alpha_rule=rslora",
                             "study.arms={plain:{method:lora,options:{use_rslora:false}}}"))


@pytest.mark.parametrize("overrides,needle", [
    (["study.arms={lora_all:{method:adapter}}"],
     "study.arms.lora_all.method='adapter' is not valid; choose one of none"),
    (["study.arms={lora_all:{method:lora,options:{target_module:all_linear}}}"],
     "study.arms.lora_all.options.target_module is not a field of method lora; it has alpha, dropout, init, match_params, rank,"),
    (["study.arms={lora_all:{method:lora,options:{target_modules:every}}}"],
     "study.arms.lora_all.options.target_modules='every' is not valid; it must be one of the presets"),
    (["study.arms={lora_all:{method:lora,options:{name:full}}}"], "study.arms.lora_all.options.name is not a field"),
    (["study.arms={lora_all:{method:lora,ranks:[0,4]}}"], "study.arms.lora_all.ranks=[0, 4] is not valid"),
    (["study.arms={full_wd:{method:full,ranks:[4]}}"], "study.arms.full_wd.ranks is set, but method full is not swept"),
    (["study.arms={lora_all:{method:lora,options:{rank:4}}}"],
     "study.arms.lora_all.options.rank=4 contradicts method.rank=1, which the study sets for each member of lora_all"),
    (["study.arms={lora:{method:lora,options:{dropout:0.1}}}"],
     "study.arms.lora has the name of the arm of method lora in study.methods"),
    (["study.methods=[lora,lora]"], "study.methods lists lora twice"),
    (["study.methods=[]"], "study.methods is empty and study.arms names no arm"),
    (["study.arms={full_s1:{method:full}}"], "study.arms.full_s1 cannot name its members: full_s1_s0 would not read"),
    (["study.lr_by_rank={lora_al:{1:0.001}}"], "study.lr_by_rank.lora_al is not a rank-swept arm of this study"),
    (["+study.lr.lora_al=0.001"], "study.lr.lora_al names neither a method nor an arm of this study"),
    (["study.methods=[qlora]", "study.ranks=[1]"], "study.lr has no learning rate for method 'qlora'"),
    (["study.methods=[full]", "study.arms={q_all:{method:qlora}}", "study.ranks=[1]"],
     "study.lr has no learning rate for arm 'q_all' or its method qlora"),
    (["study.method_options={lora:{rank:2}}", "study.ranks=[4]"],
     "study.method_options.lora.rank=2 contradicts method.rank=4"),
])
def test_an_invalid_arm_is_refused_with_one_sentence(overrides, needle):
    st = study(*overrides)
    with pytest.raises(ConfigError) as e:
        validate_study(st)
    msg = str(e.value)
    assert needle in msg and msg.endswith(".") and msg.count(". ") == 0, msg


@pytest.mark.parametrize("arms,needle", [
    ("{Lora-All:{method:lora}}", "study.arms={'Lora-All': {'method': 'lora'}} is not valid; it must be a mapping keyed "
                                 "by a name of lower-case letters"),
    ("{lora_all:{method:lora,rank:4}}", "whose every value is an arm: a mapping with method and optionally title"),
    ("{lora_all:{title:x}}", "study.arms={'lora_all': {'title': 'x'}} is not valid"),
])
def test_an_arm_of_the_wrong_shape_is_refused_at_start_up(arms, needle):
    with pytest.raises(ConfigError) as e:
        validate(compose([f"study.arms={arms}"], "study"))
    msg = str(e.value)
    assert needle in msg and msg.endswith(".") and msg.count(". ") == 0, msg


@pytest.mark.parametrize("exp", [p.stem for p in sorted((Path(CONF) / "experiment").glob("*.yaml"))] +
                         ["[rank_sweep,lr_search]", "[all_linear,lr_search]"])
def test_every_experiment_plans(exp):
    st = compose([f"experiment={exp}"], "study").study
    validate_study(st)
    assert main_members(st, {})
    if st.lr_search:
        assert search_members(st)


def test_an_all_linear_arm_flows_through_a_study_and_its_analysis(tmp_path):
    """Tiny runs: the default W_q, W_v arm and an all-linear arm with its own ranks, side by side in the study index,
    the run directories and the analysis tables, named by the arm's title."""
    import json

    import pandas as pd

    from lora_study.analysis import load_study
    from lora_study.analysis.analyze import analyze
    from conftest import STUDY_ARGS, study_in_process
    code = study_in_process(*STUDY_ARGS, "study.methods=[none,full,lora]", "study.ranks=[1,2]",
                            "study.arms={lora_all:{method:lora,title:'LoRA (all linear)',"
                            "options:{target_modules:all_linear},ranks:[2]}}",
                            "study.lr_by_rank={lora_all:{2:0.004}}", f"study.root={tmp_path}", "study.name=arms")
    assert code == 0
    index = json.loads((tmp_path / "arms" / "study.json").read_text())
    planned = {m["id"]: m for m in index["members"]}
    assert list(planned) == ["none_s0", "full_s0", "lora_r1_s0", "lora_r2_s0", "lora_all_r2_s0"]
    assert planned["lora_all_r2_s0"]["lr"] == 0.004 and planned["lora_r2_s0"]["lr"] == index["study"]["lr"]["lora"]
    study = load_study(tmp_path / "arms")
    qv, every = study.run("lora_r2_s0").summary, study.run("lora_all_r2_s0").summary
    assert len(every["lora_targets"]) > len(qv["lora_targets"])  # every linear layer of the blocks
    assert every["params"]["trainable"] > qv["params"]["trainable"]
    assert study.arms("rank") == ["lora", "lora_all"] and study.values("lora_all") == [2]
    ctx = analyze(study, tmp_path / "arms" / "analysis")
    runs = ctx.table("runs")
    assert dict(zip(runs.member, runs.label))["lora_all_r2_s0"] == "LoRA (all linear) r=2"
    assert "LoRA (all linear) r=2" in set(pd.read_csv(tmp_path / "arms" / "analysis" / "tradeoff.csv").label)


def test_arm_titles_in_tables_and_text_are_the_arms_own():
    """Tables and findings name an arm by its configured title (the runs' label without the swept value), and add
    the arm's name only where two arms would read the same."""
    import pandas as pd

    from lora_study.analysis.roles import arm_title
    rows = [("full", "full", "full FT", None, None), ("lora", "lora", "LoRA r=1", "rank", 1),
            ("lora", "lora_all", "LoRA (all linear) r=1", "rank", 1), ("lora", "lora_all", "LoRA (all linear) r=16",
                                                                       "rank", 16)]
    df = pd.DataFrame(rows, columns=["method", "arm", "label", "axis", "value"])
    assert arm_title(df, "lora_all") == "LoRA (all linear)" and arm_title(df, "lora") == "LoRA"
    twins = pd.concat([df, pd.DataFrame([("lora", "lora_b", "LoRA r=4", "rank", 4)], columns=df.columns)])
    assert arm_title(twins, "lora_b") == "LoRA (lora_b)" and arm_title(twins, "lora") == "LoRA (lora)"
    assert arm_title(twins, "lora_all") == "LoRA (all linear)"


def test_arms_by_placement_matched_parameters_and_their_own_training_settings():
    """Arms that differ in where LoRA goes, in matched parameters, and in batch size / examples seen: each member
    carries its arm's train.* overrides after the study's; a bad training setting is refused with one sentence."""
    arms = ("study.arms={lora_mlp:{method:lora,options:{target_modules:mlp}},"
            "lora_attn_matched:{method:lora,options:{target_modules:attn,match_params:all_linear}},"
            "lora_b128:{method:lora,options:{target_modules:all_linear},train:{batch_size:128,max_steps:4}}}")
    st = study("study.methods=[full]", "study.ranks=[1]", "study.seeds=[0]", arms)
    validate_study(st)
    members = by_id(main_members(st, {}))
    assert "method.target_modules=mlp" in members["lora_mlp_r1_s0"].overrides()
    assert "method.match_params=all_linear" in members["lora_attn_matched_r1_s0"].overrides()
    o = members["lora_b128_r1_s0"].overrides()
    assert "train.batch_size=128" in o and "train.max_steps=4" in o
    assert not any(x.startswith(("train.batch_size", "train.max_steps")) for x in members["full_s0"].overrides())
    for bad, needle in [("{batch_size:0}", "study.arms.lora_b128.train.batch_size=0 is not valid"),
                        ("{seed:3}", "study.arms.lora_b128.train.seed is not a training setting an arm may set")]:
        with pytest.raises(ConfigError) as e:
            validate_study(study("study.methods=[full]", "study.ranks=[1]",
                                 f"study.arms={{lora_b128:{{method:lora,train:{bad}}}}}"))
        msg = str(e.value)
        assert needle in msg and msg.endswith(".") and msg.count(". ") == 0, msg
