"""Linear CKA between two feature matrices of the same n examples (Kornblith et al. 2019; debiased as in Song et al. 2012 and
Nguyen, Raghu & Kornblith 2021).

X (n x p) and Y (n x q) hold the features of the same n examples (rows), e.g. the base model's and the
finetuned model's. With K = X Xᵀ, L = Y Yᵀ:

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))

Biased (Kornblith et al. 2019), on column-centred X, Y (HSIC_0 up to a factor that cancels):

    CKA_0(X, Y) = ‖Yᵀ X‖_F² / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F)

It is strongly inflated unless n >> p: independent Gaussian features give about 0.80 at n = 100, p = 384.

Debiased: the unbiased HSIC estimator of Song et al. 2012 (as in Nguyen, Raghu & Kornblith 2021), with
K̃, L̃ the Gram matrices with their diagonals set to zero and 1 the all-ones vector:

    HSIC_1(K, L) = [ tr(K̃ L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n-1)(n-2)) - 2/(n-2) 1ᵀK̃L̃1 ] / (n (n-3)),   n >= 4

It is about 0 for independent features and exactly 1 when Y is X rotated, scaled or shifted. It is
invariant to a shift of the features, so centring first changes nothing but the rounding.

Both are computed in float64 and return NaN when a side has no variance (all rows equal). The
debiased form builds two n x n Gram matrices: fine for n up to a few thousand.
"""
from __future__ import annotations

import math

import numpy as np


def _features(x, y) -> tuple[np.ndarray, np.ndarray]:
    """x, y as float64 (n x features) arrays of the same n, column-centred."""
    out = []
    for name, f in (("x", x), ("y", y)):
        try:
            f = np.asarray(f, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a numeric (n x features) array, got ragged or "
                             "non-numeric input.") from None
        if f.ndim != 2 or 0 in f.shape:
            raise ValueError(f"{name} must be a non-empty 2-D (n x features) array, got shape {f.shape}.")
        if not np.all(np.isfinite(f)):
            raise ValueError(f"{name} must hold finite numbers only, got NaN or infinity.")
        out.append(f - f.mean(0))
    if out[0].shape[0] != out[1].shape[0]:
        raise ValueError(f"x and y must hold the same examples (rows), got {out[0].shape[0]} and "
                         f"{out[1].shape[0]}.")
    return out[0], out[1]


def linear_cka(x, y) -> float:
    """Biased linear CKA ‖Yᵀ X‖_F² / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F) on column-centred x, y (Kornblith et al. 2019)."""
    x, y = _features(x, y)
    num = np.linalg.norm(y.T @ x) ** 2
    den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(num / den) if den > 0 else float("nan")


def _hsic1(k: np.ndarray, l: np.ndarray) -> float:
    """Unbiased HSIC_1 of two Gram matrices whose diagonals are already zero (formula in the module docstring)."""
    n = k.shape[0]
    k1, l1 = k.sum(1), l.sum(1)
    value = np.vdot(k, l) + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * (k1 @ l1)
    return float(value / (n * (n - 3)))


def linear_cka_debiased(x, y) -> float:
    """Linear CKA with the unbiased HSIC_1 estimator: HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L)),
    K = X Xᵀ, L = Y Yᵀ with zeroed diagonals. Needs n >= 4 examples; can be slightly negative."""
    x, y = _features(x, y)
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"the debiased CKA needs at least 4 examples (rows of x and y), got {n}.")
    k, l = x @ x.T, y @ y.T
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    den = _hsic1(k, k) * _hsic1(l, l)
    return _hsic1(k, l) / math.sqrt(den) if den > 0 else float("nan")
