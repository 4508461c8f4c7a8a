"""Subspace measures between updates and weights (Hu et al. 2021 Sections 7.2-7.3;
Shuttleworth et al. 2024).

    subspace similarity   phi(U1, U2, i, j) = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j)  in [0, 1]
    amplification         ||U_r^T W V_r||_F with U_r, V_r the top-r left/right singular vectors of dW;
                          factor = ||dW||_F / ||U_r^T W V_r||_F
    intruder dimension    a top-k singular vector y_j of W_ft with max_i |cos(y_j, x_i)| < eps over
                          all singular vectors x_i of W_pre
    energy in a subspace  ||U^T dW||_F^2 / ||dW||_F^2 (columns), ||dW V||_F^2 / ||dW||_F^2 (rows)

Bases ("U") are n x r tensors with orthonormal columns. Inputs may be torch tensors or numpy arrays;
results are python floats, ints, dicts or torch tensors.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lora_study.linalg import (
    as_matrices,
    max_cosines,
    positive_int,
    singular_values,
    thin_svd,
)

DEFAULT_EPS_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _basis(U, name: str) -> torch.Tensor:
    """A 2-D tensor whose columns are orthonormal (checked to a tolerance suited to fp32)."""
    U = as_matrices(U, name, allow_batch=False)
    if U.shape[1] > U.shape[0]:
        raise ValueError(f"{name} must be n x r with r <= n orthonormal columns, got shape {tuple(U.shape)}.")
    gram = U.mT.to(torch.float64) @ U.to(torch.float64)
    if (gram - torch.eye(U.shape[1], dtype=torch.float64, device=U.device)).abs().max() > 1e-3:
        raise ValueError(f"{name} must have orthonormal columns (e.g. from top_singular_vectors).")
    return U


def top_singular_vectors(M, r: int, side: str = "right") -> torch.Tensor:
    """The top-r singular vectors of M as orthonormal columns.

    With M = U diag(s) V^T: side="left" gives U[:, :r] (m x r), side="right" gives V[:, :r] (n x r),
    the row space that Hu et al. compare between two A matrices.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}.")
    M = as_matrices(M, allow_batch=False)
    r = positive_int(r, "r", min(M.shape), "min(M.shape)")
    U, _, Vh = thin_svd(M)
    return (U[:, :r] if side == "left" else Vh[:r].mT).to(M.device)


def _pair(U1, U2) -> tuple[torch.Tensor, torch.Tensor]:
    U1, U2 = _basis(U1, "U1"), _basis(U2, "U2")
    if U1.shape[0] != U2.shape[0]:
        raise ValueError(f"U1 and U2 must live in the same space, got {U1.shape[0]} and {U2.shape[0]} rows.")
    dtype = torch.promote_types(U1.dtype, U2.dtype)
    return U1.to(dtype), U2.to(U1.device, dtype)


def subspace_similarity(U1, U2, i: int, j: int) -> float:
    """phi(U1, U2, i, j) = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j) (Hu et al. 2021, Section 7.2)."""
    U1, U2 = _pair(U1, U2)
    i = positive_int(i, "i", U1.shape[1], "U1.shape[1]")
    j = positive_int(j, "j", U2.shape[1], "U2.shape[1]")
    overlap = U1[:, :i].mT @ U2[:, :j]
    return float(overlap.square().sum()) / min(i, j)


def subspace_similarity_grid(U1, U2, imax: int | None = None, jmax: int | None = None) -> torch.Tensor:
    """All phi(U1, U2, i, j) for 1 <= i <= imax, 1 <= j <= jmax; entry [i-1, j-1] is phi(i, j).

    With O = U1^T U2, ||U1[:, :i]^T U2[:, :j]||_F^2 is the sum of O_ab^2 over a <= i, b <= j: one
    product and two cumulative sums instead of imax * jmax norms.
    """
    U1, U2 = _pair(U1, U2)
    imax = U1.shape[1] if imax is None else positive_int(imax, "imax", U1.shape[1], "U1.shape[1]")
    jmax = U2.shape[1] if jmax is None else positive_int(jmax, "jmax", U2.shape[1], "U2.shape[1]")
    sq = (U1[:, :imax].mT @ U2[:, :jmax]).square()
    cum = sq.cumsum(0).cumsum(1)
    i = torch.arange(1, imax + 1, dtype=cum.dtype, device=cum.device)
    j = torch.arange(1, jmax + 1, dtype=cum.dtype, device=cum.device)
    return cum / torch.minimum(i[:, None], j[None, :])


def random_orthonormal(n: int, r: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """An n x r basis spanning a uniformly random r-dimensional subspace (QR of a Gaussian matrix)."""
    return torch.linalg.qr(torch.randn(n, r, generator=generator, dtype=dtype)).Q


def random_subspace_control(n: int, r1: int, r2: int, seed: int = 0) -> torch.Tensor:
    """phi grid (r1 x r2) between two independent random subspaces of R^n: Hu et al.'s control.

    E||U1[:, :i]^T U2[:, :j]||_F^2 = i j / n, so the expected phi(i, j) is max(i, j) / n.
    """
    n = positive_int(n, "n")
    r1 = positive_int(r1, "r1", n, "n")
    r2 = positive_int(r2, "r2", n, "n")
    gen = torch.Generator().manual_seed(int(seed))
    return subspace_similarity_grid(random_orthonormal(n, r1, gen), random_orthonormal(n, r2, gen))


def amplification(W, dW, r: int, seed: int = 0) -> dict:
    """Hu et al. (2021) Section 7.3 / Table 7: how much of W lies in dW's top-r directions.

    With U_r (m x r), V_r (n x r) the top-r left/right singular vectors of dW:
      delta_dirs  = ||U_r^T W V_r||_F              (the paper's ||U^T W V^T||_F, V as r x n rows)
      w_dirs      = same with W's own top-r vectors = sqrt(sum_{i<=r} sigma_i(W)^2)
      random_dirs = same with a random orthonormal pair (seeded)
      dw_norm = ||dW||_F, w_norm = ||W||_F, factor = dw_norm / delta_dirs (inf if delta_dirs = 0).
    For r above rank(dW) the extra singular vectors of dW are an arbitrary basis of its null space.
    """
    W = as_matrices(W, "W", allow_batch=False)
    dW = as_matrices(dW, "dW", allow_batch=False)
    if W.shape != dW.shape:
        raise ValueError(f"W and dW must have the same shape, got {tuple(W.shape)} and {tuple(dW.shape)}.")
    r = positive_int(r, "r", min(W.shape), "min(W.shape)")
    dtype = torch.promote_types(W.dtype, dW.dtype)
    W, dW = W.to(dtype), dW.to(W.device, dtype)

    def projected(U, V) -> float:
        return float(torch.linalg.matrix_norm(U.mT @ W @ V))

    U, _, Vh = thin_svd(dW)
    delta_dirs = projected(U[:, :r], Vh[:r].mT)
    w_dirs = float(singular_values(W)[:r].to(torch.float64).square().sum().sqrt())
    gen = torch.Generator().manual_seed(int(seed))
    m, n = W.shape
    Ur = random_orthonormal(m, r, gen, dtype).to(W.device)
    Vr = random_orthonormal(n, r, gen, dtype).to(W.device)
    dw_norm = float(torch.linalg.matrix_norm(dW))
    return {
        "r": r,
        "delta_dirs": delta_dirs,
        "w_dirs": w_dirs,
        "random_dirs": projected(Ur, Vr),
        "dw_norm": dw_norm,
        "w_norm": float(torch.linalg.matrix_norm(W)),
        "factor": dw_norm / delta_dirs if delta_dirs > 0 else math.inf,
    }


def _max_cosines(W_pre, W_ft, k: int, side: str) -> torch.Tensor:
    """max_i |cos(y_j, x_i)| for the top-k singular vectors y_j of W_ft (x_i: all of W_pre's)."""
    return max_cosines(W_pre, W_ft, k, side)[0]


def _check_eps(eps) -> float:
    if not 0.0 < float(eps) <= 1.0:
        raise ValueError(f"eps must be in (0, 1], got {eps!r}.")
    return float(eps)


def intruder_counts(W_pre, W_ft, k: int = 10, eps_grid: Sequence[float] = DEFAULT_EPS_GRID,
                    side: str = "left") -> dict[float, int]:
    """Number of intruder dimensions among W_ft's top-k singular vectors, for each eps in eps_grid.

    y_j (j <= k) is an intruder when max_i |cos(y_j, x_i)| < eps over all singular vectors x_i of
    W_pre (thin SVD: min(m, n) of them). Left singular vectors by default, as Shuttleworth et al.'s
    code. Both SVDs are computed once for the whole grid.
    """
    grid = [_check_eps(e) for e in eps_grid]
    if not grid:
        raise ValueError("eps_grid must hold at least one threshold.")
    cos = _max_cosines(W_pre, W_ft, k, side)
    return {e: int((cos < e).sum()) for e in grid}


def intruder_dimensions(W_pre, W_ft, k: int = 10, eps: float = 0.5, side: str = "left") -> int:
    """Intruder count at one threshold eps (Shuttleworth et al. 2024; their code's default 0.5)."""
    return intruder_counts(W_pre, W_ft, k=k, eps_grid=(eps,), side=side)[_check_eps(eps)]


def energy_in_subspace(dW_full, U, V=None) -> dict:
    """Fraction of ||dW||_F^2 inside the column space of U and/or the row space of V.

    col  = ||U^T dW||_F^2 / ||dW||_F^2
    row  = ||dW V||_F^2 / ||dW||_F^2          (nan without V)
    both = ||U^T dW V||_F^2 / ||dW||_F^2      (nan without V)
    U (m x r) and V (n x s) have orthonormal columns; all three are nan for dW = 0.
    """
    dW = as_matrices(dW_full, "dW_full", allow_batch=False)
    U = _basis(U, "U")
    if U.shape[0] != dW.shape[0]:
        raise ValueError(f"U must have {dW.shape[0]} rows (dW_full's row count), got {U.shape[0]}.")
    dtype = torch.promote_types(dW.dtype, U.dtype)
    dW, U = dW.to(dtype), U.to(dW.device, dtype)
    total = float(dW.square().sum())
    out = {"col": math.nan, "row": math.nan, "both": math.nan}
    if V is not None:
        V = _basis(V, "V")
        if V.shape[0] != dW.shape[1]:
            raise ValueError(f"V must have {dW.shape[1]} rows (dW_full's column count), got {V.shape[0]}.")
        V = V.to(dW.device, dtype)
    if total == 0.0:
        return out
    left = U.mT @ dW
    out["col"] = float(left.square().sum()) / total
    if V is not None:
        out["row"] = float((dW @ V).square().sum()) / total
        out["both"] = float((left @ V).square().sum()) / total
    return out
