"""Held-out evaluation: what a finetune costs the base model on tasks it was not finetuned on (Biderman et al.
2024's forgetting). Each task family has its scorer, prepared on the base model before training (base scores
and features are cached) and called on the finetuned model after it:

- classification: linear probes on frozen encoder features, and CKA drift (``lora_study.heldout.probes``);
- causal_lm: cross-entropy and KL to the base on held-out text, exact match on held-out instruction tasks
  (``lora_study.heldout.lm_scores``), and lm-evaluation-harness tasks (``lora_study.heldout.harness``).

Positive forgetting always means worse than the base. A new task family registers its scorer with
``register_scorer``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from ..schema import NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, RULE, Choice, ConfigError, Each, Free, opt
from .lm_scores import LM_BUILTIN, LMScorer
from .probe_data import BUILTIN
from .probes import ProbeScorer

_SCORERS: Dict[str, Callable] = {"classification": ProbeScorer, "causal_lm": LMScorer}


def register_scorer(family: str, scorer: Callable) -> None:
    """``scorer(cfg, model, tokenizer, model_key, device, precision, batch_size)`` -> an object whose
    ``evaluate(model)`` returns {tasks: {name: {base, finetuned, forgetting}}, forgetting_mean, ...}."""
    _SCORERS[family] = scorer


@dataclass
class LMEvalConfig:
    """lm-evaluation-harness tasks scored on the base and on every finetuned causal LM (``heldout.lm_eval.*``)."""
    tasks: List[str] = opt(rule=Free(), factory=list)  # [arc_easy, hellaswag, ...] or the packaged *_mc tasks
    include_path: List[str] = opt(rule=Free(), factory=list)  # folders of task YAMLs of your own
    limit: Optional[int] = opt(None, POSITIVE_INT)  # documents per task (lm-eval's first; None: all)
    num_fewshot: int = opt(0, NON_NEGATIVE_INT)
    max_length: Optional[int] = opt(None, POSITIVE_INT)  # lm-eval's context length (None: the model's)
    max_words: Optional[int] = opt(60, POSITIVE_INT)  # packaged tasks: each text's first words
    seed: int = opt(0, NON_NEGATIVE_INT)  # packaged tasks' draw, few-shot examples


@dataclass
class HeldoutConfig:
    enabled: bool = opt(True, Free())
    tasks: List[str] = opt(rule=Each(Choice(BUILTIN)),
                           factory=lambda: ["bbc_topic", "subjectivity", "political_party"])
    extra: List[Any] = opt(rule=Free(), factory=list)  # user tasks: task config dicts (source=files|hf) with a name
    drift: bool = opt(True, Free())  # linear CKA on held-out unlabelled text (Lee corpus, Wikipedia)
    n_train: int = opt(100, POSITIVE_INT)  # probe examples per task
    n_test: int = opt(100, POSITIVE_INT)
    n_drift: int = opt(100, POSITIVE_INT)
    max_length: int = opt(64, POSITIVE_INT)
    C: float = opt(1.0, POSITIVE)  # inverse L2 strength of the logistic-regression probe
    seed: int = opt(0, NON_NEGATIVE_INT)  # fixed: the probe split never depends on the run's seed
    every: int = opt(0, NON_NEGATIVE_INT)  # also probe every N training steps (0: only at the end)
    # causal LMs: perplexity on held-out text, exact match on held-out instruction tasks
    lm_tasks: List[str] = opt(rule=Each(Choice(LM_BUILTIN)),
                              factory=lambda: ["lee_wiki", "bbc_tech_politics", "subjectivity"])
    max_new_tokens: int = opt(4, POSITIVE_INT)
    kl_top_k: int = opt(128, NON_NEGATIVE_INT)  # KL(base ‖ finetuned) on the text tasks over the base's top k (0: off)
    lm_eval: LMEvalConfig = field(default_factory=LMEvalConfig, metadata={RULE: Free()})


def make_scorer(cfg: HeldoutConfig, family: str, model, tokenizer, model_key: str, device, precision: str = "fp32",
                batch_size: int = 64):
    """The family's held-out scorer prepared on the base ``model``; None when held-out evaluation is off."""
    if cfg is None or not cfg.enabled:
        return None
    if family not in _SCORERS:
        raise ConfigError(f"task.family={family} has no held-out evaluation; set heldout=none.")
    return _SCORERS[family](cfg, model, tokenizer, model_key, device, precision, batch_size)
