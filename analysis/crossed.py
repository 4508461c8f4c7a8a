"""Inference for scores of a (seeds × examples) design: every training seed scored on the same test examples.

The score (or the paired difference of two methods' scores) of seed s on example e is modelled with crossed random
effects, since both the seeds and the test examples are samples of what a result should generalise over:

    d[s, e] = mu + u_s + v_e + w_se,   u_s ~ (0, var_seed), v_e ~ (0, var_example), w_se ~ (0, var_residual)

so the mean over S seeds and N examples has

    Var(mean) = var_seed / S + var_example / N + var_residual / (S N).

The components come from the two-way ANOVA without replication (expected mean squares
E[MS_seed] = var_res + N var_seed, E[MS_example] = var_res + S var_example, E[MS_res] = var_res), each clipped at 0:

    V = (MS_seed + max(MS_example - MS_res, 0)) / (S N)

(MS_seed / (S N) is unbiased for var_seed / S + var_residual / (S N) and is not clipped: clipping it when the seeds
happen to agree would trade the seeds' S - 1 degrees of freedom for the examples' and under-cover)

with Satterthwaite's degrees of freedom df = (sum c_i MS_i)^2 / sum (c_i MS_i)^2 / df_i over the mean squares that
enter V (df_seed = S - 1, df_example = N - 1, df_res = (S - 1)(N - 1)), reported beside se.

Intervals are Banerjee's (1961): V is the seeds' part A = MS_seed / (S N), on S - 1 degrees of freedom, plus the
examples' part B = max(MS_example - MS_res, 0) / (S N), on N - 1, and the interval at level 1 - a is

    mean ± sqrt(t_{1-a/2, S-1}^2 A + t_{1-a/2, N-1}^2 B),

which covers at least 1 - a whatever the ratio of the parts: three seeds with a dominant seed part give t_{2} (4.30 at
95 %, not 1.96), dominant examples give about z. A single t on Satterthwaite's df is nearly right at 95 % but not in
the tails that equivalence tests and several-ranks claims read: in simulated studies at this suite's designs (three
seeds, 6,000 examples, the seeds carrying 50-80 % of the variance) TOST at 5 % / 4 declared a difference on the
margin equivalent 1.4-2.8 % of the time for a nominal 1.25 %, and at 5 % up to 6.6 %; Banerjee's interval keeps both
at or under their level, at the price of an interval up to 1.7 times as wide in the tails (``tests/test_crossed.py``;
``benchmarks/several_ranks.py``). A percentile bootstrap over three seeds has only 27 distinct seed resamples and
under-covers when the seeds dominate; counting every seed's example noise as independent over-covers when they do
not. With one seed V is the examples' variance / N (df = N - 1),
which leaves the training noise out: a verdict then needs more seeds (``MIN_SEEDS``).

Tests (alpha = 0.05 unless given):

    difference       two-sided t test of mu = 0: "different" when the (1 - alpha) interval excludes 0
    equivalence      TOST against +-m: "equivalent" when the (1 - 2 alpha) interval lies inside (-m, +m)
    power            at a true difference of 0, P(|mean| + h < m) averaged over the seeds' chi-square in h, the
                     interval's one-sided half-width (``power_at``); with a fixed h it is m >= h + z_{(1+P)/2} SE,
                     and with examples dominating about 2.93 SE (the anchor's (1.645 + 1.28) SE)
    fixed sequence   several ranks, one claim ("the smallest rank equivalent to the reference"): test from the
                     largest rank down, each at alpha, and stop at the first that is not equivalent; the ranks shown
                     equivalent are those before the stop, so the family-wise error of the claim stays at alpha and
                     the answer is monotone (no rank is called equivalent above one that is not)
    Holm             the same claim without presuming that a larger rank is closer to the reference: each rank's
                     TOST p, sorted p_(1) <= ... <= p_(k), is equivalent while p_(i) <= alpha / (k - i + 1) (Holm
                     1979), so the family-wise error of "these ranks are equivalent" stays at alpha whatever the
                     ranks' order; the answer is the smallest rank shown equivalent, beside any rank shown to differ
    alpha spending   looks k = 1..K at information t_k = seeds_k / max_seeds (Lan & DeMets 1983, Pocock type):
                     alpha(t) = alpha ln(1 + (e - 1) t); look k tests at its increment alpha(t_k) - alpha(t_{k-1}),
                     which by the union bound keeps each error (a false "equivalent", a false "different") across
                     all looks <= alpha, whatever the looks' correlation
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import List, Mapping, Optional, Sequence

import numpy as np
from scipy import optimize, special
from scipy import stats as sps

EQUIVALENT, DIFFERENT, UNRESOLVED = "equivalent within the margin", "different", "unresolved"
MIN_SEEDS = 3


@dataclass(frozen=True)
class Components:
    """Variance components of a (seeds × examples) array and what they give its mean."""
    mean: float
    var_seed: float
    var_example: float
    var_residual: float
    seeds: int
    examples: int
    se: float  # standard error of the mean
    df: float  # Satterthwaite's degrees of freedom (of se as a whole; the interval uses each part's own)
    part_seed: float = math.nan  # MS_seed / (S N): the seeds' part of se², on S - 1 degrees of freedom
    part_example: float = math.nan  # max(MS_example - MS_res, 0) / (S N): the examples' part, on N - 1

    def half_width(self, q: float) -> float:
        """The half-width of the two-sided interval at level 2 q - 1 (q > 1/2): with two or more seeds Banerjee's
        sqrt(t_{q,S-1}^2 part_seed + t_{q,N-1}^2 part_example), each part on its own degrees of freedom, which covers
        at least its level whatever the ratio of the parts (Satterthwaite's single t on an estimated df does not in
        the tails: see the module docstring); with one seed t_{q,N-1} se."""
        if self.seeds > 1 and math.isfinite(self.part_seed) and math.isfinite(self.part_example):
            return math.sqrt(t_quantile(q, self.seeds - 1) ** 2 * self.part_seed +
                             t_quantile(q, self.examples - 1) ** 2 * self.part_example)
        return t_quantile(q, self.df) * self.se

    def interval(self, level: float = 0.95) -> tuple:
        h = self.half_width((1 + level) / 2)
        return self.mean - h, self.mean + h

    def one_sided_p(self, distance: float) -> float:
        """The p-value of a one-sided test whose bound lies ``distance`` above the mean (H0: the truth at or beyond the
        bound): the q with half_width(q) = distance, p = 1 - q; by symmetry 1 - p(-distance) below the mean. Exactly
        the level at which the interval's edge reaches the bound, so p <= alpha iff the interval decides."""
        if self.se == 0:
            return 0.0 if distance > 0 else 1.0
        x = abs(distance)
        if x == 0:
            return 0.5
        if self.half_width(1 - 1e-15) <= x:
            p = 1e-15
        else:  # half_width rises with q: its root on log(1 - q), to a relative 1e-6 of p
            f = lambda z: self.half_width(1 - math.exp(z)) - x  # noqa: E731
            p = math.exp(optimize.brentq(f, math.log(1e-15), math.log(0.5), xtol=1e-6))
        return p if distance > 0 else 1 - p

    def share_of_seeds(self) -> float:
        """The seeds' share of the mean's variance (0 with one seed, where it cannot be told apart)."""
        v = self.se ** 2
        return 0.0 if v == 0 else (self.var_seed / self.seeds) / v

    def as_dict(self) -> dict:
        return asdict(self)


def t_quantile(q: float, df: float) -> float:
    # scipy.special's quantile functions: the same values as sps.t.ppf / sps.norm.ppf without their per-call overhead
    # (p-values invert the interval numerically, tens of quantiles each)
    return float(special.stdtrit(df, q)) if math.isfinite(df) and df > 0 else float(special.ndtri(q))


def _array(x, name: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a rectangular numeric array, got ragged or non-numeric input.") from None
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty (seeds x examples) array, got shape {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must hold finite numbers only, got NaN or infinity.")
    return a


def components(x) -> Components:
    """The crossed random-effects decomposition of a (seeds × examples) array (a 1-D array is one seed)."""
    d = _array(x, "x")
    S, N = d.shape
    mean = float(d.mean())
    if N < 2:
        raise ValueError(f"x must hold at least two examples per seed, got {N}.")
    col = d.mean(axis=0)
    ms_e = S * float(((col - mean) ** 2).sum()) / (N - 1)
    if S == 1:
        return Components(mean, 0.0, ms_e, 0.0, 1, N, math.sqrt(ms_e / N), float(N - 1))
    row = d.mean(axis=1)
    ms_s = N * float(((row - mean) ** 2).sum()) / (S - 1)
    resid = d - row[:, None] - col[None, :] + mean
    ms_r = float((resid ** 2).sum()) / ((S - 1) * (N - 1))
    var_s, var_e = max(ms_s - ms_r, 0.0) / N, max(ms_e - ms_r, 0.0) / S
    # MS_seed / (S N) estimates var_seed / S + var_residual / (S N) without a clip (clipping it when the seeds happen to
    # agree would swap the seeds' few degrees of freedom for the examples' many and under-cover); the examples'
    # shared part, max(MS_example - MS_res, 0) / (S N), is added when there is one
    terms = [(ms_s, 1.0, S - 1)] + ([(ms_e, 1.0, N - 1), (ms_r, -1.0, (S - 1) * (N - 1))] if var_e > 0 else [])
    total = sum(c * ms for ms, c, _ in terms)
    den = sum((c * ms) ** 2 / df for ms, c, df in terms)
    df = total ** 2 / den if den > 0 else float("inf")
    var = max(total, 0.0) / (S * N)
    return Components(mean, var_s, var_e, ms_r if S > 1 else 0.0, S, N, math.sqrt(var), float(df),
                      ms_s / (S * N), (ms_e - ms_r) / (S * N) if var_e > 0 else 0.0)


def difference(a, b) -> Components:
    """The components of the paired difference a - b (same seeds in the same rows, same examples in the same
    columns)."""
    a, b = _array(a, "a"), _array(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must score the same seeds and examples (same shape), got {a.shape} and {b.shape}.")
    return components(a - b)


def _positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or \
            not math.isfinite(float(value)) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    return float(value)


def _alpha(alpha: float) -> float:
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must lie strictly between 0 and 0.5, got {alpha}.")
    return float(alpha)


def verdict(c: Components, margin: float, alpha: float = 0.05) -> str:
    """equivalent within the margin (the (1 - 2 alpha) interval inside +-margin), else different (the (1 - alpha)
    interval excludes 0), else unresolved."""
    margin, alpha = _positive(margin, "margin"), _alpha(alpha)
    lo90, hi90 = c.interval(1 - 2 * alpha)
    if -margin < lo90 and hi90 < margin:
        return EQUIVALENT
    lo95, hi95 = c.interval(1 - alpha)
    return DIFFERENT if lo95 > 0 or hi95 < 0 else UNRESOLVED


def compare(a, b, margin: float, alpha: float = 0.05) -> dict:
    """Everything a report needs of mean(a) - mean(b): the difference, its (1 - alpha) and (1 - 2 alpha)
    intervals, the two-sided p of the difference and TOST's p, the verdict, the variance components, and the
    smallest margin this design resolves with 80 % power."""
    margin, alpha = _positive(margin, "margin"), _alpha(alpha)
    c = difference(a, b)
    # each p is the level at which the interval the verdict reads reaches its bound: p <= alpha iff it decides
    p_diff = min(1.0, 2 * c.one_sided_p(abs(c.mean))) if c.se > 0 else (0.0 if c.mean else 1.0)
    if c.se > 0:
        p_tost = float(max(c.one_sided_p(c.mean + margin), c.one_sided_p(margin - c.mean)))
    else:
        p_tost = 0.0 if abs(c.mean) < margin else 1.0
    v = verdict(c, margin, alpha)
    return {"diff": c.mean, "ci95": c.interval(1 - alpha), "ci90": c.interval(1 - 2 * alpha), "p_difference": p_diff,
            "p_tost": p_tost, "verdict": v, "equivalent": v == EQUIVALENT, "different": v == DIFFERENT,
            "margin": margin, "se": c.se, "df": c.df, "n_seeds": c.seeds, "n_examples": c.examples,
            "components": c.as_dict(), "resolvable_margin": resolvable(c, alpha=alpha),
            "method": "crossed random effects (seeds x examples), Banerjee's interval: the seeds' part on S - 1 df, "
                      "the examples' on N - 1" if c.seeds > 1 else
                      "paired over examples, t on N - 1 df (one seed: no training noise)"}


# ------------------------------------------------------------------ power and design

_CHI_POINTS = 400  # quantiles of the seeds' chi-square at which power is averaged


@lru_cache(maxsize=64)
def _chi_grid(f: int) -> np.ndarray:
    """Quantiles of chi2_f / f at the midpoints of _CHI_POINTS equal-probability bins."""
    return sps.chi2.ppf((np.arange(_CHI_POINTS) + 0.5) / _CHI_POINTS, f) / f


def power_at(c: Components, margin: float, alpha: float = 0.05) -> float:
    """TOST's power at a true difference of 0 on ``c``'s design, taking its components as the truth: the mean is
    normal with sd se, and the interval's seeds' part is A chi2_{S-1} / (S - 1), independent of the mean, so
    power = E[ P(|mean| + h(A-hat) < margin) ], averaged over that chi-square's quantiles (h random matters: with three
    seeds the plug-in h + z se gives about 70 % where it promises 80 %)."""
    if c.se == 0:
        return 1.0 if margin > 0 else 0.0
    if c.seeds > 1 and math.isfinite(c.part_seed) and math.isfinite(c.part_example):
        f = c.seeds - 1
        u = _chi_grid(f)
        h = np.sqrt(t_quantile(1 - alpha, f) ** 2 * c.part_seed * u +
                    t_quantile(1 - alpha, c.examples - 1) ** 2 * c.part_example)
    else:
        h = np.array([c.half_width(1 - alpha)])
    return float(np.clip(2 * sps.norm.cdf((margin - h) / c.se) - 1, 0, 1).mean())


def resolvable(c: Components, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest margin TOST on ``c``'s interval resolves with ``power`` at a true difference of 0 (``power_at``;
    with a fixed half-width it is half_width(1 - alpha) + z_{(1+P)/2} se)."""
    hi = c.half_width(1 - alpha / 1000) + 10 * c.se + 1e-12
    if c.se == 0:
        return 0.0
    return float(optimize.brentq(lambda m: power_at(c, m, alpha) - power, 0.0, hi, xtol=1e-9 * hi))


def from_parts(mean: float, var_seed: float, var_example: float, var_residual: float, seeds: int,
               examples: int) -> Components:
    """The components a (seeds × examples) design has in expectation, given the variance components (the mean
    squares at their expected values: MS_seed = var_res + N var_seed, MS_example = var_res + S var_example): a table
    row's stored components, or another design's (``design_components``)."""
    S, N = int(seeds), int(examples)
    if S == 1:  # one seed: the example and residual parts cannot be told apart; treat all as examples'
        ms_e = var_example + var_residual
        return Components(mean, 0.0, var_example, 0.0, 1, N, math.sqrt(max(ms_e, 0.0) / N), float(N - 1))
    ms_r = var_residual
    ms_s, ms_e = ms_r + N * var_seed, ms_r + S * var_example
    terms = [(ms_s, S - 1), (ms_e, N - 1), (ms_r, (S - 1) * (N - 1))]
    total = ms_s + ms_e - ms_r
    den = sum(ms ** 2 / df for ms, df in terms if df > 0 and ms > 0)
    df = total ** 2 / den if den > 0 else float("inf")
    return Components(mean, var_seed, var_example, var_residual, S, N, math.sqrt(max(total, 0.0) / (S * N)),
                      float(df), ms_s / (S * N), S * var_example / (S * N))


def design_components(c: Components, seeds: int, examples: int) -> Components:
    """``c``'s variance components at another design (seeds × examples)."""
    # one seed measured no seed part (var_seed = 0): another design's seed part is then left out, an optimistic plan
    return from_parts(c.mean, c.var_seed, c.var_example, c.var_residual, seeds, examples)


def examples_needed(c: Components, margin: float, seeds: int, power: float = 0.8, alpha: float = 0.05,
                    most: int = 10 ** 6) -> Optional[int]:
    """The fewest test examples at ``seeds`` seeds for TOST at ``margin`` to reach ``power`` at a true difference of
    0; None when even ``most`` examples do not (the seeds' own variance is too large for that many seeds)."""
    def ok(n: int) -> bool:
        return resolvable(design_components(c, seeds, n), power, alpha) <= margin
    if not ok(most):
        return None
    lo, hi = 2, most
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def seeds_needed(c: Components, margin: float, examples: int, power: float = 0.8, alpha: float = 0.05,
                 most: int = 200) -> Optional[int]:
    """The fewest seeds (at least 2) at ``examples`` examples for TOST at ``margin`` to reach ``power``; None past
    ``most``."""
    for s in range(2, most + 1):
        if resolvable(design_components(c, s, examples), power, alpha) <= margin:
            return s
    return None


# ------------------------------------------------------------------ several ranks, one claim

def fixed_sequence(verdicts: Mapping[int, str]) -> dict:
    """The ranks shown equivalent by fixed-sequence testing from the largest rank down (see the module docstring):
    {smallest: the smallest of them or None, equivalent: them in increasing order, stopped_at: the first rank
    that was not equivalent, or None}."""
    shown: List[int] = []
    stopped = None
    for rank in sorted(verdicts, reverse=True):
        if verdicts[rank] != EQUIVALENT:
            stopped = rank
            break
        shown.append(rank)
    return {"smallest": min(shown) if shown else None, "equivalent": sorted(shown), "stopped_at": stopped}


def holm(p_tost: Mapping[int, float], alpha: float = 0.05) -> dict:
    """The ranks shown equivalent by Holm's step-down procedure over their TOST p-values (see the module docstring):
    {smallest: the smallest of them or None, equivalent: them in increasing order, stopped_at: the rank with the
    smallest p that was not shown equivalent, or None, levels: {rank: the level its p was tested at}}."""
    order = sorted(p_tost, key=lambda r: (p_tost[r], r))
    shown: List[int] = []
    levels = {}
    stopped = None
    for i, rank in enumerate(order):
        level = alpha / (len(order) - i)
        levels[rank] = level
        p = p_tost[rank]
        if not (p == p and p <= level):  # NaN p (no test) stops the procedure as well
            stopped = rank
            break
        shown.append(rank)
    return {"smallest": min(shown) if shown else None, "equivalent": sorted(shown), "stopped_at": stopped,
            "levels": levels}


# ------------------------------------------------------------------ looks while seeds are added

def spent(alpha: float, t: float) -> float:
    """Lan-DeMets Pocock-type alpha spent by information fraction ``t`` in (0, 1]: alpha ln(1 + (e - 1) t)."""
    if not 0 < t <= 1:
        raise ValueError(f"the information fraction must lie in (0, 1], got {t}.")
    return float(alpha * math.log(1 + (math.e - 1) * t))


def look_alphas(seeds_at_looks: Sequence[int], max_seeds: int, alpha: float = 0.05) -> List[float]:
    """The alpha each look tests at: the increments of the spending function over t_k = seeds_k / max_seeds (the
    last look, at max_seeds, spends what is left, so the increments sum to alpha)."""
    out, before = [], 0.0
    for s in seeds_at_looks:
        now = spent(alpha, min(1.0, s / max_seeds))
        out.append(max(now - before, 1e-12))
        before = now
    return out
