"""Spectral measures of one matrix (energy, Roy & Vetterli 2007 effective rank, stable rank).

With singular values sigma_1 >= sigma_2 >= ... >= 0 of a matrix M:

    energy captured by the top k    E(k) = sum_{i<=k} sigma_i^2 / sum_i sigma_i^2
    rank at energy f                min { k : E(k) >= f }                       (1-based)
    effective rank (Roy & Vetterli) exp(-sum_i p_i log p_i),  p_i = sigma_i / sum_j sigma_j
    stable rank                     ||M||_F^2 / ||M||_2^2 = sum_i sigma_i^2 / sigma_1^2

The decompositions themselves (exact, batched, randomized, truncation) are ``lora_study.linalg``'s.

Spectra may be torch tensors, numpy arrays or lists; scalars come back as python floats.
"""
from __future__ import annotations

import math

import torch

from lora_study.linalg import as_float_tensor, positive_int


def _spectrum(s) -> torch.Tensor:
    """A 1-D spectrum (tensor, array or list) as fp64, sorted descending; finite and >= 0."""
    if isinstance(s, (list, tuple)):
        s = torch.tensor(s, dtype=torch.float64)
    s = as_float_tensor(s, "s").detach().to("cpu", torch.float64)
    if s.ndim != 1 or s.numel() == 0:
        raise ValueError(f"s must be a non-empty 1-D array of singular values, got shape {tuple(s.shape)}.")
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ValueError("s must hold finite, non-negative singular values.")
    return torch.sort(s, descending=True).values


def energy_captured(s, k: int) -> float:
    """E(k) = sum_{i<=k} sigma_i^2 / sum_i sigma_i^2 (1.0 for k >= len(s); nan for an all-zero s)."""
    s = _spectrum(s)
    k = positive_int(k, "k")
    e = s.square()
    total = float(e.sum())
    if total == 0.0:
        return math.nan
    return float(e[:k].sum()) / total


def rank_at_energy(s, frac: float = 0.9) -> int:
    """Smallest k (1-based) with E(k) >= frac, for 0 < frac <= 1; 0 for an all-zero spectrum."""
    if not 0.0 < float(frac) <= 1.0:
        raise ValueError(f"frac must be in (0, 1], got {frac!r}.")
    s = _spectrum(s)
    e = s.square()
    total = e.sum()
    if float(total) == 0.0:
        return 0
    cum = torch.cumsum(e, 0) / total
    cum[-1] = 1.0  # rounding must not leave frac = 1 unreachable
    return int(torch.searchsorted(cum, torch.tensor([float(frac)], dtype=cum.dtype)).item()) + 1


def effective_rank(s) -> float:
    """Roy & Vetterli (2007): exp(-sum_i p_i log p_i), p_i = sigma_i / sum_j sigma_j (zeros ignored).

    Lies in [1, rank]; 0.0 for an all-zero spectrum (a rank-0 matrix).
    """
    s = _spectrum(s)
    total = s.sum()
    if float(total) == 0.0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * torch.log(p)).sum()))


def stable_rank(s) -> float:
    """sum_i sigma_i^2 / sigma_1^2 = ||M||_F^2 / ||M||_2^2; 0.0 for an all-zero spectrum."""
    s = _spectrum(s)
    if float(s[0]) == 0.0:
        return 0.0
    return float(s.square().sum() / s[0].square())


def spectrum_row(s) -> dict:
    """Summary of one spectrum: rank90, rank99, effective_rank, stable_rank, frob, sigma1, n."""
    s = _spectrum(s)
    return {
        "rank90": rank_at_energy(s, 0.9),
        "rank99": rank_at_energy(s, 0.99),
        "effective_rank": effective_rank(s),
        "stable_rank": stable_rank(s),
        "frob": float(s.square().sum().sqrt()),
        "sigma1": float(s[0]),
        "n": int(s.numel()),
    }
