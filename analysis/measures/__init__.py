"""The measures, one module per claim of the low-rank hypothesis, in report order.

Each is a ``Measure`` (``measures.base``) giving its tables, figures and report sections; ``lora-study-analyze``
and ``lora-study-report`` iterate ``MEASURES`` and know nothing else about them. A new measure is one module
here and one line in the list:

    from lora_study.analysis.measures import Context
    ctx = Context(load_study("results/studies/rank_sweep"))
    ctx.table("spectra")            # computed on first request, with whatever it depends on
"""
from __future__ import annotations

from typing import List

from .amplification import Amplification
from .base import Context, Measure, Section
from .choose_rank import ChooseRank
from .design import Design
from .forgetting import Forgetting
from .intrinsic_dim import IntrinsicDim
from .intruders import Intruders
from .learning_rate import LearningRates
from .reach import Reach
from .regret import Regret
from .similarity import Similarity
from .spectra import Spectra
from .tradeoff import MergeLatency, Tradeoff
from .training_length import TrainingLength
from .truncation import Truncation
from .verdicts import Verdicts

MEASURES: List[Measure] = [
    Verdicts(),  # every claim: measured value, interval, published value, verdict
    Tradeoff(),  # the measured cost and quality tables, the memory formulas
    MergeLatency(),  # zero added latency after merging
    ChooseRank(),  # what each rank gets against what it costs, on one parameter axis
    Reach(),  # does a rank-r method reach full finetuning, and from which rank (paired tests, equivalence)
    Regret(),  # LoRA Without Regret: where LoRA goes, capacity, batch size, each against full FT in its setting
    Design(),  # what the design can resolve: variance parts, power, the seeds × examples a margin needs
    LearningRates(),  # the learning-rate search behind the comparison, when the study has one
    Truncation(),  # does full FT's ΔW survive truncation to rank k, in three scopes
    Spectra(),  # is ΔW low-rank: energy, effective rank, update size
    Similarity(),  # do two ranks share directions (φ); full FT's energy in each run's subspace
    Intruders(),  # intruder dimensions
    Amplification(),  # does ΔW amplify directions W barely uses
    Forgetting(),  # forgetting on held-out tasks; learning vs forgetting
    TrainingLength(),  # learning vs forgetting over training checkpoints
    IntrinsicDim(),  # d90 of subspace training
]


def get(name: str) -> Measure:
    """The measure called ``name`` in ``MEASURES``."""
    for m in MEASURES:
        if m.name == name:
            return m
    raise KeyError(f"no measure {name!r}; the measures are {', '.join(m.name for m in MEASURES)}.")


__all__ = ["MEASURES", "Context", "Measure", "Section", "get"]
