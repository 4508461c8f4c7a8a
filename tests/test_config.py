"""Config composition for every group option and experiment, and start-up validation of values."""
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from conftest import CONF, compose
from lora_study.config import ConfigError, validate

GROUPS = ["model", "task", "method", "optim", "logger"]
REQUIRED = {"model/hf": ["model.name=roberta-base"], "task/hf": ["task.name=imdb"],
            "task/files": ["task.train_file=x.csv"], "task/lm_jsonl": ["task.train_file=x.jsonl"]}


@pytest.mark.parametrize("group,option", [(g, p.stem) for g in GROUPS for p in sorted((Path(CONF) / g).glob("*.yaml"))])
def test_every_group_option_composes_and_validates(group, option):
    cfg = compose([f"{group}={option}"] + REQUIRED.get(f"{group}/{option}", []))
    validate(cfg)


@pytest.mark.parametrize("exp", [p.stem for p in sorted((Path(CONF) / "experiment").glob("*.yaml"))])
def test_every_experiment_composes(exp):
    for name in ("config", "study"):
        cfg = compose([f"experiment={exp}"], config_name=name)
        validate(cfg)


def test_study_config_is_multirun_with_the_study_sweeper():
    from hydra.core.global_hydra import GlobalHydra  # noqa: F401
    cfg = compose([], config_name="study")
    assert list(cfg.study.ranks) == [1, 2, 4, 8, 16, 32, 64]
    assert set(cfg.study.methods) == {"none", "full", "lora"}


def test_unknown_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="rnak"):
        compose(["method.rnak=8"])


def test_wrong_type_fails_at_composition():
    with pytest.raises(ConfigCompositionException):
        compose(["method.rank=eight"])


@pytest.mark.parametrize("override,needle", [
    ("method.rank=0", "method.rank=0"),
    ("method.rank=-3", "method.rank=-3"),
    ("optim.lr=0", "optim.lr=0"),
    ("optim.lr=-1e-4", "optim.lr=-0.0001"),
    ("train.max_steps=0", "train.max_steps=0"),
    ("method.name=adapter", "method.name='adapter'"),
    ("method.target_modules=attn_qvk", None),
    ("train.device=tpu", "train.device='tpu'"),
    ("method=subspace method.head_lr=-0.1", "method.head_lr=-0.1"),
    ("method=subspace method.d=0", "method.d=0"),
])
def test_bad_values_give_one_sentence(override, needle):
    cfg = compose(override.split())
    if needle is None:  # target presets are checked against the model, see test_methods
        validate(cfg)
        return
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    assert needle in msg and msg.count(". ") == 0 and msg.endswith(".")
