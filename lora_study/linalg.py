"""Singular value decompositions for the whole suite: the runs (spectra of ΔW, truncation of ΔW) and the
analyses (spectral measures, subspaces) use these functions and no other SVD code.

    thin SVD                M = U diag(σ) Vᵀ, U (m × p), V (n × p), p = min(m, n), σ descending
    best rank-k approx.     trunc_k(M) = U_k diag(σ_1..σ_k) V_kᵀ (Eckart–Young), ‖M − trunc_k(M)‖_F² = Σ_{i>k} σ_i²
    randomized top-k σ      block Krylov iteration (Musco & Musco 2015), never above the exact values

Inputs may be torch tensors or numpy arrays; half precision and integers are computed in fp32, fp32 and
fp64 in their own precision. Wide matrices are decomposed through their (free) transpose.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Dict

import numpy as np
import torch

# Randomized top-k: block Krylov iteration (Musco & Musco 2015). Plain subspace iteration
# (torch.svd_lowrank, q = k + 64, niter = 2) is off by 8e-2 on the top 64 values of a Gaussian
# 4096 x 4096 or 4096 x 11008 matrix, whose spectrum is flat near the top. A Krylov space of
# (k + 16) x 13 dimensions brought that to 4e-5 and 1e-4 (measured; see benchmarks/spectra.py --kind gaussian).
OVERSAMPLE = 16
KRYLOV_ITERS = 12
# the randomized path pays off only while its Krylov space is a small part of the matrix
RANDOMIZED_MAX_FRACTION = 1 / 3


def as_float_tensor(M, name: str = "M") -> torch.Tensor:
    """``M`` (torch tensor or numpy array) as a real floating tensor: fp32/fp64 kept, others to fp32."""
    if isinstance(M, np.ndarray):
        M = torch.from_numpy(np.ascontiguousarray(M))
    if not isinstance(M, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor or numpy array, got {type(M).__name__}.")
    if M.is_complex():
        raise ValueError(f"{name} must be real, got dtype {M.dtype}.")
    if M.dtype not in (torch.float32, torch.float64):
        M = M.to(torch.float32)
    return M


def as_matrices(M, name: str = "M", allow_batch: bool = True) -> torch.Tensor:
    """``as_float_tensor`` checked to be a non-empty 2-D matrix (or a 3-D stack if allowed)."""
    M = as_float_tensor(M, name)
    ok = (2, 3) if allow_batch else (2,)
    if M.ndim not in ok:
        what = "a 2-D matrix or a 3-D stack of matrices" if allow_batch else "a 2-D matrix"
        raise ValueError(f"{name} must be {what}, got shape {tuple(M.shape)}.")
    if M.shape[-1] == 0 or M.shape[-2] == 0:
        raise ValueError(f"{name} must have non-empty dimensions, got shape {tuple(M.shape)}.")
    return M


def positive_int(value, name: str, upper: int | None = None, upper_what: str = "", minimum: int = 1) -> int:
    """``value`` as an int >= minimum (and <= upper if given), else one ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        raise ValueError(f"{name} must be {kind}, got {value!r}.")
    if upper is not None and value > upper:
        raise ValueError(f"{name} must be at most {upper_what} = {upper}, got {value}.")
    return int(value)


def _check_k(k, n: int) -> int:
    return positive_int(k, "k", n, "min(M.shape)")


def _tall(X: torch.Tensor) -> torch.Tensor:
    """The orientation with rows >= columns (same singular values).

    LAPACK's gesdd on CPU is several times slower on a wide matrix than on its (free, view-only)
    transpose: measured 5.7 s vs 1.5 s for a 2048 x 5504 fp32 matrix with torch 2.13 + MKL.
    """
    return X.mT if X.shape[-2] < X.shape[-1] else X


def singular_values(M, k: int | None = None, device=None, seed: int = 0) -> torch.Tensor:
    """Singular values of ``M`` in descending order (batched over a leading dim for a 3-D stack).

    Without ``k``: all min(m, n) values, exact (``torch.linalg.svdvals``, in M's precision).
    With ``k``: the top k. When k is small relative to min(m, n) they come from
    ``randomized_singular_values`` (relative error < 1e-3 on low-rank-plus-noise and Gaussian
    matrices; not above the exact values up to rounding), otherwise from the exact spectrum.
    Computed on ``device`` if given, returned on M's device (CPU for numpy input).
    """
    X = as_matrices(M)
    home = X.device
    n = min(X.shape[-2:])
    if k is not None:
        k = _check_k(k, n)
        if (k + OVERSAMPLE) * (KRYLOV_ITERS + 1) <= RANDOMIZED_MAX_FRACTION * n:
            return randomized_singular_values(X, k, device=device, seed=seed)
    if device is not None:
        X = X.to(device)
    s = torch.linalg.svdvals(_tall(X))
    if k is not None:
        s = s[..., :k]
    return s.to(home)


def thin_svd(M, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """M = U diag(S) Vh with U (m x p), S (p,), Vh (p x n), p = min(m, n); S descending.

    Computed through the tall orientation (see ``_tall``) on ``device`` if given; returned there.
    """
    X = as_matrices(M)
    if device is not None:
        X = X.to(device)
    if X.shape[-2] < X.shape[-1]:
        U, S, Vh = torch.linalg.svd(X.mT, full_matrices=False)
        return Vh.mT, S, U.mT
    return torch.linalg.svd(X, full_matrices=False)


def _orthonormalize(Y: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(Y, mode="reduced").Q


def _project(blocks: list[torch.Tensor], Y: torch.Tensor) -> torch.Tensor:
    """Component of Y in the span of the orthonormal blocks: sum_j Q_j Q_j^T Y."""
    Q = torch.cat(blocks, dim=-1)
    return Q @ (Q.mT @ Y)


def randomized_singular_values(M, k: int, *, oversample: int = OVERSAMPLE, n_iter: int = KRYLOV_ITERS,
                               seed: int = 0, device=None) -> torch.Tensor:
    """Top-k singular values by randomized block Krylov iteration (Musco & Musco 2015).

    For X (a x b, a >= b) and Gaussian Omega (a x q), q = k + oversample, the basis Q spans
    K = [X^T Omega, (X^T X) X^T Omega, ..., (X^T X)^n_iter X^T Omega] (each block re-orthogonalized
    against the previous ones), and the estimates are the top k singular values of X Q
    (Rayleigh-Ritz). Because Q has orthonormal columns, sigma_i(X Q) <= sigma_i(X) for every i:
    the estimates do not exceed the exact values (up to rounding). Cost: 2 (n_iter + 1) products of
    X with a b x q block. Deterministic for a given ``seed``.
    """
    X = as_matrices(M)
    home = X.device
    k = _check_k(k, min(X.shape[-2:]))
    oversample = positive_int(oversample, "oversample", minimum=0)
    n_iter = positive_int(n_iter, "n_iter", minimum=0)
    if device is not None:
        X = X.to(device)
    X = _tall(X)
    a, b = X.shape[-2:]
    q = min(k + oversample, b)
    gen = torch.Generator(device=X.device).manual_seed(int(seed))
    omega = torch.randn(*X.shape[:-2], a, q, generator=gen, device=X.device, dtype=X.dtype)
    blocks = [_orthonormalize(X.mT @ omega)]
    products = []  # X @ Q_j for each block, reused for the Rayleigh-Ritz step
    for _ in range(n_iter):
        if q * (len(blocks) + 1) > b:  # the Krylov space already fills R^b
            break
        products.append(X @ blocks[-1])
        Y = X.mT @ products[-1]
        for _ in range(2):  # block classical Gram-Schmidt, twice
            Y = Y - _project(blocks, Y)
        Q = _orthonormalize(Y)
        # once more after normalizing: a block that was numerically inside the span (rounding
        # noise) is made orthogonal too, so Q_all stays orthonormal to working precision
        blocks.append(_orthonormalize(Q - _project(blocks, Q)))
    products.append(X @ blocks[-1])
    s = torch.linalg.svdvals(torch.cat(products, dim=-1))[..., :k]
    return s.to(home)


def batched_singular_values(mats: Sequence, device=None) -> list[torch.Tensor]:
    """Exact singular values of each matrix in ``mats``, in input order.

    Matrices of the same shape and dtype are stacked and sent to ``torch.linalg.svdvals`` as one
    batch (one call per group, on ``device`` if given); results are returned on each input's device.
    """
    if isinstance(mats, (torch.Tensor, np.ndarray)) or not isinstance(mats, Sequence):
        raise ValueError(f"mats must be a list of 2-D matrices, got {type(mats).__name__}.")
    tensors = [as_matrices(m, name=f"mats[{i}]", allow_batch=False) for i, m in enumerate(mats)]
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((tuple(t.shape), t.dtype, t.device), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(tensors)
    for (_, _, home), idx in groups.items():
        stack = torch.stack([tensors[i] for i in idx])
        if device is not None:
            stack = stack.to(device)
        s = torch.linalg.svdvals(_tall(stack)).to(home)
        for j, i in enumerate(idx):
            out[i] = s[j]
    return out  # type: ignore[return-value]


def truncate(M, k: int, device=None) -> torch.Tensor:
    """Best rank-k approximation U_k diag(sigma_1..k) V_k^T of M (Eckart-Young), batched for 3-D.

    For k >= min(m, n) this is M itself. Computed on ``device`` if given, returned on M's device,
    in fp32 (fp64 for fp64 input).
    """
    X = as_matrices(M)
    k = positive_int(k, "k")
    home = X.device
    if k >= min(X.shape[-2:]):
        return X.clone()
    U, S, Vh = thin_svd(X, device=device)
    return ((U[..., :k] * S[..., None, :k]) @ Vh[..., :k, :]).to(home)


@torch.no_grad()
def spectra(deltas: Dict[str, torch.Tensor], device=None) -> Dict[str, torch.Tensor]:
    """Singular values of every ΔW by name, batched over matrices of one shape (on ``device`` if given)."""
    names = list(deltas)
    values = batched_singular_values([deltas[n].float() for n in names], device=device)
    return dict(zip(names, values))


@torch.no_grad()
def top_factors(M, k: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_k diag(σ_1..σ_k), V_kᵀ) from one thin SVD, on the CPU, so that trunc_j(M) = (U_k Σ_k)[:, :j] V_kᵀ[:j]
    for every j ≤ k without another decomposition (a run truncates each ΔW at several ranks). The matrix is
    decomposed as given (not through its transpose), so the factors match those of earlier versions bit for bit."""
    X = as_matrices(M, allow_batch=False)
    U, S, Vh = torch.linalg.svd(X.to(device) if device is not None else X, full_matrices=False)
    k = min(int(k), len(S))
    return (U[:, :k] * S[:k]).cpu(), Vh[:k].cpu()


@torch.no_grad()
def max_cosines(W_pre, W_ft, k: int, side: str = "left") -> tuple:
    """(max_i |cos(y_j, x_i)| for the top-k singular vectors y_j of W_ft against all singular vectors x_i of
    W_pre, and W_ft's thin SVD (U, S, Vh)). Singular vectors are unit-norm, so the cosine is an inner product.
    ``side``: left singular vectors (columns of U, as Shuttleworth et al.'s code) or right ones."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}.")
    W_pre = as_matrices(W_pre, "W_pre", allow_batch=False)
    W_ft = as_matrices(W_ft, "W_ft", allow_batch=False)
    if W_pre.shape != W_ft.shape:
        raise ValueError(f"W_pre and W_ft must have the same shape, got {tuple(W_pre.shape)} and {tuple(W_ft.shape)}.")
    k = positive_int(k, "k", min(W_pre.shape), "min(W.shape)")
    dtype = torch.promote_types(W_pre.dtype, W_ft.dtype)
    U0, _, Vh0 = thin_svd(W_pre.to(dtype))
    U1, S1, Vh1 = thin_svd(W_ft.to(W_pre.device, dtype))
    X, Y = (U0, U1[:, :k]) if side == "left" else (Vh0.mT, Vh1[:k].mT)
    return (Y.mT @ X).abs().max(dim=1).values, (U1, S1, Vh1)
