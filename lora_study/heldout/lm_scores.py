"""Held-out evaluation of causal LMs: what a finetune costs the base model on text and a task it was
not finetuned on (Biderman et al. 2024's forgetting), measured as the field measures it: cross-entropy and the KL
divergence to the base on held-out text, and lm-evaluation-harness tasks (``heldout.lm_eval.tasks``,
``lora_study.heldout.harness``: log-likelihood multiple choice).

Tasks (``heldout.lm_tasks``):

- ``lee_wiki``: per-token cross-entropy (perplexity) on held-out unlabelled text, the Lee news corpus and Wikipedia paragraphs
  (the drift texts of ``lora_study.heldout.probe_data``), each cut to ``heldout.max_length`` tokens (for instruction tasks, the text gets
  ``heldout.max_length`` tokens and the instruction and chat markup come on top);
- ``bbc_tech_politics``: perplexity on BBC tech and politics articles (never in any target task);
- ``subjectivity``: exact match of the greedy answer to "is this a review or a plot summary?" on the
  encoder probe's test side (reviews from the default task's reserve, kept out of every split);
- ``bbc_topic``: exact match of the article's topic (business / entertainment / politics / sport / tech;
  not a default, since lm_bbc_business trains on business articles);
- ``heldout.extra``: users' LM tasks (task configs with family=causal_lm), scored by their own metric on their test split.

Each text task also gives ``<task>_kl``: KL(p_base ‖ p_finetuned) per token over the same tokens, over the base's top
``heldout.kl_top_k`` tokens and the rest lumped (``lora_study.heldout.divergence``: a lower bound of the full KL,
exact at q = p); ``kl_top_k=0`` turns it off.

Sign convention — positive always means forgetting:

    accuracy tasks:    forgetting = base − finetuned              (a fraction; exact match and lm-eval tasks)
    perplexity tasks:  forgetting = finetuned − base              (perplexity units)
                       relative   = finetuned / base − 1          (a fraction)
    KL tasks:          forgetting = KL(base ‖ finetuned)          (nats per token; the base's own is 0)
    forgetting_mean    = mean accuracy drop over the accuracy tasks; forgetting_by_unit gives each unit's mean
                         (accuracy drop, relative perplexity increase, KL), never averaged together

Per example (``per_example``, saved in ``predictions.safetensors`` as ``heldout.<task>.<side>_<array>``): ``correct``
of accuracy tasks, ``nll`` and ``tokens`` of text tasks (both sides), ``kl_sum`` and ``tokens`` of ``<task>_kl``
(finetuned side): the arrays ``analysis.measures.forgetting`` pairs across runs.

The base's scores, its per-example outputs, its top-k next-token distributions on the text tasks and its
mean-pooled last hidden states on ``lee_wiki`` (for linear CKA drift, as the encoder path reports) are computed
once, before training, and cached under the suite's cache directory keyed by model, texts, lengths, k and the
lm-eval tasks, exactly as the encoder path caches its features.
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
from ..device import autocast, to_device
from . import divergence, harness
from .cka import linear_cka, linear_cka_debiased
from ..schema import ConfigError
from ..tasks import TaskConfig
from ..tasks.causal_lm import load_lm_task
from ..tasks.decoding import exact_match, generate_answers, normalise_answer, perplexity
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
        self.manager = harness.task_manager(cfg.lm_eval)  # an unknown lm-eval task stops the run here
        self.base_scores, self.base_drift, self.base_examples, self.base_top_k = self._cached(model, model_path)

    def _encoded(self, task: LMHeldoutTask) -> LMEncoded:
        """Prompt → answer pairs with room for ``heldout.max_length`` tokens of text beyond the instruction,
        chat markup and longest answer."""
        longest = max(task.answers, key=len)
        markup = sum(map(len, encode_pair(self.tokenizer, task.template.format(text=""), longest, 1 << 20)))
        return LMEncoded(LMSplit(task.prompts, task.answers), self.tokenizer, self.cfg.max_length + markup)

    def _score(self, model, task: LMHeldoutTask, base_top_k=None) -> tuple:
        """(score, mean-pooled last hidden states or None, per-example arrays, the base's top k (base side) or the
        KL to the base (finetuned side) or None) of one task."""
        if task.metric == "exact_match":
            data = self._encoded(task)
            preds = generate_answers(model, data, self.batch_size, self.cfg.max_new_tokens, self.device, self.precision)
            correct = np.array([normalise_answer(p) == normalise_answer(a) for p, a in zip(preds, task.answers)])
            return exact_match(preds, task.answers), None, {"correct": correct}, None
        if task.texts is None:  # a user's prompt → completion task scored by perplexity of the completions
            data = self._encoded(task)
            r = perplexity(model, data.eval_batches(self.batch_size), self.device, self.precision, n=len(data))
            return r["perplexity"], None, r["per_example"], None
        return self._text_perplexity(model, task.texts, task.name == "lee_wiki", base_top_k)

    @torch.no_grad()
    def _text_perplexity(self, model, texts: List[str], drift: bool, base_top_k=None) -> tuple:
        """One pass over the texts: perplexity, per-example NLL sums and token counts, pooled features with
        ``drift``; without ``base_top_k`` (the base's pass) its top k per scored token, with it (a finetuned model)
        each example's summed KL to the base. The batches are the same on both sides, so the k-sets line up."""
        was = model.training
        model.eval()
        k = self.cfg.kl_top_k
        nll, tokens, kl = np.zeros(len(texts)), np.zeros(len(texts), dtype=np.int64), np.zeros(len(texts))
        feats = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32) if drift else None
        tops, at = [], 0
        for idx, batch in text_batches(self.tokenizer, texts, self.cfg.max_length, self.batch_size):
            batch = to_device(batch, self.device)
            with autocast(self.device, self.precision):
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            output_hidden_states=drift)
            logits, targets, rows = divergence.scored_logits(out.logits, batch["labels"])
            per_token = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            sums = torch.zeros(len(idx), device=logits.device).index_add_(0, rows, per_token)
            nll[idx], tokens[idx] = sums.double().cpu().numpy(), torch.bincount(rows, minlength=len(idx)).cpu().numpy()
            if drift:
                h, m = out.hidden_states[-1].float(), batch["attention_mask"].unsqueeze(-1).float()
                feats[idx] = ((h * m).sum(1) / m.sum(1).clamp(min=1)).cpu().numpy()
            if k and base_top_k is None:
                tops.append([x.cpu() for x in divergence.top_k(logits, k)])
            elif k:
                ids, logp, tail = (torch.as_tensor(a[at:at + len(rows)]).to(logits.device) for a in base_top_k)
                at += len(rows)
                per = divergence.kl_top_k(logits, ids, logp, tail)
                kl[idx] = torch.zeros(len(idx), dtype=torch.float64, device=per.device).index_add_(0, rows, per) \
                    .cpu().numpy()
        model.train(was)
        score = float(np.exp(min(nll.sum() / max(tokens.sum(), 1), 700.0)))
        extra = None
        if k and base_top_k is None:
            extra = tuple(torch.cat(parts).numpy() for parts in zip(*tops))
        elif k:
            extra = {"kl_sum": kl, "tokens": tokens.copy()}  # its own array: safetensors refuses shared memory
        return score, feats, {"nll": nll, "tokens": tokens}, extra

    def _all(self, model, base_top_k=None) -> tuple:
        """(scores, drift features, per-example arrays, per text task the base's top k) of the base (``base_top_k``
        None); of a finetuned model, with ``<task>_kl`` scores and arrays from the base's ``base_top_k``."""
        scores, drift, per_example, top = {}, None, {}, {}
        for t in self.tasks:
            theirs = None if base_top_k is None else base_top_k.get(t.name)
            scores[t.name], f, per_example[t.name], extra = self._score(model, t, theirs)
            drift = f if f is not None else drift
            if isinstance(extra, tuple):
                top[t.name] = extra
            elif extra is not None:
                per_example[f"{t.name}_kl"] = extra
                scores[f"{t.name}_kl"] = float(extra["kl_sum"].sum() / max(extra["tokens"].sum(), 1))
        if self.manager is not None:
            for name, h in harness.harness_scores(model, self.tokenizer, self.cfg.lm_eval, self.batch_size,
                                                  self.manager).items():
                scores[name], per_example[name] = h.accuracy, {"correct": h.correct}
                scores[f"{name}.chance"] = h.chance
        return scores, drift, per_example, top

    def _cached(self, model, model_path: str) -> tuple:
        key = {"model": model_path, "len": self.cfg.max_length, "new": self.cfg.max_new_tokens,
               "tasks": [asdict(t) for t in self.tasks], "kl_top_k": self.cfg.kl_top_k,
               "lm_eval": _harness_key(self.cfg.lm_eval),
               "code": code_fingerprint(__name__, "lora_study.tasks.decoding", "lora_study.tasks.lm_encoding",
                                        "lora_study.heldout.divergence", "lora_study.heldout.harness")}

        def write(value, tmp):
            scores, drift, per_example, top = value
            arrays = {f"pe__{task}__{k}": v for task, d in per_example.items() for k, v in d.items()}
            arrays.update({f"top__{task}__{i}": v for task, parts in top.items() for i, v in enumerate(parts)})
            buf = io.BytesIO()
            np.savez(buf, scores=json.dumps(scores), **({"drift": drift} if drift is not None else {}), **arrays)
            with open(tmp, "wb") as f:
                f.write(buf.getvalue())

        def read(path):
            with np.load(path) as z:
                per_example: Dict[str, Dict[str, np.ndarray]] = {}
                top: Dict[str, Dict[int, np.ndarray]] = {}
                for name in z.files:
                    if name.startswith("pe__"):
                        _, task, k = name.split("__", 2)
                        per_example.setdefault(task, {})[k] = z[name]
                    elif name.startswith("top__"):
                        _, task, i = name.split("__", 2)
                        top.setdefault(task, {})[int(i)] = z[name]
                return (json.loads(str(z["scores"])), (z["drift"] if "drift" in z.files else None), per_example,
                        {task: tuple(parts[i] for i in sorted(parts)) for task, parts in top.items()})
        return cached_file("heldout-lm", key, ".npz", lambda: self._all(model), write, read)

    def evaluate(self, model) -> Dict[str, object]:
        """Base and finetuned scores, forgetting per task (positive = worse than the base) and their mean."""
        ft, drift, examples, _ = self._all(model, self.base_top_k)
        tasks, units = {}, {"accuracy": [], "perplexity": [], "kl": []}
        for t in self.tasks:
            base, now = self.base_scores[t.name], ft[t.name]
            if t.metric == "perplexity":
                entry = {"base": base, "finetuned": now, "forgetting": now - base, "relative": now / base - 1.0}
            else:
                entry = {"base": base, "finetuned": now, "forgetting": base - now, "relative": base - now}
            tasks[t.name] = {**entry, "metric": t.metric}
            units["perplexity" if t.metric == "perplexity" else "accuracy"].append(entry["relative"])
            if f"{t.name}_kl" in ft:
                kl = ft[f"{t.name}_kl"]
                tasks[f"{t.name}_kl"] = {"base": 0.0, "finetuned": kl, "forgetting": kl, "relative": kl, "metric": "kl",
                                         "top_k": self.cfg.kl_top_k}
                units["kl"].append(kl)
        for name in self.cfg.lm_eval.tasks:
            base, now = self.base_scores[name], ft[name]
            tasks[name] = {"base": base, "finetuned": now, "forgetting": base - now, "relative": base - now,
                           "metric": "accuracy", "chance": self.base_scores[f"{name}.chance"], "harness": "lm-eval",
                           "examples": len(examples[name]["correct"])}
            units["accuracy"].append(base - now)
        by_unit = {u: float(np.mean(v)) for u, v in units.items() if v}
        out: Dict[str, object] = {
            "tasks": tasks, "forgetting_mean": by_unit.get("accuracy"), "forgetting_by_unit": by_unit,
            "sign": "positive = forgetting; accuracy tasks (exact match, lm-eval): base − finetuned accuracy; "
                    "perplexity tasks: finetuned − base perplexity (relative: finetuned / base − 1); KL tasks: "
                    "KL(base ‖ finetuned) in nats per token; forgetting_mean is the mean accuracy drop, "
                    "forgetting_by_unit each unit's mean, never averaged together",
            "probe": {"n_test": self.cfg.n_test, "n_drift": self.cfg.n_drift, "max_length": self.cfg.max_length,
                      "max_new_tokens": self.cfg.max_new_tokens, "kl_top_k": self.cfg.kl_top_k,
                      "lm_eval": {"tasks": list(self.cfg.lm_eval.tasks), "limit": self.cfg.lm_eval.limit,
                                  "num_fewshot": self.cfg.lm_eval.num_fewshot},
                      "features": "mean-pooled last hidden state (CKA)"}}
        if drift is not None and self.base_drift is not None:
            out.update(cka=linear_cka_debiased(self.base_drift, drift), cka_biased=linear_cka(self.base_drift, drift),
                       cka_n=len(drift))
        out["per_example"] = {f"{task}.{side}_{k}": v for side, ex in (("base", self.base_examples), ("finetuned", examples))
                              for task, d in ex.items() for k, v in d.items()}
        return out


def _harness_key(cfg) -> dict:
    """What the base's lm-eval scores depend on: the settings, lm-eval's version, the packaged task files."""
    if not cfg.tasks:
        return {}
    from importlib.metadata import version
    plain = {k: getattr(cfg, k) for k in ("tasks", "include_path", "limit", "num_fewshot", "max_length", "max_words",
                                          "seed")}
    files = {p.name: p.read_text() for p in sorted(harness.PACKAGED.iterdir()) if p.suffix in (".yaml", ".py")}
    return {**{k: list(v) if not isinstance(v, (str, int, type(None))) else v for k, v in plain.items()},
            "version": version("lm_eval"), "files": files}


def _lm_data(cfg) -> List[LMHeldoutTask]:
    """Held-out LM tasks, built once per held-out config and cached (parsing the corpora is slow)."""
    def write(tasks, tmp):
        with open(tmp, "w") as f:
            json.dump([asdict(t) for t in tasks], f)
    key = {**_key(cfg), "code": code_fingerprint("lora_study.corpora", "lora_study.heldout.probe_data", __name__)}
    return cached_file("heldout-lm-data", key, ".json", lambda: load_lm_heldout(cfg), write,
                       lambda path: [LMHeldoutTask(**t) for t in json.loads(path.read_text())])
