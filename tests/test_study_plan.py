"""Study planning without training: members, alpha rules, learning-rate choice on validation only."""
import pytest

from conftest import compose
from lora_study.artifacts import RunDir, StudyDir
from lora_study.config import ConfigError
from lora_study.study import alpha_for, choose_lrs, lr_for, main_members, search_members, validate_study


def test_default_study_members_and_alpha():
    st = compose(["experiment=rank_sweep"], "study").study
    ids = [m.id for m in main_members(st, {})]
    assert ids == ["none_s0", "full_s0"] + [f"lora_r{r}_s0" for r in (1, 2, 4, 8, 16, 32, 64)]
    assert [m.alpha for m in main_members(st, {}) if m.method == "lora"] == [2.0 * r for r in (1, 2, 4, 8, 16, 32, 64)]
    three = compose(["study.seeds=[0,1,2]"], "study").study
    assert len(main_members(three, {})) == 27


def test_alpha_rules():
    fixed = compose(["study.alpha_rule=fixed", "study.alpha=32"], "study").study
    assert alpha_for(4, fixed) == 32.0
    rs = compose(["study.alpha_rule=rslora", "study.ranks=[4]", "study.methods=[lora]"], "study").study
    assert "method.use_rslora=true" in main_members(rs, {})[0].overrides()
    with pytest.raises(ConfigError, match="alpha_rule"):
        alpha_for(4, compose(["study.alpha_rule=sqrt"], "study").study)


def test_lr_precedence():
    st = compose(["study.lr_by_rank={1:0.002}"], "study").study
    assert lr_for("lora", 1, st, {}) == 0.002 and lr_for("lora", 8, st, {}) == st.lr["lora"]
    chosen = {"lora_r1": 1e-3, "lora_r64": 3e-4, "full": 5e-5}
    assert lr_for("lora", 2, st, chosen) == 1e-3 and lr_for("lora", 32, st, chosen) == 3e-4  # nearest on log scale
    assert lr_for("full", None, st, chosen) == 5e-5


def test_lr_choice_reads_validation_never_test(tmp_path):
    st = compose(["study.methods=[lora]", "study.lr_search_ranks=[4]", "study.lr_grid.lora=[1e-4,1e-3]"], "study").study
    members = search_members(st)
    assert [m.id for m in members] == ["lora_r4_lr0.0001", "lora_r4_lr0.001"]
    sdir = StudyDir(tmp_path)
    # the lower lr has the better validation accuracy but the worse test accuracy
    for m, val, test in zip(members, (0.8, 0.7), (0.6, 0.9)):
        run = RunDir(tmp_path / "lr_search" / m.id)
        (run.path / ".hydra").mkdir(parents=True)
        (run.path / ".hydra" / "config.yaml").write_text("{}")
        (run.path / "metrics.jsonl").write_text("")
        run.write_summary({"status": "complete", "lr": m.lr, "seed": 0, "saved": {},
                           "metrics": {"best_validation_accuracy": val, "test_accuracy": test}})
    best = choose_lrs(sdir, members)
    assert best == {"lora_r4": {"lr": 1e-4, "validation_accuracy": 0.8}}


def test_bad_study_values():
    with pytest.raises(ConfigError, match="study.methods contains 'adapter'"):
        validate_study(compose(["study.methods=[full,adapter]"], "study").study)
    with pytest.raises(ConfigError, match="study.ranks"):
        validate_study(compose(["study.ranks=[0,4]"], "study").study)
    with pytest.raises(ConfigError, match="study.seeds is empty"):
        validate_study(compose(["study.seeds=[]"], "study").study)
