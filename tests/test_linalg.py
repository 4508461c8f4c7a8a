"""lora_study/linalg.py, the suite's one SVD module: exact, batched and randomized singular values against numpy,
the Eckart–Young truncation, the factors a run truncates with, the max-cosine of intruder dimensions, and the
errors a user can cause."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lora_study import linalg
from lora_study.linalg import batched_singular_values, randomized_singular_values, singular_values, truncate


def orthonormal(n: int, r: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64)).Q


def planted(m: int, n: int, k: int, noise: float, seed: int = 0) -> torch.Tensor:
    """Rank-k U V^T with random orthonormal factors and unit singular values, plus Gaussian noise."""
    gen = torch.Generator().manual_seed(seed + 1)
    return orthonormal(m, k, seed) @ orthonormal(n, k, seed + 7).T + noise * torch.randn(
        m, n, generator=gen, dtype=torch.float64)


def exact(M) -> np.ndarray:
    return np.linalg.svd(np.asarray(M, dtype=np.float64), compute_uv=False)


# ---- singular values -----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(50, 30), (30, 50), (40, 40)])
def test_singular_values_exact_fp32_and_numpy_input(shape):
    gen = torch.Generator().manual_seed(3)
    M = torch.randn(*shape, generator=gen)
    s = singular_values(M)
    assert s.dtype == torch.float32 and s.shape == (min(shape),)
    assert np.allclose(s.numpy(), exact(M), rtol=1e-5)
    assert np.allclose(singular_values(M.numpy().astype(np.float64)).numpy(), exact(M), rtol=1e-12)
    assert np.allclose(singular_values(M.half()).numpy(), exact(M.half().float()), rtol=1e-5)


def test_singular_values_batched_stack():
    gen = torch.Generator().manual_seed(4)
    stack = torch.randn(3, 20, 35, generator=gen, dtype=torch.float64)
    s = singular_values(stack)
    assert s.shape == (3, 20)
    for i in range(3):
        assert np.allclose(s[i].numpy(), exact(stack[i]), rtol=1e-12)
    assert np.allclose(singular_values(stack, k=4).numpy(), s[:, :4].numpy())


def test_batched_singular_values_groups_shapes_and_keeps_order():
    gen = torch.Generator().manual_seed(5)
    mats = [torch.randn(30, 20, generator=gen), torch.randn(20, 30, generator=gen),
            torch.randn(30, 20, generator=gen), torch.randn(10, 10, generator=gen).numpy(),
            torch.randn(30, 20, generator=gen, dtype=torch.float64)]
    out = batched_singular_values(mats)
    assert len(out) == len(mats)
    for M, s in zip(mats, out):
        assert s.shape == (min(M.shape),)
        assert np.allclose(s.numpy(), exact(M), rtol=1e-5)
    assert out[4].dtype == torch.float64 and out[0].dtype == torch.float32


def test_randomized_top_k_matches_exact_on_gaussian():
    # a flat Gaussian spectrum: plain subspace iteration (torch.svd_lowrank, niter=2) misses 1e-3 here
    gen = torch.Generator().manual_seed(6)
    M = torch.randn(900, 700, generator=gen)
    ref = exact(M)[:24]
    s = randomized_singular_values(M, 24).numpy()
    assert s.shape == (24,)
    assert np.max(np.abs(s - ref) / ref) < 1e-3
    assert np.all(s <= ref * (1 + 1e-5))  # Rayleigh-Ritz values never exceed the exact ones
    assert np.array_equal(s, randomized_singular_values(M, 24).numpy())  # seeded


def test_randomized_top_k_matches_exact_on_low_rank_plus_noise_wide_and_batched():
    M = planted(300, 500, 20, noise=1e-2, seed=8).float() * torch.linspace(3, 1, 500)  # wide, uneven spectrum
    ref = exact(M)[:16]
    s = randomized_singular_values(M, 16, n_iter=2).numpy()
    assert np.max(np.abs(s - ref) / ref) < 1e-3
    stack = torch.stack([M, M.flip(0) * 2])
    sb = randomized_singular_values(stack, 16).numpy()
    assert np.max(np.abs(sb[0] - ref) / ref) < 1e-3 and np.max(np.abs(sb[1] - 2 * ref) / ref) < 2e-3


def test_singular_values_with_small_k_takes_the_randomized_path(monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[1])
        return randomized_singular_values(*args, **kwargs)

    monkeypatch.setattr(linalg, "randomized_singular_values", spy)
    gen = torch.Generator().manual_seed(9)
    M = torch.randn(1100, 1024, generator=gen)
    s = singular_values(M, k=8)
    assert calls == [8] and s.shape == (8,)
    ref = exact(M)[:8]
    assert np.max(np.abs(s.numpy() - ref) / ref) < 1e-3
    small = torch.randn(60, 40, generator=gen)
    assert np.allclose(singular_values(small, k=30).numpy(), exact(small)[:30], rtol=1e-5)
    assert calls == [8]  # k not small relative to min(shape): exact path


# ---- truncation ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(60, 40), (40, 60)])
def test_truncate_is_the_eckart_young_best_rank_k(shape):
    gen = torch.Generator().manual_seed(10)
    M = torch.randn(*shape, generator=gen, dtype=torch.float64)
    s = exact(M)
    T = truncate(M, 5)
    assert T.shape == M.shape
    assert torch.linalg.matrix_rank(T).item() == 5
    assert float(torch.linalg.matrix_norm(M - T)) == pytest.approx(math.sqrt(np.sum(s[5:] ** 2)), rel=1e-10)
    assert np.allclose(exact(T)[:5], s[:5], rtol=1e-10)
    # any other rank-5 matrix does worse, e.g. projecting onto a random 5-dim column space
    Q = orthonormal(shape[0], 5, 11)
    assert float(torch.linalg.matrix_norm(M - Q @ (Q.T @ M))) > float(torch.linalg.matrix_norm(M - T))
    assert torch.equal(truncate(M, 100), M)


# ---- errors a user can cause -------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: singular_values(torch.ones(5)), "2-D"),
    (lambda: singular_values(torch.ones(2, 3, 4, 5)), "2-D"),
    (lambda: singular_values(torch.ones(4, 3), k=0), "positive integer"),
    (lambda: singular_values(torch.ones(4, 3), k=4), "at most"),
    (lambda: singular_values([[1.0, 2.0]]), "torch tensor or numpy"),
    (lambda: singular_values(torch.ones(3, 3, dtype=torch.complex64)), "real"),
    (lambda: truncate(torch.ones(4, 3), -1), "positive integer"),
    (lambda: batched_singular_values(torch.ones(2, 3, 3)), "list"),
    (lambda: batched_singular_values([torch.ones(3, 3), torch.ones(3)]), r"mats\[1\]"),
])
def test_bad_input_raises_one_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
