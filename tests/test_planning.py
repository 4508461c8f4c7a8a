"""Study planning without training: members, alpha rules, learning-rate precedence, threads per member (the
learning-rate search is tests/test_lr_search.py's, arms tests/test_arms.py's)."""
import pytest

from conftest import compose
from lora_study.artifacts import StudyDir, parse_member_id
from lora_study.config import ConfigError, validate
from lora_study.methods.base import Variant
from lora_study.methods.lora import alpha_for
from lora_study.study.planning import lr_for, main_members, member_threads, validate_study


def rank(r):
    return Variant("lora", r)


def test_default_study_members_and_alpha():
    st = compose(["experiment=rank_sweep"], "study").study
    ids = [m.id for m in main_members(st, {})]
    assert ids == [f"{m}_s{s}" for s in (0, 1, 2, 3, 4) for m in ["none", "full"] + [f"lora_r{r}" for r in (1, 4, 16, 64)]]
    assert [m.record()["alpha"] for m in main_members(st, {}) if m.method == "lora" and m.seed == 0] == \
        [2.0 * r for r in (1, 4, 16, 64)]
    three = compose(["study.seeds=[0,1,2]"], "study").study
    assert len(main_members(three, {})) == 27
    for m in main_members(three, {}):  # ids parse back into arm, swept value and seed
        p = parse_member_id(m.id)
        assert (p["arm"], p["value"], p["seed"]) == (m.variant.arm, m.variant.value, m.seed)


def test_alpha_rules():
    fixed = compose(["study.alpha_rule=fixed", "study.alpha=32"], "study").study
    assert alpha_for(4, fixed) == 32.0
    rs = compose(["study.alpha_rule=rslora", "study.ranks=[4]", "study.methods=[lora]"], "study").study
    assert "method.use_rslora=true" in main_members(rs, {})[0].overrides()
    with pytest.raises(ConfigError, match="study.alpha_rule='sqrt' is not valid; choose one of two_r, fixed, rslora"):
        validate(compose(["study.alpha_rule=sqrt"], "study"))


def test_lr_precedence():
    st = compose(["study.lr_by_rank={1:0.002}"], "study").study
    assert lr_for("lora", rank(1), st, {}) == 0.002 and lr_for("lora", rank(8), st, {}) == st.lr["lora"]
    chosen = {"lora_r1": 1e-3, "lora_r64": 3e-4, "full": 5e-5}
    assert lr_for("lora", rank(2), st, chosen) == 1e-3 and lr_for("lora", rank(32), st, chosen) == 3e-4  # log scale
    assert lr_for("lora", rank(7), st, chosen) == 1e-3 and lr_for("lora", rank(9), st, chosen) == 3e-4  # √64 = 8
    assert lr_for("full", Variant("full"), st, chosen) == 5e-5


def test_every_rank_swept_method_gets_per_rank_rates():
    st = compose(["study.lr_by_rank={1:0.002}", "study.methods=[lora,qlora]", "study.ranks=[1,8]",
                  "study.lr.lora=0.001", "+study.lr.qlora=0.0005"], "study").study
    lrs = {m.id: m.lr for m in main_members(st, {})}
    assert lrs == {"lora_r1_s0": 0.002, "lora_r8_s0": 0.001, "qlora_r1_s0": 0.002, "qlora_r8_s0": 0.0005}
    chosen = {"qlora_r8": 3e-4}
    assert lr_for("qlora", Variant("qlora", 1), st, chosen) == 3e-4  # nearest searched rank of its own arm
    assert lr_for("lora", Variant("lora", 1), st, chosen) == 0.002  # another arm's search does not leak


def test_bad_study_values():
    with pytest.raises(ConfigError, match="study.methods=\\['full', 'adapter'\\] is not valid"):
        validate(compose(["study.methods=[full,adapter]"], "study"))
    with pytest.raises(ConfigError, match="study.ranks=\\[0, 4\\] is not valid"):
        validate(compose(["study.ranks=[0,4]"], "study"))
    with pytest.raises(ConfigError, match="study.seeds=\\[\\] is not valid; it must be a non-empty list"):
        validate(compose(["study.seeds=[]"], "study"))
    with pytest.raises(ConfigError, match="study.dims is empty; method subspace is swept over d"):
        validate_study(compose(["study.methods=[none,subspace]"], "study").study)
    with pytest.raises(ConfigError, match="study.lr has no learning rate for method 'qlora'"):
        validate_study(compose(["study.methods=[qlora]"], "study").study)
    validate_study(compose(["study.methods=[qlora]", "study.ranks=[1]", "study.lr_by_rank={1:0.1}"], "study").study)
    # a rank the table leaves out, with no rate to fall back on, is refused before any run (not when planning)
    with pytest.raises(ConfigError, match="study.lr has no learning rate for method 'qlora'"):
        validate_study(compose(["study.methods=[qlora]", "study.ranks=[1,2]", "study.lr_by_rank={1:0.1}"],
                               "study").study)


def test_processes_and_dropout_join_the_shared_settings_only_when_set(tmp_path):
    from lora_study.study.planning import check_shared, shared_settings
    default = shared_settings(compose([], "study"))
    # a study made before train.processes and model.dropout existed resumes: the defaults add no key
    assert "processes" not in default["budget"] and "dropout" not in default["model"]
    two = shared_settings(compose(["train.processes=2", "model.dropout=0"], "study"))
    assert two["budget"]["processes"] == 2 and two["model"]["dropout"] == 0
    sdir = StudyDir(tmp_path)
    sdir.write_index({"shared": default})
    check_shared(sdir, default)
    with pytest.raises(ConfigError, match="different model, budget settings"):
        check_shared(sdir, two)  # twice the global batch is another study


def with_hydra(overrides):
    """The study config as the sweeper sees it, with the ``hydra`` node (the launcher's settings)."""
    from hydra import compose as hcompose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from conftest import CONF
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return hcompose(config_name="study", overrides=list(overrides), return_hydra_config=True)


def test_members_side_by_side_get_a_share_of_the_cores(monkeypatch):
    import torch
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # torch's default on a 2-core CPU
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert member_threads(with_hydra([])) is None  # the basic launcher: one member at a time
    assert member_threads(with_hydra(["hydra/launcher=parallel"])) == 1
    assert member_threads(with_hydra(["hydra/launcher=joblib"])) == 1  # n_jobs=-1: every core
    assert member_threads(with_hydra(["hydra/launcher=joblib", "hydra.launcher.n_jobs=1"])) is None
    assert member_threads(with_hydra(["hydra/launcher=parallel", "train.threads=2"])) is None  # the user's
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert member_threads(with_hydra(["hydra/launcher=parallel"])) == 4
    assert member_threads(with_hydra(["hydra/launcher=parallel", "hydra.launcher.n_jobs=16"])) == 1


def test_first_seed_overrides_reach_only_the_first_seeds_members():
    st = compose(["study.seeds=[3,1]", "study.ranks=[2]", 'study.first_seed_overrides=["run.latency=true"]'],
                 "study").study
    members = main_members(st, {})
    assert {m.id for m in members if "run.latency=true" in m.overrides()} == {"none_s3", "full_s3", "lora_r2_s3"}
    with pytest.raises(ConfigError, match="study.first_seed_overrides"):
        validate(compose(['study.first_seed_overrides=["train.max_steps=3"]'], "study"))  # would change training
