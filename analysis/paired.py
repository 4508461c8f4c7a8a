"""Per-example scores of a study's runs, aligned for paired comparisons (``analysis.stats``).

Every run saves its per-example outputs (``predictions.safetensors``: test correctness and losses, held-out probe
correctness, the same for its truncated and intruder-scaled variants). Two groups of runs — e.g. LoRA at rank 8
and full finetuning — are compared on the seeds both have: a (seeds × examples) array each, row s the runs of
seed s, every row over the same examples in the same order. The difference of their means is then tested with
the hierarchical bootstrap (seeds, then examples) or, with one seed and 0/1 scores, McNemar's exact test.

The equivalence margin is the study's ``study.margin`` (default one accuracy point).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from lora_study.artifacts import ArtifactError

from . import stats
from .loader import Run, Study

DEFAULT_MARGIN = 0.01  # one accuracy point
N_BOOT = 2000


def margin(study: Study) -> float:
    """The study's equivalence margin (``study.margin``), one accuracy point unless it says otherwise."""
    m = (study.index.get("study") or {}).get("margin")
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


def compare(a: Dict[int, np.ndarray], b: Dict[int, np.ndarray], m: float, relative: bool = False,
            seed: int = 0) -> Optional[dict]:
    """``stats.compare`` of mean(a) − mean(b) on their common seeds (None without one), with each side's mean,
    its interval and the seeds used."""
    seeds, arrays = aligned(a, b)
    if not seeds:
        return None
    x, y = arrays
    r = stats.compare(x, y, m, n_boot=N_BOOT, seed=seed, relative=relative)
    r.update(seeds=seeds, mean_a=float(x.mean()), mean_b=float(y.mean()),
             ci_a=stats.mean_interval(x, N_BOOT, seed), ci_b=stats.mean_interval(y, N_BOOT, seed))
    return r


def ratio_interval(num_a: Dict[int, np.ndarray], num_b: Dict[int, np.ndarray], den_a: Dict[int, np.ndarray],
                   den_b: Dict[int, np.ndarray], seed: int = 0) -> Optional[tuple]:
    """(point, 95 % interval) of (mean(num_a) − mean(num_b)) / (mean(den_a) − mean(den_b)) on the common seeds,
    every mean resampled together (e.g. the share of full finetuning's gain over the base that a method keeps:
    (method − base) / (full − base)); None without a common seed."""
    seeds, arrays = aligned(num_a, num_b, den_a, den_b)
    if not seeds:
        return None
    den = arrays[2].mean() - arrays[3].mean()
    if den == 0:  # no gain to keep a share of
        return None
    reps = stats.replicate_means(dict(zip("abcd", arrays)), N_BOOT, seed)
    point = (arrays[0].mean() - arrays[1].mean()) / den
    with np.errstate(divide="ignore", invalid="ignore"):
        samples = (reps["a"] - reps["b"]) / (reps["c"] - reps["d"])
    return float(point), stats.interval(samples)


def fmt_interval(ci: Optional[Sequence[float]], digits: int = 3, signed: bool = True) -> str:
    """'[+0.012, +0.034]' (or '—' without one)."""
    if ci is None:
        return "—"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"[{f.format(ci[0])}, {f.format(ci[1])}]"
