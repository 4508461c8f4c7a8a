"""Paired statistics for two models scored on the same examples (McNemar 1947; Efron & Tibshirani 1993;
Schuirmann 1987 for two one-sided tests).

Model A and model B are scored on the same n test examples (and, for several training seeds, on the same
examples in every seed), so their scores are paired: the difference is measured per example, and the noise
that both share (easy and hard examples) cancels. With a_i, b_i the per-example scores (0/1 correctness or a
loss) and d_i = a_i - b_i:

    McNemar (exact)    n10 = #{A right, B wrong}, n01 = #{A wrong, B right}; under H0 (no difference)
                       n10 ~ Binomial(n01 + n10, 1/2); p = two-sided binomial test.
    paired bootstrap   resample example indices i*_1..i*_n with replacement, the same for A and B;
                       d* = stat(a[i*]) - stat(b[i*]); interval = percentiles of d*, se = sd(d*).
    hierarchical       a, b are (seeds x examples); a replicate resamples seeds s* and examples e*
                       (one e* for both methods and all seeds, since every seed saw the same examples):
                       d* = mean_{s in s*, e in e*} (a[s, e] - b[s, e]).  Seeds carry the training noise.
    bootstrap p-value  p = 2 min(P*(d* <= 0), P*(d* >= 0)), clipped to [1/n_boot, 1]: the smallest
                       1 - level at which the percentile interval would exclude 0 (so p < 1 - level
                       agrees with the interval, up to the quantiles' interpolation).
    TOST               equivalence within a margin m: reject both H0-: Delta <= -m and H0+: Delta >= +m at
                       level alpha. Interval form: equivalent iff the (1 - 2 alpha) interval lies inside
                       (-m, +m). Bootstrap p-values p- = P*(d* <= -m), p+ = P*(d* >= +m); p_tost = max.

"Not significantly different" is never "equivalent" (a small n makes every interval wide and every test
non-significant); equivalence needs the 90 % interval inside the stated margin. See `verdict`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
from scipy import stats as sps

EQUIVALENT, DIFFERENT, UNRESOLVED = "equivalent within the margin", "different", "unresolved"
MIN_SEEDS = 3  # seeds carry the training noise: three at least before a verdict
_CHUNK = 1 << 22  # bootstrap indices drawn per block (elements), to bound memory at large n * n_boot


# ---------------------------------------------------------------- input checks (one sentence each)

def _array(x, name: str, ndim: tuple[int, ...] = (1,)) -> np.ndarray:
    try:
        x = np.asarray(x, dtype=np.float64)
    except (ValueError, TypeError):
        raise ValueError(f"{name} must be a rectangular numeric array, got ragged or non-numeric input.") from None
    if x.ndim not in ndim:
        want = " or ".join(f"{d}-D" for d in ndim)
        raise ValueError(f"{name} must be a {want} array, got shape {x.shape}.")
    if x.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must hold finite numbers only, got NaN or infinity.")
    return x


def _pair(a, b, ndim: tuple[int, ...] = (1,)) -> tuple[np.ndarray, np.ndarray]:
    a, b = _array(a, "a", ndim), _array(b, "b", ndim)
    if a.shape != b.shape:
        raise ValueError(f"a and b must score the same examples (same shape), got {a.shape} and {b.shape}.")
    return a, b


def _is_binary(x: np.ndarray) -> bool:
    return bool(np.all((x == 0) | (x == 1)))


def _binary(x, name: str) -> np.ndarray:
    x = _array(x, name)
    if not _is_binary(x):
        raise ValueError(f"{name} must hold 0/1 (or boolean) correctness values, got {np.unique(x)[:5].tolist()}.")
    return x.astype(bool)


def _level(level: float, name: str = "level") -> float:
    if not 0 < level < 1:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {level}.")
    return float(level)


def _positive(value: float, name: str) -> float:
    if not (isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    return float(value)


def _n_boot(n_boot: int) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}.")
    return int(n_boot)


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _two_sided_p(samples: np.ndarray) -> float:
    p = 2 * min(np.mean(samples <= 0), np.mean(samples >= 0))
    return float(np.clip(p, 1 / samples.size, 1.0))


# ---------------------------------------------------------------- bootstrap replicates

def _counts(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """(rows x n) multiplicities of n indices drawn with replacement, one row per replicate."""
    idx = rng.integers(0, n, size=(rows, n))
    flat = (idx + n * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n)


def _mean_replicates(d: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """d* for the mean of a (seeds x examples) difference d: d* = w_sᵀ d w_e / (S N), with w_s, w_e the
    multiplicities of the resampled seeds and examples (examples drawn first; seeds only when S > 1, so
    one seed gives exactly the paired bootstrap over examples)."""
    S, N = d.shape
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    step = max(1, _CHUNK // max(N, S))
    for start in range(0, n_boot, step):
        rows = min(step, n_boot - start)
        w_e = _counts(rng, rows, N)
        w_s = _counts(rng, rows, S) if S > 1 else np.ones((rows, 1), dtype=np.int64)
        out[start:start + rows] = np.einsum("rn,rn->r", w_s @ d, w_e) / (S * N)
    return out


def replicate_means(arrays: Mapping[str, np.ndarray], n_boot: int = 2000, seed: int = 0) -> dict:
    """Hierarchical bootstrap replicates of the means of several (seeds x examples) arrays of one shape, every
    replicate resampling the same seeds and examples for all of them (as `_mean_replicates` does for one), so
    any function of the means — a difference, a ratio such as the share of a gain kept — has a paired
    interval: ``np.percentile(f(**replicates), [2.5, 97.5])``. With one array the replicates are exactly
    `_mean_replicates`'s for the same seed."""
    n_boot = _n_boot(n_boot)
    arrays = {k: _array(v, k, (2,)) for k, v in arrays.items()}
    if not arrays:
        raise ValueError("arrays must hold at least one (seeds x examples) array.")
    shapes = {v.shape for v in arrays.values()}
    if len(shapes) > 1:
        raise ValueError(f"arrays must share one (seeds x examples) shape, got {sorted(shapes)}.")
    S, N = shapes.pop()
    rng = np.random.default_rng(seed)
    out = {k: np.empty(n_boot) for k in arrays}
    step = max(1, _CHUNK // max(N, S))
    for start in range(0, n_boot, step):
        rows = min(step, n_boot - start)
        w_e = _counts(rng, rows, N)
        w_s = _counts(rng, rows, S) if S > 1 else np.ones((rows, 1), dtype=np.int64)
        for k, v in arrays.items():
            out[k][start:start + rows] = np.einsum("rn,rn->r", w_s @ v, w_e) / (S * N)
    return out


def mean_interval(a, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of one model's (seeds x examples) scores (a 1-D array is one seed)."""
    a = np.atleast_2d(_array(a, "a", (1, 2)))
    return _interval(replicate_means({"a": a}, n_boot, seed)["a"], _level(level))


def interval(samples, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (non-finite replicates, e.g. a ratio over a zero, dropped;
    (nan, nan) when none is left)."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    return _interval(samples, _level(level)) if samples.size else (math.nan, math.nan)


def _stat_replicates(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int, stat: Callable) -> np.ndarray:
    """d* = stat(a[i*]) - stat(b[i*]) for any statistic, one replicate at a time."""
    rng = np.random.default_rng(seed)
    n = a.size
    return np.array([stat(a[i]) - stat(b[i]) for i in (rng.integers(0, n, size=n) for _ in range(n_boot))],
                    dtype=np.float64)


def _summary(point: float, samples: np.ndarray, level: float) -> dict:
    return {"diff": float(point), "interval": _interval(samples, level), "level": level,
            "se": float(np.std(samples, ddof=1)) if samples.size > 1 else 0.0,
            "p_value": _two_sided_p(samples), "n_boot": int(samples.size)}


# ---------------------------------------------------------------- tests of a difference

def mcnemar_exact(correct_a, correct_b) -> dict:
    """Exact McNemar test for two models' 0/1 correctness on the same n examples.

    n01 = #{A wrong, B right}, n10 = #{A right, B wrong}; acc_a - acc_b = (n10 - n01) / n. Under H0 the
    discordant pairs split evenly, n10 ~ Binomial(n01 + n10, 1/2), and p is the two-sided binomial test
    (scipy.stats.binomtest(n10, n01 + n10, 0.5)); p = 1 when there is no discordant pair.
    """
    a, b = _binary(correct_a, "correct_a"), _binary(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(f"correct_a and correct_b must score the same examples, got lengths {a.size} and {b.size}.")
    n01, n10 = int(np.sum(~a & b)), int(np.sum(a & ~b))
    p = sps.binomtest(n10, n01 + n10, 0.5).pvalue if n01 + n10 else 1.0
    acc_a, acc_b = float(a.mean()), float(b.mean())
    return {"n": int(a.size), "acc_a": acc_a, "acc_b": acc_b, "diff": acc_a - acc_b,
            "n01": n01, "n10": n10, "p_value": float(p)}


def paired_bootstrap(a, b, n_boot: int = 2000, seed: int = 0, level: float = 0.95, stat: Callable = np.mean) -> dict:
    """Paired bootstrap over examples of stat(a) - stat(b) (see the module docstring).

    a, b: per-example scores on the same examples (0/1 correctness, or per-example losses). Returns diff
    (the point estimate on the data), the percentile interval at `level`, se = sd of the replicates, and
    the two-sided p-value 2 min(P*(d* <= 0), P*(d* >= 0)) clipped to [1/n_boot, 1]. The mean takes a
    vectorised path; any other statistic (e.g. lambda l: np.exp(np.mean(l)) for perplexity) is applied
    replicate by replicate.
    """
    a, b = _pair(a, b)
    n_boot, level = _n_boot(n_boot), _level(level)
    if stat is np.mean:
        samples = _mean_replicates((a - b)[None, :], n_boot, seed)
    else:
        samples = _stat_replicates(a, b, n_boot, seed, stat)
    return _summary(stat(a) - stat(b), samples, level) | {"n": int(a.size)}


def hierarchical_bootstrap(a, b, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Two-level bootstrap of mean(a) - mean(b) for (seeds x examples) arrays (see the module docstring).

    Row s of a and of b is the same training seed, column e the same example. Each replicate resamples
    seeds and examples with replacement, one example resample shared by both methods and all seeds, so
    both the training noise (seeds) and the test-set noise (examples) enter the interval. With one seed
    it is exactly `paired_bootstrap` over examples (same seed, same replicates). A ragged input (seeds
    scored on different numbers of examples) is refused with a ValueError.
    """
    a, b = _pair(a, b, ndim=(2,))
    n_boot, level = _n_boot(n_boot), _level(level)
    samples = _mean_replicates(a - b, n_boot, seed)
    return _summary(a.mean() - b.mean(), samples, level) | {"n_seeds": a.shape[0], "n_examples": a.shape[1]}


# ---------------------------------------------------------------- equivalence

def tost(diff_samples, margin: float, alpha: float = 0.05) -> dict:
    """Two one-sided tests of |Delta| < margin from bootstrap replicates d* of the difference.

    p_lower = P*(d* <= -margin) tests H0-: Delta <= -margin, p_upper = P*(d* >= +margin) tests
    H0+: Delta >= +margin (each clipped to [1/n_boot, 1]); p_tost = max(p_lower, p_upper). Equivalent iff
    the (1 - 2 alpha) percentile interval lies inside (-margin, +margin), the interval form of TOST.
    """
    d = _array(diff_samples, "diff_samples")
    margin, alpha = _positive(margin, "margin"), _alpha(alpha)
    clip = lambda p: float(np.clip(p, 1 / d.size, 1.0))  # noqa: E731
    p_lower, p_upper = clip(np.mean(d <= -margin)), clip(np.mean(d >= margin))
    lo, hi = _interval(d, 1 - 2 * alpha)
    return {"interval": (lo, hi), "level": 1 - 2 * alpha, "margin": margin, "p_lower": p_lower,
            "p_upper": p_upper, "p_tost": max(p_lower, p_upper), "equivalent": bool(-margin < lo and hi < margin)}


def _alpha(alpha: float) -> float:
    alpha = _level(alpha, "alpha")
    if alpha >= 0.5:
        raise ValueError(f"alpha must be below 0.5 for a (1 - 2 alpha) interval, got {alpha}.")
    return alpha


def _checked(a, b, margin: float, relative: bool, hierarchical: bool | None):
    """a, b as (seeds x examples) arrays and the absolute margin, every argument checked before any work."""
    a, b = _pair(a, b, ndim=(1, 2))
    if hierarchical is True and a.ndim == 1:
        raise ValueError("hierarchical=True needs (seeds x examples) arrays a and b, got 1-D vectors.")
    if hierarchical is False and a.ndim == 2 and a.shape[0] > 1:
        raise ValueError(f"hierarchical=False would drop the seed-to-seed noise of {a.shape[0]} seeds; "
                         "pass hierarchical=None or True.")
    m = _positive(margin, "margin")
    if relative:
        ref = abs(float(b.mean()))
        if ref == 0:
            raise ValueError("margin cannot be relative to mean(b) = 0; pass an absolute margin (relative=False).")
        m *= ref
    return np.atleast_2d(a), np.atleast_2d(b), m


def equivalence(a, b, margin: float, alpha: float = 0.05, n_boot: int = 2000, seed: int = 0,
                hierarchical: bool | None = None, relative: bool = False) -> dict:
    """TOST of mean(a) - mean(b) within +-margin on bootstrap replicates (see `tost`).

    a, b: 1-D per-example scores (paired bootstrap over examples) or 2-D (seeds x examples) arrays
    (hierarchical bootstrap: seeds and examples both in the variance). hierarchical=None chooses by
    shape; True insists on 2-D; False refuses several seeds, since flattening them hides the training noise.
    relative=True: margin is a fraction of |mean(b)| (margin_abs = margin |mean(b)|, fixed at the observed
    reference mean). For perplexity pass per-token losses and an absolute margin on the mean loss:
    ppl_a / ppl_b = exp(Delta loss), so "1 % relative perplexity" is margin = log(1.01) nats.
    """
    alpha, n_boot = _alpha(alpha), _n_boot(n_boot)
    a, b, m = _checked(a, b, margin, relative, hierarchical)
    samples = _mean_replicates(a - b, n_boot, seed)  # one seed (a 1-D input): the paired bootstrap
    return tost(samples, m, alpha) | {"diff": float(a.mean() - b.mean()), "margin_given": float(margin),
                                      "relative": bool(relative)}


def verdict(interval_95, interval_90, margin: float) -> str:
    """One of "equivalent within the margin", "different", "unresolved", by this rule:

        equivalent within the margin   the 90 % interval lies inside (-margin, +margin)   (TOST at 5 %)
        different                      otherwise, when the 95 % interval excludes 0       (two-sided at 5 %)
        unresolved                     otherwise: the data cannot tell; NOT "equivalent"

    A difference that is significant yet smaller than the margin is "equivalent within the margin" (the
    margin says what is too small to matter); `compare` reports both flags. "different" therefore means a
    difference that is detected and not shown to be within the margin.
    """
    margin = _positive(margin, "margin")
    (lo95, hi95), (lo90, hi90) = map(_check_interval, (interval_95, interval_90), ("interval_95", "interval_90"))
    if -margin < lo90 and hi90 < margin:
        return EQUIVALENT
    if lo95 > 0 or hi95 < 0:
        return DIFFERENT
    return UNRESOLVED


def _check_interval(interval, name: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in interval)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"{name} must be a finite (low, high) pair with low <= high, got {interval!r}.")
    return lo, hi


def compare(a, b, margin: float, alpha: float = 0.05, n_boot: int = 2000, seed: int = 0,
            hierarchical: bool | None = None, relative: bool = False) -> dict:
    """Everything needed to report A vs B: diff = mean(a) - mean(b), ci95 = (1 - alpha) and ci90 =
    (1 - 2 alpha) bootstrap intervals (one set of replicates), p_difference (exact McNemar when a and b are
    0/1 scores of one seed, else the bootstrap two-sided p), p_tost, the flags equivalent (ci90 inside
    +-margin) and different (ci95 excludes 0), and `verdict`. margin is absolute unless relative=True
    (see `equivalence`). With fewer than three seeds `note` says that the training noise is not in the
    interval (three seeds at least are needed before a verdict); the verdict is still given.
    """
    alpha, n_boot = _alpha(alpha), _n_boot(n_boot)
    a, b, m = _checked(a, b, margin, relative, hierarchical)
    samples = _mean_replicates(a - b, n_boot, seed)
    t = tost(samples, m, alpha)
    ci95, ci90 = _interval(samples, 1 - alpha), t["interval"]
    n_seeds = a.shape[0]
    if n_seeds == 1 and _is_binary(a) and _is_binary(b):
        p_diff, method = mcnemar_exact(a.ravel(), b.ravel())["p_value"], "mcnemar_exact"
    else:
        p_diff, method = _two_sided_p(samples), "hierarchical_bootstrap" if n_seeds > 1 else "paired_bootstrap"
    v = verdict(ci95, ci90, m)
    return {"diff": float(a.mean() - b.mean()), "ci95": ci95, "ci90": ci90, "p_difference": p_diff,
            "p_difference_method": method, "p_lower": t["p_lower"], "p_upper": t["p_upper"],
            "p_tost": t["p_tost"], "equivalent": v == EQUIVALENT, "different": bool(ci95[0] > 0 or ci95[1] < 0),
            "verdict": v, "margin": m, "margin_given": float(margin), "relative": bool(relative),
            "n_seeds": n_seeds, "n_examples": int(a.shape[1]), "n_boot": int(samples.size),
            "note": "" if n_seeds >= MIN_SEEDS else (
                f"only {n_seeds} seed(s): the interval holds the test-set noise but not all of the training "
                f"noise; use at least {MIN_SEEDS} seeds before a verdict.")}


def smallest_equivalent(candidates: Mapping, margin: float | None = None) -> dict:
    """The smallest rank whose comparison with the reference is "equivalent within the margin".

    candidates: rank -> `compare` result (LoRA at that rank vs the reference). Ranks are scanned in
    increasing order and each verdict is recomputed from its ci95, ci90 and `margin` (absolute; None keeps
    each result's own margin). Rule: the answer is the smallest rank at which equivalence is shown; it
    does not claim that the larger ranks are equivalent (each is listed in equivalent_ranks only if shown).
    """
    if not candidates:
        raise ValueError("candidates must hold at least one rank -> compare(...) result.")
    verdicts = {}
    for rank in sorted(candidates):
        r = candidates[rank]
        missing = [k for k in ("ci95", "ci90", "diff") + (("margin",) if margin is None else ()) if k not in r]
        if missing:
            raise ValueError(f"candidates[{rank!r}] must be a compare(...) result; it lacks {', '.join(missing)}.")
        verdicts[rank] = verdict(r["ci95"], r["ci90"], r["margin"] if margin is None else margin)
    shown = [r for r, v in verdicts.items() if v == EQUIVALENT]
    if not shown:
        where = f"+-{margin:g}" if margin is not None else "its margin"
        return {"rank": None, "ci90": None, "ci95": None, "diff": None, "equivalent_ranks": [],
                "verdicts": verdicts,
                "sentence": f"No rank among {sorted(candidates)} was shown equivalent to the reference within {where}."}
    best = candidates[shown[0]]
    m = best["margin"] if margin is None else margin
    return {"rank": shown[0], "ci90": tuple(best["ci90"]), "ci95": tuple(best["ci95"]), "diff": best["diff"],
            "equivalent_ranks": shown, "verdicts": verdicts,
            "sentence": (f"Rank {shown[0]} is the smallest rank shown equivalent to the reference within "
                         f"+-{m:g} (90 % interval {best['ci90'][0]:+.4f} to {best['ci90'][1]:+.4f}); this "
                         "says nothing of the larger ranks beyond their own verdicts.")}


# ---------------------------------------------------------------- association and simple errors

def spearman_with_ci(x, y, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Spearman's rho = Pearson correlation of the ranks (scipy.stats.spearmanr, average ranks for ties),
    its p-value, and a percentile interval from resampling (x_i, y_i) pairs with replacement (replicates
    whose resample is constant in x or y are dropped; n_valid says how many remain). rho, p_value and
    interval are None when n < 3 or x or y is constant."""
    x, y = _pair(x, y)
    n_boot, level = _n_boot(n_boot), _level(level)
    none = {"rho": None, "p_value": None, "interval": None, "level": level, "n": int(x.size), "n_valid": 0}
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return none
    res = sps.spearmanr(x, y)
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    rx, ry = sps.rankdata(x[idx], axis=1), sps.rankdata(y[idx], axis=1)
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    den = np.sqrt((rx ** 2).sum(1) * (ry ** 2).sum(1))
    ok = den > 0
    rho_star = (rx * ry).sum(1)[ok] / den[ok]
    interval = _interval(np.clip(rho_star, -1, 1), level) if rho_star.size else None
    return none | {"rho": float(res.statistic), "p_value": float(res.pvalue), "interval": interval,
                   "n_valid": int(ok.sum())}


def binomial_se(p: float, n: int, _names: tuple[str, str] = ("p", "n")) -> float:
    """Standard error of one proportion: sqrt(p (1 - p) / n)."""
    if not 0 <= p <= 1:
        raise ValueError(f"{_names[0]} must be a proportion in [0, 1], got {p}.")
    if n < 1:
        raise ValueError(f"{_names[1]} must be a positive count, got {n}.")
    return math.sqrt(p * (1 - p) / n)


def unpaired_difference_se(p1: float, p2: float, n1: int, n2: int) -> float:
    """Standard error of p1 - p2 from independent samples: sqrt(p1 (1 - p1) / n1 + p2 (1 - p2) / n2).
    (p1 = p2 = 0.77, n = 1000: 0.0188, so two SEs are 0.038, not the 0.026 of one proportion.)"""
    return math.hypot(binomial_se(p1, n1, ("p1", "n1")), binomial_se(p2, n2, ("p2", "n2")))
