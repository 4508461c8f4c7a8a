"""Config composition for every group option and experiment, and start-up validation: every field of every
schema declares a rule, and one bad value per field is refused with one sentence naming the field."""
import dataclasses
from pathlib import Path
from typing import Any, List, Optional, get_type_hints

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, open_dict

from conftest import CONF, compose
from lora_study import methods
from lora_study.config import SECTIONS, validate
from lora_study.schema import Choice, ConfigError, Each, Free, Num, Rule, Values, rules_of

GROUPS = ["model", "task", "method", "optim", "logger", "heldout"]
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
    cfg = compose([], config_name="study")
    assert list(cfg.study.ranks) == [1, 2, 4, 8, 16, 32, 64]
    assert set(cfg.study.methods) == {"none", "full", "lora"}


def test_qlora_config_is_a_delta_of_lora():
    lora, qlora = compose(["method=lora"]).method, compose(["method=qlora"]).method
    assert set(lora) == set(qlora)  # the same fields: qlora.yaml starts from lora.yaml
    assert (qlora.name, qlora.rank, qlora.target_modules) == ("qlora", 16, "all_linear")
    assert qlora.dropout == lora.dropout and qlora.init == lora.init


def test_unknown_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="rnak"):
        compose(["method.rnak=8"])
    with pytest.raises(ConfigCompositionException):  # one schema per method: full finetuning has no rank
        compose(["method=full", "method.rank=8"])


def test_wrong_type_fails_at_composition():
    with pytest.raises(ConfigCompositionException):
        compose(["method.rank=eight"])


# -- every field of every schema ----------------------------------------------------------------------

def bad_value(rule: Rule) -> Any:
    """A value ``rule`` refuses, derived from the rule itself."""
    if isinstance(rule, Num):
        step = 1 if rule.integer else 0.5
        if rule.gt is not None:
            return rule.gt if not rule.integer else int(rule.gt)
        if rule.ge is not None:
            return rule.ge - step if not rule.integer else int(rule.ge) - 1
        return rule.lt if rule.lt is not None else rule.le + step
    if isinstance(rule, Choice):
        return "not_an_option"
    if isinstance(rule, Each):
        return [] if rule.nonempty else [bad_value(rule.item)]
    if isinstance(rule, Values):
        return {"not_an_option": {}} if isinstance(rule.value, Free) else {"x": bad_value(rule.value)}
    return "attn_qvk"  # a rule of its own (LoRA's target presets)


def schema_cases():
    cases = [(section, schema, []) for section, schema in SECTIONS.items()]
    cases += [("method", methods.get(name).schema, [f"method={name}"]) for name in methods.names()
              if (Path(CONF) / "method" / f"{name}.yaml").exists()]
    cases += [(f"{section}.{f.name}", f.default_factory, []) for section, schema in SECTIONS.items()  # nested sections
              for f in dataclasses.fields(schema) if dataclasses.is_dataclass(f.default_factory)]
    return [(section, schema, base, f.name) for section, schema, base in cases for f in dataclasses.fields(schema)]


FREE_TYPES = (bool, str, Optional[str], Optional[bool], Any, List[str])  # List[str]: names (lm-eval tasks), paths


@pytest.mark.parametrize("section,schema,base,field", schema_cases(),
                         ids=lambda x: x if isinstance(x, str) else getattr(x, "__name__", None))
def test_every_field_has_a_rule_and_refuses_one_bad_value(section, schema, base, field):
    rule = rules_of(schema)[field]
    assert rule is not None, f"{schema.__name__}.{field} declares no rule"
    if isinstance(rule, Free):  # only names, paths, switches and user task specs are left free
        kind = get_type_hints(schema)[field]
        assert kind in FREE_TYPES or field == "extra" or dataclasses.is_dataclass(kind), \
            f"{section}.{field} is numeric but Free"
        return
    cfg = compose(base + (["study.dims=[10]"] if section == "study" else []), config_name="study")
    bad = bad_value(rule)
    with open_dict(cfg):
        OmegaConf.update(cfg, f"{section}.{field}", bad, merge=False)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    assert msg.startswith(f"{section}.{field}="), msg
    assert msg.endswith(".") and msg.count(". ") == 0, msg


@pytest.mark.parametrize("override,needle", [
    ("method.rank=0", "method.rank=0 is not valid; it must be a positive integer."),
    ("method.rank=-3", "method.rank=-3"),
    ("optim.lr=0", "optim.lr=0.0 is not valid; it must be positive."),
    ("optim.lr=-1e-4", "optim.lr=-0.0001"),
    ("optim.beta2=1.5", "optim.beta2=1.5 is not valid; it must be a number in [0, 1)."),
    ("optim.weight_decay=-1", "optim.weight_decay=-1.0"),
    ("optim.max_grad_norm=-1", "optim.max_grad_norm=-1.0"),
    ("train.max_steps=0", "train.max_steps=0"),
    ("run.latency_repeats=0", "run.latency_repeats=0"),
    ("heldout.n_drift=0", "heldout.n_drift=0"),
    ("task.n_test=0", "task.n_test=0"),
    ("task.n_test=-5", "task.n_test=-5 is not valid; it must be a positive integer."),
    ("study.dims=[100,-1]", "study.dims=[100, -1] is not valid; it must be a list whose every value is a positive"),
    ("study.lr_grid.lora=[0.001,0]", "study.lr_grid="),
    ("study.lr_by_rank={8:-0.1}", "study.lr_by_rank={8: -0.1} is not valid"),
    ("method.name=adapter", "method.name='adapter' is not valid; choose one of none, full, lora"),
    ("method.target_modules=attn_qvk", "method.target_modules='attn_qvk' is not valid; it must be one of the presets"),
    ("train.device=tpu", "train.device='tpu'"),
    ("method=subspace method.head_lr=-0.1", "method.head_lr=-0.1"),
    ("method=subspace method.d=0", "method.d=0"),
    ("method=subspace method.projection=gaussian", "method.projection='gaussian' is not valid; choose one of fastfood"),
    ("task.family=vision", "task.family='vision' is not valid; choose one of classification, causal_lm"),
    ("study.method_options={adapter:{rank:2}}", "study.method_options={'adapter': {'rank': 2}} is not valid"),
    ("method=full run.evaluate_test=false", "run.evaluate_test=false leaves no test split for run.truncation_ranks to"),
    ("method=lora run.evaluate_test=false run.intruder_scaling=true", "no test split for run.intruder_scaling to"),
])
def test_bad_values_give_one_sentence(override, needle):
    cfg = compose(override.split(), config_name="study")
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    assert needle in msg and msg.count(". ") == 0 and msg.endswith("."), msg


def test_a_run_without_the_test_split_is_valid_where_nothing_needs_it():
    validate(compose(["method=lora", "run.evaluate_test=false"], config_name="study"))  # LoRA truncates nothing
    validate(compose(["method=full", "run.evaluate_test=false", "run.truncation_ranks=[]"], config_name="study"))


def test_method_options_must_name_fields_of_the_method():
    from lora_study.study.planning import main_members, validate_study
    st = compose(["experiment=intrinsic_dim"], "study").study
    validate_study(st)
    subspace = [m for m in main_members(st, {}) if m.method == "subspace"]
    assert subspace and all("method.head_lr=0.3" in m.overrides() for m in subspace)
    assert all("method.head_lr=0.3" not in m.overrides() for m in main_members(st, {}) if m.method != "subspace")
    with pytest.raises(ConfigError, match="study.method_options.lora.head_lr is not a field of method lora"):
        validate_study(compose(["study.method_options={lora:{head_lr:0.3}}"], "study").study)


def test_sources_of_another_family_and_missing_names_are_refused():
    with pytest.raises(ConfigError, match="task.source=bbc_business is not a classification task"):
        validate(compose(["task.source=bbc_business"]))
    with pytest.raises(ConfigError, match="task=files needs task.train_file"):
        validate(compose(["task=files", "task.train_file=null"]))
    with pytest.raises(ConfigError, match="model=hf needs model.name"):
        validate(compose(["model=hf", "model.name=null"]))


def test_training_length_is_a_delta_of_rank_sweep_with_checkpoints_where_validation_and_probes_meet():
    sweep, length = compose(["experiment=rank_sweep"], "study"), compose(["experiment=training_length"], "study")
    assert dict(length.study.lr_by_rank) == dict(sweep.study.lr_by_rank)  # rank_sweep's rates, not a copy
    assert dict(length.study.lr) == dict(sweep.study.lr)
    assert list(length.study.seeds) == [0] and list(sweep.study.seeds) == [0, 1, 2, 3, 4]  # one path per member
    assert length.study.name == "training_length" and len(length.study.ranks) == 2
    every = length.heldout.every
    assert every > 0 and every == length.train.eval_every  # every probe has a validation score beside it
    assert length.train.max_steps % every == 0 and length.train.max_steps // every >= 4
    assert length.train.max_steps > sweep.train.max_steps
