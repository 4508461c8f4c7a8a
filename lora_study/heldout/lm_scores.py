"""Held-out evaluation of causal LMs: what a finetune costs the base model on text and a task it was
not finetuned on (Biderman et al. 2024's forgetting, with offline stand-ins for their benchmarks).

Tasks (``heldout.lm_tasks``):

- ``lee_wiki``: perplexity on held-out unlabelled text, the Lee news corpus and Wikipedia paragraphs
  (the drift texts of ``lora_study.heldout.probe_data``), each cut to ``heldout.max_length`` tokens (for instruction tasks, the text gets
  ``heldout.max_length`` tokens and the instruction and chat markup come on top);
- ``bbc_tech_politics``: perplexity on BBC tech and politics articles (never in any target task);
- ``subjectivity``: exact match of the greedy answer to "is this a review or a plot summary?" on the
  encoder probe's test side (reviews from the default task's reserve, kept out of every split);
- ``bbc_topic``: exact match of the article's topic (business / entertainment / politics / sport / tech;
  not a default, since lm_bbc_business trains on business articles);
- ``heldout.extra``: users' LM tasks (task configs with family=causal_lm), scored by their own metric on their test split.

Sign convention — positive always means forgetting:

    accuracy tasks:    forgetting = base − finetuned              (a fraction)
    perplexity tasks:  forgetting = finetuned − base              (perplexity units)
                       relative   = finetuned / base − 1          (a fraction)
    forgetting_mean    = mean over tasks of (accuracy forgetting, relative perplexity increase)

The base's scores and its mean-pooled last hidden states on ``lee_wiki`` (for linear CKA drift, as the
encoder path reports) are computed once, before training, and cached under the suite's cache directory
keyed by model, texts and lengths, exactly as the encoder path caches its features.
"""
from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

from .. import corpora
from ..cache import cached_file, code_fingerprint
from .cka import linear_cka, linear_cka_debiased
from ..schema import ConfigError
from ..tasks import TaskConfig
from ..tasks.causal_lm import load_lm_task
from ..tasks.decoding import exact_match, generate_answers, nll_sum, normalise_answer, perplexity
from ..tasks.lm_encoding import LMEncoded, LMSplit, encode_pair, text_batches
from .probe_data import _key, bbc_topic, drift_texts, subjectivity

LM_BUILTIN = ("lee_wiki", "bbc_tech_politics", "subjectivity", "bbc_topic")
SUBJ_PROMPT = ("Is the following text a movie review or a plot summary? Answer with one word: review or plot."
               "\n\nText: {text}")
TOPIC_PROMPT = ("What is the topic of this news article? Answer with one word: business, entertainment, politics, "
                "sport or tech.\n\nArticle: {text}")
TOPICS = ["business", "entertainment", "politics", "sport", "tech"]


@dataclass
class LMHeldoutTask:
    name: str
    metric: str  # perplexity | exact_match
    texts: Optional[List[str]] = None  # perplexity
    prompts: Optional[List[str]] = None  # prompt → answer tasks
    answers: Optional[List[str]] = None
    template: str = "{text}"  # the instruction around each text (its tokens do not count against max_length)


def _bbc_tech_politics(cfg) -> LMHeldoutTask:
    arts = [f"{t}. {b}" for topic in ("tech", "politics") for t, b in corpora.bbc_articles(topic)]
    pick = np.random.default_rng(cfg.seed).permutation(len(arts))[:cfg.n_test]
    return LMHeldoutTask("bbc_tech_politics", "perplexity", texts=[arts[i] for i in sorted(pick)])


def _instruction(name: str, probe, prompt: str, labels: List[str]) -> LMHeldoutTask:
    return LMHeldoutTask(name, "exact_match", prompts=[prompt.format(text=t) for t in probe.test_texts],
                         answers=[labels[y] for y in probe.test_labels], template=prompt)


def _extra(spec: dict) -> LMHeldoutTask:
    spec = dict(spec)
    name = spec.pop("name", None) or "custom"
    try:
        t = load_lm_task(TaskConfig(**{**spec, "family": "causal_lm"}))
    except TypeError as e:
        raise ConfigError(f"heldout.extra entry {name!r} has an unknown key ({e}); use task config keys.") from e
    return LMHeldoutTask(name, t.metric, prompts=t.test.prompts, answers=t.test.completions)


def load_lm_heldout(cfg) -> List[LMHeldoutTask]:
    makers = {"lee_wiki": lambda c: LMHeldoutTask("lee_wiki", "perplexity", texts=drift_texts(c)),
              "bbc_tech_politics": _bbc_tech_politics,
              "subjectivity": lambda c: _instruction("subjectivity", subjectivity(c), SUBJ_PROMPT, ["plot", "review"]),
              "bbc_topic": lambda c: _instruction("bbc_topic", bbc_topic(c), TOPIC_PROMPT, TOPICS)}
    tasks = []
    for name in cfg.lm_tasks:
        if name not in makers:
            raise ConfigError(f"heldout.lm_tasks contains {name!r}; built-in held-out tasks for causal LMs are "
                              f"{', '.join(LM_BUILTIN)} (add your own under heldout.extra).")
        tasks.append(makers[name](cfg))
    return tasks + [_extra(spec) for spec in cfg.extra]


class LMScorer:
    """Held-out LM tasks plus the base's scores and drift features, prepared before training."""

    def __init__(self, cfg, model, tokenizer, model_path: str, device, precision: str = "fp32",
                 batch_size: int = 16):
        self.cfg, self.tokenizer, self.device, self.precision, self.batch_size = cfg, tokenizer, device, precision, batch_size
        self.tasks = _lm_data(cfg)
        self.base_scores, self.base_drift, self.base_examples = self._cached(model, model_path)

    def _encoded(self, task: LMHeldoutTask) -> LMEncoded:
        """Prompt → answer pairs with room for ``heldout.max_length`` tokens of text beyond the instruction,
        chat markup and longest answer."""
        longest = max(task.answers, key=len)
        markup = sum(map(len, encode_pair(self.tokenizer, task.template.format(text=""), longest, 1 << 20)))
        return LMEncoded(LMSplit(task.prompts, task.answers), self.tokenizer, self.cfg.max_length + markup)

    def _score(self, model, task: LMHeldoutTask) -> tuple:
        """(score, mean-pooled last hidden states or None, per-example arrays) of one task."""
        if task.metric == "exact_match":
            data = self._encoded(task)
            preds = generate_answers(model, data, self.batch_size, self.cfg.max_new_tokens, self.device, self.precision)
            correct = np.array([normalise_answer(p) == normalise_answer(a) for p, a in zip(preds, task.answers)])
            return exact_match(preds, task.answers), None, {"correct": correct}
        if task.texts is None:  # a user's prompt → completion task scored by perplexity of the completions
            data = self._encoded(task)
            r = perplexity(model, data.eval_batches(self.batch_size), self.device, self.precision, n=len(data))
            return r["perplexity"], None, r["per_example"]
        return self._text_perplexity(model, task.texts, drift=task.name == "lee_wiki")

    @torch.no_grad()
    def _text_perplexity(self, model, texts: List[str], drift: bool) -> tuple:
        was = model.training
        model.eval()
        total, count = 0.0, 0
        nll, tokens = np.zeros(len(texts)), np.zeros(len(texts), dtype=np.int64)
        feats = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32) if drift else None
        for idx, batch in text_batches(self.tokenizer, texts, self.cfg.max_length, self.batch_size):
            s, n, pooled = nll_sum(model, batch, self.device, self.precision, pooled=drift)
            total, count = total + float(s.sum()), count + int(n.sum())
            nll[idx], tokens[idx] = s.double().numpy(), n.numpy()
            if drift:
                feats[idx] = pooled.numpy()
        model.train(was)
        return float(np.exp(min(total / max(count, 1), 700.0))), feats, {"nll": nll, "tokens": tokens}

    def _all(self, model) -> tuple:
        scores, drift, per_example = {}, None, {}
        for t in self.tasks:
            scores[t.name], f, per_example[t.name] = self._score(model, t)
            drift = f if f is not None else drift
        return scores, drift, per_example

    def _cached(self, model, model_path: str) -> tuple:
        key = {"model": model_path, "len": self.cfg.max_length, "new": self.cfg.max_new_tokens,
               "tasks": [asdict(t) for t in self.tasks],
               "code": code_fingerprint(__name__, "lora_study.tasks.decoding", "lora_study.tasks.lm_encoding")}

        def write(value, tmp):
            scores, drift, per_example = value
            arrays = {f"pe__{task}__{k}": v for task, d in per_example.items() for k, v in d.items()}
            buf = io.BytesIO()
            np.savez(buf, scores=json.dumps(scores), **({"drift": drift} if drift is not None else {}), **arrays)
            with open(tmp, "wb") as f:
                f.write(buf.getvalue())

        def read(path):
            with np.load(path) as z:
                per_example: Dict[str, Dict[str, np.ndarray]] = {}
                for name in z.files:
                    if name.startswith("pe__"):
                        _, task, k = name.split("__", 2)
                        per_example.setdefault(task, {})[k] = z[name]
                return json.loads(str(z["scores"])), (z["drift"] if "drift" in z.files else None), per_example
        return cached_file("heldout-lm", key, ".npz", lambda: self._all(model), write, read)

    def evaluate(self, model) -> Dict[str, object]:
        """Base and finetuned scores, forgetting per task (positive = worse than the base) and their mean."""
        ft, drift, examples = self._all(model)
        tasks, rel = {}, []
        for t in self.tasks:
            base, now = self.base_scores[t.name], ft[t.name]
            if t.metric == "perplexity":
                entry = {"base": base, "finetuned": now, "forgetting": now - base, "relative": now / base - 1.0}
            else:
                entry = {"base": base, "finetuned": now, "forgetting": base - now, "relative": base - now}
            tasks[t.name] = {**entry, "metric": t.metric}
            rel.append(entry["relative"])
        out: Dict[str, object] = {
            "tasks": tasks, "forgetting_mean": float(np.mean(rel)) if rel else None,
            "sign": "positive = forgetting; exact-match tasks: base − finetuned accuracy; perplexity tasks: "
                    "finetuned − base perplexity; forgetting_mean averages base − finetuned accuracy and the relative "
                    "perplexity increase finetuned / base − 1",
            "probe": {"n_test": self.cfg.n_test, "n_drift": self.cfg.n_drift, "max_length": self.cfg.max_length,
                      "max_new_tokens": self.cfg.max_new_tokens, "features": "mean-pooled last hidden state (CKA)"}}
        if drift is not None and self.base_drift is not None:
            out.update(cka=linear_cka_debiased(self.base_drift, drift), cka_biased=linear_cka(self.base_drift, drift),
                       cka_n=len(drift))
        out["per_example"] = {f"{task}.{side}_{k}": v for side, ex in (("base", self.base_examples), ("finetuned", examples))
                              for task, d in ex.items() for k, v in d.items()}
        return out


def _lm_data(cfg) -> List[LMHeldoutTask]:
    """Held-out LM tasks, built once per held-out config and cached (parsing the corpora is slow)."""
    def write(tasks, tmp):
        with open(tmp, "w") as f:
            json.dump([asdict(t) for t in tasks], f)
    key = {**_key(cfg), "code": code_fingerprint("lora_study.corpora", "lora_study.heldout.probe_data", __name__)}
    return cached_file("heldout-lm-data", key, ".json", lambda: load_lm_heldout(cfg), write,
                       lambda path: [LMHeldoutTask(**t) for t in json.loads(path.read_text())])
