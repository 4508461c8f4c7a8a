"""Held-out probes for encoders: what a finetune costs the base model on tasks it was not finetuned on.

Each held-out task is probed, not finetuned: frozen mean-pooled features of the model's encoder and a
scikit-learn logistic regression on a fixed, seeded probe split (the same split and probe for every run).
Forgetting = probe accuracy of the base model − probe accuracy of the finetuned model. Representation drift
is linear CKA (Kornblith et al. 2019) between the base's and the finetuned model's features on held-out
unlabelled text, debiased (``lora_study.heldout.cka``).

The base's features are computed once (before training, when the model is still the base) and cached under
the suite's cache directory, keyed by model, texts and length, so a study computes them once.
"""
from __future__ import annotations

import io
from typing import Dict, List

import numpy as np
import torch

from ..cache import cached_file, code_fingerprint
from .cka import linear_cka, linear_cka_debiased
from .probe_data import probe_data


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


def probe_correct(train_x, train_y, test_x, test_y, C: float) -> np.ndarray:
    """Which test examples a standardised L2 logistic-regression probe, fit on the train side, gets right."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    clf.fit(train_x, train_y)
    return clf.predict(test_x) == np.asarray(test_y)


def _write_npz(arrays: Dict[str, np.ndarray], tmp: str) -> None:
    buf = io.BytesIO()
    np.savez(buf, **{k.replace("/", "__"): v for k, v in arrays.items()})
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())


def _read_npz(path) -> Dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k.replace("__", "/"): z[k] for k in z.files}


class ProbeScorer:
    """Held-out probe data plus the base's features, prepared before training."""

    def __init__(self, cfg, model, tokenizer, model_path: str, device, precision: str = "fp32", batch_size: int = 64):
        self.cfg = cfg
        self.tasks, self.drift = probe_data(cfg)
        self.tokenizer = tokenizer
        self.device = device
        key = {"model": model_path, "len": self.cfg.max_length, "texts": self._texts(), "code": code_fingerprint(__name__)}
        self.base = cached_file("heldout-features", key, ".npz", lambda: self._all(model), _write_npz, _read_npz)

    def _texts(self) -> Dict[str, List[str]]:
        t = {f"{p.name}/{side}": getattr(p, f"{side}_texts") for p in self.tasks for side in ("train", "test")}
        if self.drift:
            t["drift"] = self.drift
        return t

    def _all(self, model) -> Dict[str, np.ndarray]:
        return {k: features(model, self.tokenizer, v, self.cfg.max_length, self.device) for k, v in self._texts().items()}

    def _correct(self, feats: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return {p.name: probe_correct(feats[f"{p.name}/train"], p.train_labels, feats[f"{p.name}/test"],
                                      p.test_labels, self.cfg.C) for p in self.tasks}

    def evaluate(self, model) -> Dict[str, object]:
        """Probe accuracies of base and model, forgetting per task and mean, and CKA drift; ``per_example`` holds
        each task's test correctness of the base's and the model's probe (for paired tests)."""
        ft = self._all(model)
        base_c, ft_c = self._correct(self.base), self._correct(ft)
        base_s = {n: float(np.mean(c)) for n, c in base_c.items()}
        ft_s = {n: float(np.mean(c)) for n, c in ft_c.items()}
        # chance: the majority label's share of the probe's test examples, what a probe that learned nothing scores
        chance = {p.name: float(np.bincount(np.asarray(p.test_labels)).max() / len(p.test_labels)) for p in self.tasks}
        tasks = {n: {"base": base_s[n], "finetuned": ft_s[n], "forgetting": base_s[n] - ft_s[n], "metric": "accuracy",
                     "chance": chance[n], "n": len(base_c[n])} for n in base_s}
        out: Dict[str, object] = {"tasks": tasks,
                                  "forgetting_mean": float(np.mean([t["forgetting"] for t in tasks.values()]))
                                  if tasks else None,
                                  "probe": {"n_train": self.cfg.n_train, "n_test": self.cfg.n_test, "C": self.cfg.C,
                                            "features": "mean-pooled last hidden state", "max_length": self.cfg.max_length}}
        if self.drift:
            # debiased CKA (≈ 0 for unrelated features, 1 for a rotation); the biased estimator beside it is
            # inflated when the number of texts is not much larger than the feature width
            out.update(cka=linear_cka_debiased(self.base["drift"], ft["drift"]),
                       cka_biased=linear_cka(self.base["drift"], ft["drift"]), cka_n=len(self.drift))
        out["per_example"] = {f"{n}.{side}_correct": c for n in base_c
                              for side, c in (("base", base_c[n]), ("finetuned", ft_c[n]))}
        return out
