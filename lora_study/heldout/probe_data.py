"""The held-out tasks' data: labelled probe tasks for encoders and the unlabelled drift texts, each with a fixed,
seeded split (``heldout.seed``), the same for every run. The causal-LM scorer builds its instruction tasks from
the same probe splits.

- ``bbc_topic``: BBC news topic (5 classes);
- ``subjectivity``: plot summary (objective, 0) vs review (subjective, 1): plot rows and the reviews the
  default task keeps out of every split (its reserve), so no probe text was seen in training;
- ``political_party``: party (democrat / republican) of 2012 convention speeches, chunked into passages;
  speeches are assigned whole to the probe's train or test side;
- drift texts: the Lee news corpus and Wikipedia paragraphs, half each;
- ``heldout.extra``: users' tasks (task configs, source=files|hf), probed on their own train / test splits.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Tuple

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from .. import corpora
from ..cache import cached_file, code_fingerprint
from ..schema import ConfigError
from ..tasks import TaskConfig
from ..tasks.classification import load_task

BUILTIN = ("bbc_topic", "subjectivity", "political_party")
# the default task's split: its reserve holds the reviews no target split contains
DEFAULT_REVIEW_SPLIT = dict(n_test=1000, n_validation=500, n_reserve=1000, seed=0)


@dataclass
class ProbeTask:
    name: str
    train_texts: List[str]
    train_labels: List[int]
    test_texts: List[str]
    test_labels: List[int]


def _sample(df: pd.DataFrame, n: int, seed: int, label: str = "label") -> pd.DataFrame:
    """A stratified sample of n rows (all rows if fewer), seeded."""
    from sklearn.model_selection import train_test_split
    if n >= len(df):
        return df.sample(frac=1.0, random_state=seed)
    _, part = train_test_split(df, test_size=n, random_state=seed, stratify=df[label])
    return part


def _split(df: pd.DataFrame, cfg, name: str) -> ProbeTask:
    from sklearn.model_selection import train_test_split
    df = _sample(df, cfg.n_train + cfg.n_test, cfg.seed)
    tr, te = train_test_split(df, test_size=cfg.n_test, random_state=cfg.seed, stratify=df["label"])
    return ProbeTask(name, tr.text.tolist(), tr.label.tolist(), te.text.tolist(), te.label.tolist())


def bbc_topic(cfg) -> ProbeTask:
    return _split(corpora.bbc_topic_frame(), cfg, "bbc_topic")


def subjectivity(cfg) -> ProbeTask:
    plots = corpora.plot_summaries()
    reserve = corpora.review_splits(**DEFAULT_REVIEW_SPLIT)["reserve"].text.astype(str).tolist()
    n = min(len(plots), len(reserve))
    rows = pd.concat([pd.DataFrame({"text": plots[:n], "label": 0}), pd.DataFrame({"text": reserve[:n], "label": 1})])
    return _split(rows, cfg, "subjectivity")


def political_party(cfg, words: int = 60) -> ProbeTask:
    df = corpora.political_speeches()
    rng = np.random.default_rng(cfg.seed)
    test_speech = set(rng.permutation(len(df))[: len(df) // 2].tolist())
    chunks = {"train": [], "test": []}
    for i, row in df.iterrows():
        toks = str(row.text).split()
        for s in range(0, max(len(toks) - words // 2, 1), words):
            chunks["test" if i in test_speech else "train"].append(
                {"text": " ".join(toks[s:s + words]), "label": int(row.party == "republican")})
    tr = _sample(pd.DataFrame(chunks["train"]), cfg.n_train, cfg.seed)
    te = _sample(pd.DataFrame(chunks["test"]), cfg.n_test, cfg.seed)
    return ProbeTask("political_party", tr.text.tolist(), tr.label.tolist(), te.text.tolist(), te.label.tolist())


def drift_texts(cfg) -> List[str]:
    """``heldout.n_drift`` unlabelled held-out texts: half Lee corpus, half Wikipedia, seeded."""
    lee, wiki = corpora.lee_paragraphs(), corpora.wiki_paragraphs()
    half = cfg.n_drift // 2
    rng = np.random.default_rng(cfg.seed)
    pick = lambda xs, n: [xs[i] for i in sorted(rng.permutation(len(xs))[:n])]  # noqa: E731
    return pick(lee, half) + pick(wiki, cfg.n_drift - half)


def custom_task(spec: dict, cfg) -> ProbeTask:
    """A user's held-out task: any classification task config (source=files or hf) probed on its own splits."""
    spec = dict(spec)
    name = spec.pop("name", None) or "custom"
    try:
        t = load_task(TaskConfig(**spec))
    except TypeError as e:
        raise ConfigError(f"heldout.extra entry {name!r} has an unknown key ({e}); use task config keys.") from e
    tr = _sample(pd.DataFrame({"text": t.train.texts, "label": t.train.labels}), cfg.n_train, cfg.seed)
    te = _sample(pd.DataFrame({"text": t.test.texts, "label": t.test.labels}), cfg.n_test, cfg.seed)
    return ProbeTask(name, tr.text.tolist(), tr.label.tolist(), te.text.tolist(), te.label.tolist())


MAKERS = {"bbc_topic": bbc_topic, "subjectivity": subjectivity, "political_party": political_party}


def probe_data(cfg) -> Tuple[List[ProbeTask], List[str]]:
    """Probe tasks and drift texts, built once per held-out config and cached (parsing the corpora is slow)."""
    def build():
        tasks = [MAKERS[name](cfg) for name in cfg.tasks] + [custom_task(spec, cfg) for spec in cfg.extra]
        return tasks, drift_texts(cfg) if cfg.drift else []

    def write(value, tmp):
        tasks, drift = value
        with open(tmp, "w") as f:
            json.dump({"tasks": [asdict(t) for t in tasks], "drift": drift}, f)

    def read(path):
        d = json.loads(path.read_text())
        return [ProbeTask(**t) for t in d["tasks"]], d["drift"]
    key = {**_key(cfg), "code": code_fingerprint("lora_study.corpora", __name__)}
    return cached_file("heldout-data", key, ".json", build, write, read)


def _key(cfg) -> Dict[str, Any]:
    """What the held-out data depends on: the held-out config without the probing schedule."""
    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(vars(cfg))
    plain.pop("every", None)
    return plain
