"""Task families: what a run learns and how it is scored. A family loads a task's fixed splits, encodes them
into batches, names the head the model needs, and evaluates a model on a split; every other part of a run
(methods, the training loop, ΔW, held-out evaluation, latency) is shared.

- ``classification`` (``lora_study.tasks.classification``): labelled text, a classification head on the
  model, accuracy.
- ``causal_lm`` (``lora_study.tasks.causal_lm``): prompt → completion pairs in the model's chat template, the
  loss on completion tokens only, exact match of greedy answers or perplexity.

A new family is a subclass of ``TaskFamily`` registered with ``register``; ``task.family`` selects it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional

import torch

from .. import corpora
from ..schema import NON_NEGATIVE_INT, POSITIVE_INT, Choice, ConfigError, Free, opt

_FAMILIES: Dict[str, "TaskFamily"] = {}


def register(family: "TaskFamily") -> "TaskFamily":
    _FAMILIES[family.name] = family
    return family


def get(name: str) -> "TaskFamily":
    if name not in _FAMILIES:
        raise ConfigError(f"task.family={name!r} is not valid; choose one of {', '.join(_FAMILIES)}.")
    return _FAMILIES[name]


def names() -> List[str]:
    return list(_FAMILIES)


def all_sources() -> List[str]:
    return list(dict.fromkeys(s for f in _FAMILIES.values() for s in f.sources))


@dataclass
class TaskConfig:
    family: str = opt("classification", Choice(names))
    source: str = opt("rotten_tomatoes", Choice(all_sources))  # each family says which sources it reads
    name: Optional[str] = opt(None, Free())  # hub dataset name (source=hf)
    subset: Optional[str] = opt(None, Free())  # hub dataset config, e.g. "sst2"
    text_column: str = opt("text", Free())
    text_pair_column: Optional[str] = opt(None, Free())
    label_column: str = opt("label", Free())
    train_split: str = opt("train", Free())
    validation_split: Optional[str] = opt("validation", Free())
    test_split: Optional[str] = opt("test", Free())
    train_file: Optional[str] = opt(None, Free())  # source=files: CSV or JSONL
    validation_file: Optional[str] = opt(None, Free())
    test_file: Optional[str] = opt(None, Free())
    split_seed: int = opt(0, NON_NEGATIVE_INT)  # fixed: the split never depends on the run's seed
    n_validation: int = opt(500, POSITIVE_INT)
    n_test: int = opt(1000, POSITIVE_INT)
    n_reserve: int = opt(1000, NON_NEGATIVE_INT)  # rotten_tomatoes: reviews kept out of training for held-out probes
    max_eval_examples: Optional[int] = opt(None, POSITIVE_INT)
    # causal_lm: prompt -> completion pairs, loss on the completion tokens only
    metric: str = opt("auto", Choice(("auto", "exact_match", "perplexity")))  # auto: the source's usual metric
    prompt_column: str = opt("prompt", Free())
    completion_column: str = opt("completion", Free())
    max_new_tokens: int = opt(4, POSITIVE_INT)  # greedy tokens generated for exact match
    chunk_words: int = opt(48, POSITIVE_INT)  # bbc_business: words per text chunk


@dataclass
class TaskData:
    """A task's fixed splits. ``metric`` is the test metric (accuracy, exact_match or perplexity);
    ``num_labels`` is None for families without a classification head."""
    name: str
    train: Any
    validation: Any
    test: Any
    metric: str
    num_labels: Optional[int] = None
    label_names: List[str] = field(default_factory=list)
    reserve: Any = None


class TaskFamily:
    """One kind of task. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    sources: ClassVar[Dict[str, Callable]]  # task.source -> loader(cfg) -> TaskData
    auto_class: ClassVar[str]  # the transformers Auto class that gives the model its head

    def validate(self, cfg: TaskConfig) -> None:
        """Checks of ``cfg`` that relate fields (the per-field rules are the schema's)."""
        if cfg.source not in self.sources:
            owners = [f.name for f in _FAMILIES.values() if cfg.source in f.sources]
            raise ConfigError(f"task.source={cfg.source} is not a {self.name} task (it is one of "
                              f"{', '.join(owners)}); set task.family={owners[0]} or choose a source among "
                              f"{', '.join(self.sources)}.")
        needed, sentence = corpora.USER_SOURCE_NEEDS.get(cfg.source, (None, None))
        if needed and not getattr(cfg, needed):
            raise ConfigError(sentence)

    def check_model(self, model_name: str, config) -> None:
        """Refuse a model this family cannot train (from its transformers config, before loading weights)."""

    def load(self, cfg: TaskConfig) -> TaskData:
        return self.sources[cfg.source](cfg)

    def model_kwargs(self, task: TaskData) -> Dict[str, Any]:
        """Keyword arguments for ``auto_class.from_pretrained`` (e.g. the number of labels)."""
        return {}

    def prepare_model(self, model: torch.nn.Module) -> None:
        """Adjust a freshly loaded model for training on this family (e.g. no KV cache)."""

    def head_modules(self, model: torch.nn.Module) -> List[str]:
        """Top-level modules of the task head, trained directly in every method."""
        return []

    def encode(self, split, tokenizer, max_length: int):
        """The split tokenised: an object with ``__len__``, ``train_batches``, ``eval_batches``, ``fixed_width``."""
        raise NotImplementedError

    def evaluator(self, task: TaskData, cfg: TaskConfig) -> Callable[..., Dict[str, Any]]:
        """``evaluate(model, data, batch_size, device, precision)`` -> metrics: ``accuracy`` (None where the
        task has none), ``loss``, and ``perplexity`` for language modelling."""
        raise NotImplementedError


def shuffled_batches(data, batch_size: int, seed: int) -> Iterator[Dict[str, torch.Tensor]]:
    """Endless shuffled batches of ``data`` (anything with ``len`` and ``batch(indices)``); a new permutation
    per epoch from a generator seeded by ``seed``, so every method sees the same batches in the same order."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(data), generator=gen).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield data.batch(order[start:start + batch_size])


from . import classification, causal_lm  # noqa: E402,F401,I001 - the built-in families register, in this order
