"""Causal language modelling: prompt → completion pairs with fixed splits, the loss on completion tokens only
(``lora_study.tasks.lm_encoding``), scored by exact match of greedy answers or by perplexity
(``lora_study.tasks.decoding``).

- ``rotten_tomatoes`` (task=lm_review_label): the default task's reviews and split, as an instruction — the
  user asks "fresh or rotten?", the completion is the one word. Metric: exact match of the greedy answer.
- ``bbc_business`` (task=lm_bbc_business): domain adaptation on BBC business news, the articles cut into
  chunks of ``task.chunk_words`` words, each the assistant's reply to "write the next part of the story titled
  …". Articles are assigned whole to one split. Metric: perplexity on the test chunks.
- ``files`` / ``hf``: any JSONL/CSV file or hub dataset with ``task.prompt_column`` and ``task.completion_column``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from .. import corpora
from ..models import is_causal_lm
from ..schema import ConfigError
from . import TaskConfig, TaskData, TaskFamily, register
from .decoding import evaluate_lm
from .lm_encoding import LMEncoded, LMSplit

REVIEW_PROMPT = "Is this movie review fresh or rotten? Answer with one word.\n\nReview: {text}"
BBC_PROMPT = 'Write the next part of a BBC business news story titled "{title}".'
EXACT_MATCH, PERPLEXITY = "exact_match", "perplexity"


def review_label(cfg: TaskConfig) -> Dict[str, LMSplit]:
    parts = corpora.review_splits(cfg.n_test, cfg.n_validation, cfg.n_reserve, cfg.split_seed)
    return {r: LMSplit([REVIEW_PROMPT.format(text=t) for t in parts[r].text.astype(str)],
                       [corpora.REVIEW_LABELS[int(y)] for y in parts[r].label])
            for r in ("train", "validation", "test")}


def chunk_words(text: str, words: int) -> List[str]:
    toks = text.split()
    return [" ".join(toks[s:s + words]) for s in range(0, len(toks), words) if len(toks[s:s + words]) >= words // 2]


def bbc_business(cfg: TaskConfig) -> Dict[str, LMSplit]:
    """Chunks of business articles; articles in a seeded order fill test, then validation, then train."""
    articles = corpora.bbc_articles("business")
    order = np.random.default_rng(cfg.split_seed).permutation(len(articles))
    parts = {"test": ([], []), "validation": ([], []), "train": ([], [])}
    want = {"test": cfg.n_test, "validation": cfg.n_validation}
    role = "test"
    for i in order:
        while role != "train" and len(parts[role][0]) >= want[role]:
            role = "validation" if role == "test" else "train"
        title, body = articles[i]
        for c in chunk_words(body, cfg.chunk_words):
            parts[role][0].append(BBC_PROMPT.format(title=title))
            parts[role][1].append(c)
    return {r: LMSplit(p[: want.get(r, len(p))], c[: want.get(r, len(c))]) for r, (p, c) in parts.items()}


def _columns(frames: dict, cfg: TaskConfig) -> dict:
    out = {}
    for role, df in frames.items():
        for col in (cfg.prompt_column, cfg.completion_column):
            if col not in df.columns:
                raise ConfigError(f"the {role} split has no column {col!r}; its columns are "
                                  f"{', '.join(map(str, df.columns))} (set task.prompt_column / task.completion_column).")
        df = df.dropna(subset=[cfg.prompt_column, cfg.completion_column])
        out[role] = LMSplit(df[cfg.prompt_column].astype(str).tolist(), df[cfg.completion_column].astype(str).tolist())
    return out


def _carve(split: LMSplit, n: int, seed: int) -> tuple:
    if n >= len(split):
        raise ConfigError(f"the task has {len(split)} training examples, too few to carve {n} for evaluation; "
                          "give task.validation_file / task.test_file or lower task.n_validation / task.n_test.")
    idx = np.random.default_rng(seed).permutation(len(split))
    take = lambda ii: LMSplit([split.prompts[i] for i in ii], [split.completions[i] for i in ii])  # noqa: E731
    return take(sorted(idx[n:])), take(sorted(idx[:n]))


def prompt_completion(cfg: TaskConfig) -> Dict[str, LMSplit]:
    splits = _columns(corpora.user_frames(cfg), cfg)
    if "test" not in splits:
        splits["train"], splits["test"] = _carve(splits["train"], cfg.n_test, cfg.split_seed)
    if "validation" not in splits:
        splits["train"], splits["validation"] = _carve(splits["train"], cfg.n_validation, cfg.split_seed)
    return splits


# source -> (splits, task name or None for the user's, the metric of task.metric=auto)
SOURCES = {"rotten_tomatoes": (review_label, "lm_review_label", EXACT_MATCH),
           "bbc_business": (bbc_business, "lm_bbc_business", PERPLEXITY),
           "files": (prompt_completion, None, EXACT_MATCH),
           "hf": (prompt_completion, None, EXACT_MATCH)}


def load_lm_task(cfg: TaskConfig) -> TaskData:
    make, name, auto_metric = SOURCES[cfg.source]
    splits = make(cfg)
    for role in ("train", "validation", "test"):
        if len(splits[role]) == 0:
            raise ConfigError(f"the task's {role} split is empty; check the task's files, split names or sizes.")
    if cfg.max_eval_examples:
        splits["validation"] = splits["validation"].head(cfg.max_eval_examples)
        splits["test"] = splits["test"].head(cfg.max_eval_examples)
    name = name or cfg.name or (Path(cfg.train_file).stem if cfg.train_file else "lm_task")
    metric = auto_metric if cfg.metric == "auto" else cfg.metric
    return TaskData(name=name, metric=metric, **{r: splits[r] for r in ("train", "validation", "test")})


class CausalLMFamily(TaskFamily):
    name = "causal_lm"
    sources = {s: load_lm_task for s in SOURCES}
    auto_class = "AutoModelForCausalLM"

    def check_model(self, model_name: str, config) -> None:
        if not is_causal_lm(config):
            raise ConfigError(f"task.family=causal_lm needs a causal LM but model {model_name} is an encoder; use e.g. "
                              "model=smollm2_135m.")

    def prepare_model(self, model: torch.nn.Module) -> None:
        model.config.use_cache = False  # training needs no cache; generation asks for one explicitly

    def encode(self, split: LMSplit, tokenizer, max_length: int) -> LMEncoded:
        return LMEncoded(split, tokenizer, max_length)

    def evaluator(self, task: TaskData, cfg: TaskConfig):
        answers = task.metric == EXACT_MATCH

        def evaluate(model, data, batch_size, device, precision, per_example=False):
            return evaluate_lm(model, data, batch_size, device, precision, answers, cfg.max_new_tokens, per_example)
        return evaluate


register(CausalLMFamily())
