"""Per-example scores of a study's runs, aligned for paired comparisons (``analysis.crossed``).

Every run saves its per-example outputs (``predictions.safetensors``: test correctness and losses, held-out probe
correctness, the same for its truncated and intruder-scaled variants). Two groups of runs — e.g. LoRA at rank 8
and full finetuning — are compared on the seeds both have: a (seeds × examples) array each, row s the runs of
seed s, every row over the same examples in the same order. The difference of their means is tested through the
crossed random-effects model of seeds and examples (``analysis.crossed``: Banerjee's interval, the seeds' part of the
variance on S − 1 degrees of freedom and the examples' on N − 1, which covers at its level whether the seeds or the
examples dominate, in the tails too), so no verdict depends on a bootstrap's seed.

The equivalence margins are the study's (``study.margin`` for accuracy-type scores, ``study.margin_perplexity``
for perplexity, ``study.margin_kl`` for KL to the base), recorded in study.json; one accuracy point each by default.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from lora_study.artifacts import ArtifactError

from . import crossed
from .loader import Run, Study

DEFAULT_MARGIN = 0.01  # one accuracy point
N_BOOT = 2000  # bootstrap replicates, for the statistics without a closed form (a ratio's percentile interval)


def margin(study: Study, unit: str = "accuracy") -> float:
    """The study's equivalence margin for ``unit``: accuracy-type scores (``study.margin``), perplexity as a relative
    change (``study.margin_perplexity``), KL in nats per token (``study.margin_kl``); one point unless it says
    otherwise."""
    key = {"accuracy": "margin", "perplexity": "margin_perplexity", "kl": "margin_kl"}[unit]
    m = (study.index.get("study") or {}).get(key)
    return float(m) if m else DEFAULT_MARGIN


def per_seed(runs: Iterable[Run], key: str) -> Dict[int, np.ndarray]:
    """{seed: the runs' per-example ``key`` as float64}; runs without it (an older run) are left out."""
    out = {}
    for r in runs:
        try:
            p = r.predictions()
        except ArtifactError:
            continue
        if key in p:
            out[r.seed] = np.asarray(p[key], dtype=np.float64)
    return out


def aligned(*groups: Dict[int, np.ndarray]) -> Tuple[List[int], List[np.ndarray]]:
    """The seeds every group has and, per group, its (seeds × examples) array over them; empty when none."""
    seeds = sorted(set.intersection(*(set(g) for g in groups))) if groups else []
    if not seeds:
        return [], []
    arrays = [np.stack([g[s] for s in seeds]) for g in groups]
    if len({a.shape for a in arrays}) > 1:
        raise ArtifactError(f"per-example outputs of different lengths ({[a.shape for a in arrays]}) cannot be paired.")
    return seeds, arrays


def compare(a: Dict[int, np.ndarray], b: Dict[int, np.ndarray], m: float, alpha: float = 0.05) -> Optional[dict]:
    """``crossed.compare`` of mean(a) − mean(b) on their common seeds (None without one), with each side's mean and
    its interval, the seeds used, and the variance components flattened (``var_seed``, ``var_example``,
    ``var_residual``, ``se``, ``df``, ``seed_share``) for the design table."""
    seeds, arrays = aligned(a, b)
    if not seeds:
        return None
    x, y = arrays
    r = crossed.compare(x, y, m, alpha)
    c = r["components"]
    r.update(seeds=seeds, alpha=alpha, mean_a=float(x.mean()), mean_b=float(y.mean()), ci_a=mean_interval(x),
             ci_b=mean_interval(y), var_seed=c["var_seed"], var_example=c["var_example"],
             var_residual=c["var_residual"], seed_share=crossed.Components(**c).share_of_seeds(),
             p_difference_method=r["method"])
    return r


def mean_interval(x: np.ndarray, level: float = 0.95) -> tuple:
    """The interval of one group's mean score over its (seeds × examples) array (``crossed.components``); one
    column is a t interval over the rows; (nan, nan) for a single value."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    if x.shape[1] < 2:
        x = x.T
    if x.shape[1] < 2:
        return float("nan"), float("nan")
    return crossed.components(x).interval(level)


def ratio_interval(num_a: Dict[int, np.ndarray], num_b: Dict[int, np.ndarray], den_a: Dict[int, np.ndarray],
                   den_b: Dict[int, np.ndarray], level: float = 0.95) -> Optional[tuple]:
    """(point, interval) of g = (mean(num_a) − mean(num_b)) / (mean(den_a) − mean(den_b)) on the common seeds (e.g.
    the share of full finetuning's gain over the base that a method keeps: (method − base) / (full − base)), by
    the delta method through the crossed model: z = (num_a − num_b) − g (den_a − den_b) per seed and example has
    mean 0 at the true g, so Var(g) ≈ Var(mean z) / (mean(den_a − den_b))². None without a common seed or a gain."""
    seeds, arrays = aligned(num_a, num_b, den_a, den_b)
    if not seeds:
        return None
    num, den = arrays[0] - arrays[1], arrays[2] - arrays[3]
    if den.mean() == 0:  # no gain to keep a share of
        return None
    g = float(num.mean() / den.mean())
    c = crossed.components(num - g * den)
    h = crossed.t_quantile((1 + level) / 2, c.df) * c.se / abs(float(den.mean()))
    return g, (g - h, g + h)


def fmt_interval(ci: Optional[Sequence[float]], digits: int = 3, signed: bool = True) -> str:
    """'[+0.012, +0.034]' (or '—' without one)."""
    if ci is None:
        return "—"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"[{f.format(ci[0])}, {f.format(ci[1])}]"
