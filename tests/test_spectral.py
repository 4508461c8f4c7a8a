"""analysis/spectral.py, the spectral measures: known answers and planted ranks (the decompositions they rest on,
``lora_study.linalg``, are tests/test_linalg.py's)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import exact, orthonormal, planted
from lora_study.analysis.spectral import effective_rank, energy_captured, rank_at_energy, spectrum_row, stable_rank
from lora_study.linalg import singular_values


# ---- known answers ---------------------------------------------------------------------------

def test_effective_and_stable_rank_known_answers():
    assert effective_rank([1.0, 1.0, 1.0, 1.0]) == pytest.approx(4.0, abs=1e-12)
    assert stable_rank([1.0, 1.0, 1.0, 1.0]) == pytest.approx(4.0, abs=1e-12)
    # s = [2, 1]: p = [2/3, 1/3] (sigma, not sigma^2), H = ln 3 - (2/3) ln 2
    assert effective_rank([2.0, 1.0]) == pytest.approx(math.exp(math.log(3) - 2 / 3 * math.log(2)), rel=1e-12)
    assert effective_rank([2.0, 1.0]) == pytest.approx(1.8899, abs=1e-4)
    assert stable_rank([2.0, 1.0]) == pytest.approx(1.25, abs=1e-12)
    # zeros are ignored by the entropy, and order does not matter
    assert effective_rank([0.0, 1.0, 0.0, 1.0]) == pytest.approx(2.0, abs=1e-12)
    assert stable_rank([1.0, 2.0]) == pytest.approx(1.25, abs=1e-12)


def test_energy_captured_and_rank_at_energy_known_answers():
    s = [3.0, 2.0, 1.0]  # energies 9, 4, 1 of 14
    assert energy_captured(s, 1) == pytest.approx(9 / 14)
    assert energy_captured(s, 2) == pytest.approx(13 / 14)
    assert energy_captured(s, 3) == pytest.approx(1.0)
    assert energy_captured(s, 10) == pytest.approx(1.0)
    assert energy_captured([1.0, 2.0, 3.0], 1) == pytest.approx(9 / 14)
    assert rank_at_energy(s, 0.5) == 1
    assert rank_at_energy(s, 0.9) == 2
    assert rank_at_energy(s, 0.95) == 3
    assert rank_at_energy(s, 1.0) == 3
    assert rank_at_energy([1.0, 1.0, 1.0, 1.0], 0.5) == 2  # exactly reaching frac counts
    assert rank_at_energy([0.0, 0.0], 0.9) == 0
    assert math.isnan(energy_captured([0.0, 0.0], 1))


def test_zero_spectra_and_edge_values():
    # an all-zero spectrum (a rank-0 matrix): no rank, no entropy; a zero after σ1 does not count
    assert effective_rank([0.0, 0.0]) == 0.0 and stable_rank([0.0, 0.0]) == 0.0 and rank_at_energy([0.0], 0.5) == 0
    assert stable_rank([2.0, 0.0]) == 1.0 and effective_rank([2.0, 0.0]) == 1.0 and stable_rank([3.0]) == 1.0
    assert effective_rank([0.5, 0.5]) == pytest.approx(2.0, abs=1e-12)  # Σσ = 1 is not the zero case
    assert rank_at_energy([3.0, 1.0]) == 1  # the default threshold is 90 %: E(1) = 0.9 exactly
    assert rank_at_energy([3.0, 1.0], 0.9) == 1 and rank_at_energy([3.0, 1.0], 0.9000001) == 2


def test_computed_in_float64_whatever_the_input():
    """Lists and fp32 tensors are computed in fp64 (results to ~1e-16, not fp32's ~1e-7)."""
    # a list: 0.1 is not 0.1f, which would give 9 / 9.0100000003 (3e-11 away)
    assert energy_captured([3.0, 0.1], 1) == pytest.approx(9 / 9.01, rel=1e-14)
    assert abs(9 / 9.01 - 9 / (9 + float(np.float32(0.1)) ** 2)) > 1e-11  # so the check above can tell them apart
    # an fp32 tensor: its values taken exactly and squared and summed in fp64
    x = torch.tensor([3.0, 0.1], dtype=torch.float32)
    exact = (9.0 + float(x[1]) ** 2) / 9.0
    assert stable_rank(x) == pytest.approx(exact, rel=1e-15)
    assert abs(exact - float((x.square().sum() / x[0].square()))) > 1e-9
    # the threshold too: E(1) = 0.89999999 lies below 0.9 but above 0.9 in fp32 (0.8999999762)
    assert rank_at_energy([math.sqrt(0.89999999), math.sqrt(0.10000001)], 0.9) == 2


def test_spectrum_row():
    row = spectrum_row(torch.tensor([2.0, 1.0]))
    assert row["rank90"] == 2 and row["rank99"] == 2 and row["n"] == 2
    assert row["frob"] == pytest.approx(math.sqrt(5))
    assert row["sigma1"] == pytest.approx(2.0)
    assert row["stable_rank"] == pytest.approx(1.25)
    assert row["effective_rank"] == pytest.approx(effective_rank([2.0, 1.0]))
    row = spectrum_row(np.array([10.0] + [0.1] * 50))  # 100 of 100.5 in sigma_1
    assert row["rank90"] == 1 and row["rank99"] == 1
    row = spectrum_row([10.0, 3.0, 1.0])  # energies 100, 9, 1 of 110: E(1) = 0.909, E(2) = 0.991
    assert (row["rank90"], row["rank99"], row["n"]) == (1, 2, 3)


# ---- planted ranks -----------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 3, 5])
def test_planted_rank_k_is_measured_as_rank_k(k):
    M = planted(120, 80, k, noise=1e-3, seed=k)
    s = singular_values(M)
    assert np.allclose(s.numpy(), exact(M), rtol=1e-10, atol=1e-12)
    assert rank_at_energy(s, 0.9) == k
    assert rank_at_energy(s, 0.99) == k
    assert stable_rank(s) == pytest.approx(k, rel=0.01)
    # the entropy weights sigma (not sigma^2), so a noise floor of ~80 values counts: at 1e-3 it
    # adds about 0.6 ranks; at 1e-6 the effective rank is k
    assert effective_rank(s) > k + 0.3
    quiet = singular_values(planted(120, 80, k, noise=1e-6, seed=k))
    assert effective_rank(quiet) == pytest.approx(k, rel=0.02)
    assert effective_rank(quiet[:k]) == pytest.approx(k, rel=1e-6)


# ---- errors a user can cause -------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: energy_captured([1.0, 2.0], 0), r"^k must be a positive integer, got 0\.$"),
    (lambda: energy_captured("1 2", 1), r"^s must be a torch tensor or numpy array, got str\.$"),
    (lambda: effective_rank(torch.ones(2, dtype=torch.complex64)), r"^s must be real, got dtype torch\.complex64\.$"),
    (lambda: rank_at_energy([1.0, 2.0], 0.0), r"^frac must be in \(0, 1\], got 0\.0\.$"),
    (lambda: rank_at_energy([1.0, 2.0], 1.5), r"^frac must be in \(0, 1\], got 1\.5\.$"),
    (lambda: effective_rank([1.0, -1.0]), r"^s must hold finite, non-negative singular values\.$"),
    (lambda: effective_rank([1.0, float("nan")]), r"^s must hold finite, non-negative singular values\.$"),
    (lambda: stable_rank(torch.ones(2, 2)), r"^s must be a non-empty 1-D array of singular values, got shape \(2, 2\)\.$"),
    (lambda: stable_rank([]), r"^s must be a non-empty 1-D array of singular values, got shape \(0,\)\.$"),
])
def test_bad_input_raises_one_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
