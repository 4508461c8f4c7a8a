"""lora_study/linalg.py, the suite's one SVD module: exact, batched and randomized singular values against numpy,
the Eckart–Young truncation, the factors a run truncates with, the max-cosine of intruder dimensions, and the
errors a user can cause."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import exact, orthonormal, planted
from lora_study import linalg
from lora_study.linalg import (as_float_tensor, batched_singular_values, max_cosines, positive_int,
                               randomized_singular_values, singular_values, spectra, thin_svd, top_factors, truncate)


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


# ---- thin SVD, the factors a run truncates with, the max-cosine of intruders ------------------------

@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (5, 5)])
def test_thin_svd_is_thin_orthonormal_and_reconstructs(shape):
    gen = torch.Generator().manual_seed(30)
    M = torch.randn(*shape, generator=gen, dtype=torch.float64)
    U, S, Vh = thin_svd(M, device="cpu")
    p = min(shape)
    assert U.shape == (shape[0], p) and S.shape == (p,) and Vh.shape == (p, shape[1])
    assert torch.allclose(U.T @ U, torch.eye(p, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(Vh @ Vh.T, torch.eye(p, dtype=torch.float64), atol=1e-12)
    assert torch.allclose((U * S) @ Vh, M, atol=1e-12) and bool((S[:-1] >= S[1:]).all())
    stack = torch.stack([M, 2 * M])  # batched, wide or tall
    Ub, Sb, Vhb = thin_svd(stack)
    assert Ub.shape == (2, shape[0], p) and torch.allclose((Ub * Sb[:, None, :]) @ Vhb, stack, atol=1e-12)


def test_top_factors_give_every_truncation_from_one_decomposition():
    gen = torch.Generator().manual_seed(31)
    M = torch.randn(9, 6, generator=gen, dtype=torch.float64)
    us, vh = top_factors(M, 4, device="cpu")
    assert us.shape == (9, 4) and vh.shape == (4, 6)
    for j in range(1, 5):
        assert torch.allclose(us[:, :j] @ vh[:j], truncate(M, j), atol=1e-12)
    # the matrix is decomposed as given (not through its transpose): the factors are torch's, bit for bit
    W = M.T  # wide
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    us, vh = top_factors(W, 3)
    assert torch.equal(us, U[:, :3] * S[:3]) and torch.equal(vh, Vh[:3])
    us, vh = top_factors(M, 50)  # more than its rank: all of it
    assert us.shape == (9, 6) and torch.allclose(us @ vh, M, atol=1e-12)


def test_max_cosines_known_answers():
    # W_pre = diag(3, 2, 1) in R^{4x3}; W_ft turns its top left direction by 60 degrees towards e3 (outside W_pre's
    # column space) and keeps the others: top-1 cos 0.5, the next two cos 1
    W_pre = torch.zeros(4, 3, dtype=torch.float64)
    W_pre[0, 0], W_pre[1, 1], W_pre[2, 2] = 3.0, 2.0, 1.0
    W_ft = W_pre.clone()
    W_ft[0, 0], W_ft[3, 0] = 3.0 * 0.5, 3.0 * math.sqrt(3) / 2
    cos, (U1, S1, Vh1) = max_cosines(W_pre, W_ft, 3)
    assert cos.tolist() == pytest.approx([0.5, 1.0, 1.0], abs=1e-12)
    assert S1.tolist() == pytest.approx([3.0, 2.0, 1.0], abs=1e-12) and U1.shape == (4, 3) and Vh1.shape == (3, 3)
    # on the right the turned direction is still f0: nothing moved
    assert max_cosines(W_pre, W_ft, 3, side="right")[0].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
    assert max_cosines(W_pre.float(), W_ft, 1)[0].dtype == torch.float64  # promoted to the wider type
    assert max_cosines(W_pre, W_ft, 2)[0].shape == (2,)


def test_spectra_of_named_deltas_keep_names_order_and_values():
    gen = torch.Generator().manual_seed(32)
    deltas = {"b.value": torch.randn(6, 4, generator=gen), "a.query": torch.randn(6, 4, generator=gen).half(),
              "c.out": torch.randn(3, 5, generator=gen)}
    out = spectra(deltas, device="cpu")
    assert list(out) == ["b.value", "a.query", "c.out"]
    for name, d in deltas.items():
        assert out[name].dtype == torch.float32 and np.allclose(out[name].numpy(), exact(d.float()), rtol=1e-5)


def test_inputs_become_float_tensors():
    assert as_float_tensor(torch.ones(2, 2, dtype=torch.int64)).dtype == torch.float32
    assert as_float_tensor(torch.ones(2, 2, dtype=torch.float16)).dtype == torch.float32
    assert as_float_tensor(np.ones((2, 2))).dtype == torch.float64
    assert as_float_tensor(np.ones((3, 4))[:, ::2]).shape == (3, 2)  # non-contiguous numpy views
    assert singular_values(torch.ones(1, 3)).tolist() == pytest.approx([math.sqrt(3)])  # a single row is a matrix
    assert singular_values(np.ones((3, 1))).tolist() == pytest.approx([math.sqrt(3)])


def test_integer_arguments_at_their_bounds():
    assert positive_int(np.int64(2), "k") == 2 and type(positive_int(np.int64(2), "k")) is int
    assert positive_int(0, "n", minimum=0) == 0 and positive_int(3, "k", 3, "n") == 3  # both bounds included
    M = torch.randn(12, 8, generator=torch.Generator().manual_seed(33), dtype=torch.float64)
    ref = exact(M)
    assert np.allclose(singular_values(M, k=8).numpy(), ref, rtol=1e-12)  # k = min(shape) is allowed
    s = randomized_singular_values(M, 3, oversample=0, n_iter=0)  # no oversampling, no iteration: still valid
    assert s.shape == (3,) and np.all(s.numpy() <= ref[:3] * (1 + 1e-12))


def test_randomized_fills_the_whole_space_when_it_can_and_is_then_exact():
    # b = 40 columns, q = k + oversample = 10: four blocks span R^40, so the Rayleigh-Ritz values are exact
    M = torch.randn(200, 40, generator=torch.Generator().manual_seed(34), dtype=torch.float64)
    s = randomized_singular_values(M, 4, oversample=6, n_iter=12)
    assert np.allclose(s.numpy(), exact(M)[:4], rtol=1e-12)
    # fp64 in, fp64 out, and the default seed is 0
    assert s.dtype == torch.float64
    assert torch.equal(randomized_singular_values(M, 4, oversample=6, n_iter=1),
                       randomized_singular_values(M, 4, oversample=6, n_iter=1, seed=0))


def test_singular_values_passes_its_seed_and_device_to_the_randomized_path():
    M = torch.randn(1200, 1000, generator=torch.Generator().manual_seed(35))
    a = singular_values(M, k=4, seed=3, device="cpu")
    assert torch.equal(a, randomized_singular_values(M, 4, seed=3))
    assert not torch.equal(a, randomized_singular_values(M, 4, seed=0))
    assert torch.equal(singular_values(M, k=4), randomized_singular_values(M, 4, seed=0))


def test_randomized_path_starts_exactly_where_its_krylov_space_is_a_third_of_the_matrix(monkeypatch):
    # (k + 16) x 13 <= n / 3: with k = 8 the randomized path starts at n = 936
    calls = []
    real = linalg.randomized_singular_values
    monkeypatch.setattr(linalg, "randomized_singular_values", lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
    gen = torch.Generator().manual_seed(36)
    singular_values(torch.randn(940, 936, generator=gen), k=8)
    assert calls == [8]
    singular_values(torch.randn(940, 935, generator=gen), k=8)
    assert calls == [8]


def test_device_argument_on_the_cpu():
    gen = torch.Generator().manual_seed(37)
    M = torch.randn(30, 20, generator=gen, dtype=torch.float64)
    ref = exact(M)
    assert np.allclose(singular_values(M, device="cpu").numpy(), ref, rtol=1e-12)
    assert np.allclose(batched_singular_values([M, M.T], device="cpu")[1].numpy(), ref, rtol=1e-12)
    assert torch.equal(randomized_singular_values(M, 3, device="cpu"), randomized_singular_values(M, 3))
    assert torch.allclose(truncate(M, 2, device="cpu"), truncate(M, 2), atol=1e-12)


def test_truncate_at_and_above_full_rank_and_batched():
    gen = torch.Generator().manual_seed(38)
    M = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    same = truncate(M, 4)  # k = min(shape): M itself, as a copy
    assert torch.equal(same, M) and same is not M
    same[0, 0] = 99.0
    assert M[0, 0] != 99.0
    stack = torch.randn(2, 6, 5, generator=gen, dtype=torch.float64)  # fewer matrices than k
    T = truncate(stack, 3)
    assert [int(torch.linalg.matrix_rank(t)) for t in T] == [3, 3]
    assert torch.allclose(T[1], truncate(stack[1], 3), atol=1e-12)
    assert truncate(M.half(), 2).dtype == torch.float32


# ---- errors a user can cause: one sentence naming the value and what is valid ----------------------

@pytest.mark.parametrize("call, message", [
    (lambda: singular_values(torch.ones(5)), "M must be a 2-D matrix or a 3-D stack of matrices, got shape (5,)."),
    (lambda: singular_values(torch.ones(2, 3, 4, 5)), "M must be a 2-D matrix or a 3-D stack of matrices, got shape (2, 3, 4, 5)."),
    (lambda: singular_values(torch.ones(0, 3)), "M must have non-empty dimensions, got shape (0, 3)."),
    (lambda: singular_values(torch.ones(3, 0)), "M must have non-empty dimensions, got shape (3, 0)."),
    (lambda: singular_values(torch.ones(4, 3), k=0), "k must be a positive integer, got 0."),
    (lambda: singular_values(torch.ones(4, 3), k=True), "k must be a positive integer, got True."),
    (lambda: singular_values(torch.ones(4, 3), k=2.0), "k must be a positive integer, got 2.0."),
    (lambda: singular_values(torch.ones(4, 3), k=4), "k must be at most min(M.shape) = 3, got 4."),
    (lambda: singular_values([[1.0, 2.0]]), "M must be a torch tensor or numpy array, got list."),
    (lambda: singular_values(torch.ones(3, 3, dtype=torch.complex64)), "M must be real, got dtype torch.complex64."),
    (lambda: randomized_singular_values(torch.ones(4, 3), 4), "k must be at most min(M.shape) = 3, got 4."),
    (lambda: randomized_singular_values(torch.ones(4, 3), 1, oversample=-1), "oversample must be a non-negative integer, got -1."),
    (lambda: randomized_singular_values(torch.ones(4, 3), 1, n_iter=-1), "n_iter must be a non-negative integer, got -1."),
    (lambda: positive_int(1, "x", minimum=2), "x must be an integer >= 2, got 1."),
    (lambda: thin_svd(torch.ones(3)), "M must be a 2-D matrix or a 3-D stack of matrices, got shape (3,)."),
    (lambda: top_factors(torch.ones(2, 3, 3), 1), "M must be a 2-D matrix, got shape (2, 3, 3)."),
    (lambda: truncate(torch.ones(4, 3), -1), "k must be a positive integer, got -1."),
    (lambda: batched_singular_values(torch.ones(2, 3, 3)), "mats must be a list of 2-D matrices, got Tensor."),
    (lambda: batched_singular_values(np.ones((2, 3, 3))), "mats must be a list of 2-D matrices, got ndarray."),
    (lambda: batched_singular_values({"a": torch.ones(2, 2)}), "mats must be a list of 2-D matrices, got dict."),
    (lambda: batched_singular_values([torch.ones(3, 3), torch.ones(3)]), "mats[1] must be a 2-D matrix, got shape (3,)."),
    (lambda: batched_singular_values([torch.ones(2, 3, 3)]), "mats[0] must be a 2-D matrix, got shape (2, 3, 3)."),
    (lambda: max_cosines(torch.ones(4, 3), torch.ones(4, 3), 1, side="up"), "side must be 'left' or 'right', got 'up'."),
    (lambda: max_cosines(torch.ones(4, 3), torch.ones(3, 4), 1), "W_pre and W_ft must have the same shape, got (4, 3) and (3, 4)."),
    (lambda: max_cosines(torch.ones(2, 4, 3), torch.ones(4, 3), 1), "W_pre must be a 2-D matrix, got shape (2, 4, 3)."),
    (lambda: max_cosines(torch.ones(4, 3), torch.ones(4, 3), 4), "k must be at most min(W.shape) = 3, got 4."),
])
def test_bad_input_raises_one_clear_value_error(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value) == message
