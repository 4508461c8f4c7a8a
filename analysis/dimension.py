"""Intrinsic dimension from a sweep over d (Li et al. 2018; Aghajanyan et al. 2020): the thresholds, on one
curve of a metric m against the subspace dimension d. Pure maths on numbers; ``measures.intrinsic_dim`` applies
it to a study.

A subspace run trains θ = θ0 + P θ_d (DID) or θ_i = θ0_i + λ_ℓ (P θ_{d−m})_i (SAID, the m per-layer scales
spent from the same budget) with d trainable numbers; the classification head is trained directly and
counted apart. Two thresholds on a metric m (test accuracy by default):

    d90:       the smallest d with m(d) ≥ 0.9 · m_full                      (Li et al.; Aghajanyan et al.)
    d90-gain:  the smallest d with m(d) ≥ m_base + 0.9 · (m_full − m_base)   (90 % of full FT's gain over
               the frozen base with a trained head)

On a two-class task 0.9 · m_full can lie below the frozen base (chance is 0.5), so d90 alone can be
trivially small; d90-gain asks for the finetuning gain itself.

The reported d90 is a value on the measured grid (``grid_crossing``): the smallest tested d that reaches the
target, with the bracket — the largest tested d below it, which does not. A curve that reaches the target, dips
below it and crosses again has its d90 at the first d that reached it. Between the bracketing d_a < d_b of the
first crossing (m_a < t ≤ m_b), an interpolated estimate on log d (``crossing``) may be shown beside it, labelled:

    log d* = log d_a + (t − m_a) / (m_b − m_a) · (log d_b − log d_a).

Both are None if no tested d reaches t; the smallest tested d if it already does (nothing is extrapolated).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np

FRACTION = 0.9
# d90 published by Aghajanyan et al. 2020, Table 1 (secondary: quoted from summaries of the paper, not reproduced here).
PUBLISHED_D90: Dict[str, Dict[str, int]] = {
    "BERT-base": {"MRPC SAID": 1608, "QQP SAID": 8030, "MRPC DID": 1861, "QQP DID": 9295},
    "RoBERTa-base": {"MRPC SAID": 896, "QQP SAID": 896, "MRPC DID": 1000, "QQP DID": 1389},
    "RoBERTa-large": {"MRPC SAID": 207, "QQP SAID": 774, "MRPC DID": 322, "QQP DID": 774},
}


def crossing(ds: Sequence[float], metrics: Sequence[float], threshold: float) -> Optional[float]:
    """The smallest d at which the curve (ds, metrics) first reaches ``threshold``, interpolated on log d."""
    ds, metrics = _curve(ds, metrics, positive=True)
    if not len(ds) or math.isnan(threshold):
        return None
    if metrics[0] >= threshold:
        return float(ds[0])
    for i in range(1, len(ds)):
        if metrics[i] >= threshold:
            lo, hi = math.log(ds[i - 1]), math.log(ds[i])
            frac = (threshold - metrics[i - 1]) / (metrics[i] - metrics[i - 1])
            return float(math.exp(lo + frac * (hi - lo)))
    return None


def grid_crossing(ds: Sequence[float], metrics: Sequence[float], threshold: float) -> Optional[tuple]:
    """(the smallest tested d whose metric reaches ``threshold``, the largest tested d below it or None when it is
    the smallest tested d), or None if no tested d reaches it. NaN metrics are skipped."""
    ds, metrics = _curve(ds, metrics)
    if not len(ds) or math.isnan(threshold):
        return None
    hits = np.nonzero(metrics >= threshold)[0]
    if not len(hits):
        return None
    i = int(hits[0])
    return float(ds[i]), (float(ds[i - 1]) if i > 0 else None)


def d90(ds: Sequence[float], metrics: Sequence[float], target: float, fraction: float = FRACTION) -> Optional[float]:
    """The smallest d whose metric reaches ``fraction`` × ``target`` (full FT's metric), interpolated on log d."""
    return crossing(ds, metrics, fraction * target)


def d90_gain(ds: Sequence[float], metrics: Sequence[float], target: float, base: float,
             fraction: float = FRACTION) -> Optional[float]:
    """The smallest d whose metric reaches base + ``fraction`` × (target − base): 90 % of full FT's gain."""
    return crossing(ds, metrics, base + fraction * (target - base))


def published_range() -> tuple:
    """(smallest, largest) d90 in ``PUBLISHED_D90``."""
    values = [v for m in PUBLISHED_D90.values() for v in m.values()]
    return min(values), max(values)


def _curve(ds, metrics, positive: bool = False):
    """(ds, metrics) as float arrays sorted by d, NaN metrics dropped; one sentence for a mismatch, a repeated d or
    (``positive``) a d that cannot sit on a log axis."""
    ds, metrics = np.asarray(ds, dtype=float), np.asarray(metrics, dtype=float)
    if ds.shape != metrics.shape or ds.ndim != 1:
        raise ValueError(f"ds and metrics must be two 1-D sequences of one length, got {ds.shape} and {metrics.shape}.")
    keep = ~np.isnan(metrics)
    ds, metrics = ds[keep], metrics[keep]
    if positive and (ds <= 0).any():
        raise ValueError(f"every d must be positive (they are placed on a log axis), got {ds.tolist()}.")
    if len(np.unique(ds)) != len(ds):
        raise ValueError(f"ds={ds.tolist()} repeats a dimension; average the seeds first or pass one curve per seed.")
    order = np.argsort(ds)
    return ds[order], metrics[order]
