"""analysis/subspace.py: subspace similarity, amplification, intruder dimensions, energy in a subspace."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lora_study.analysis.subspace import (amplification, energy_in_subspace, intruder_counts, intruder_dimensions,
                               random_subspace_control, subspace_similarity, subspace_similarity_grid,
                               top_singular_vectors)


def orthonormal(n: int, r: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64)).Q


def basis(n: int, *idx: int) -> torch.Tensor:
    """Columns e_idx of the n x n identity."""
    return torch.eye(n, dtype=torch.float64)[:, list(idx)]


# ---- subspace similarity (Hu et al. Section 7.2) --------------------------------------------

def test_phi_known_answers():
    U1 = basis(4, 0, 1)
    U2 = torch.stack([torch.tensor([1.0, 1.0, 0, 0]) / math.sqrt(2), torch.tensor([0, 0, 1.0, 0])], 1).double()
    assert subspace_similarity(U1, U2, 1, 1) == pytest.approx(0.5)
    assert subspace_similarity(U1, U2, 2, 1) == pytest.approx(1.0)
    assert subspace_similarity(U1, U2, 1, 2) == pytest.approx(0.5)
    assert subspace_similarity(U1, U2, 2, 2) == pytest.approx(0.5)
    assert subspace_similarity(basis(8, 0, 1, 2, 3), basis(8, 4, 5, 6, 7), 4, 4) == 0.0


def test_phi_of_a_subspace_with_itself_is_one():
    U = orthonormal(50, 8, seed=0)
    for i in range(1, 9):
        assert subspace_similarity(U, U, i, i) == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(subspace_similarity_grid(U, U), torch.ones(8, 8, dtype=torch.float64), atol=1e-12)


def test_grid_equals_the_direct_formula():
    U1 = orthonormal(40, 6, seed=1)
    # U2 shares two (rotated) directions with U1, so the grid is far from constant
    mix = torch.cat([U1[:, :3] @ orthonormal(3, 2, seed=2), orthonormal(40, 7, seed=3)], 1)
    U2 = torch.linalg.qr(mix).Q
    grid = subspace_similarity_grid(U1, U2)
    assert grid.shape == (6, 9)
    for i in range(1, 7):
        for j in range(1, 10):
            direct = float(torch.linalg.matrix_norm(U1[:, :i].T @ U2[:, :j]) ** 2) / min(i, j)
            assert grid[i - 1, j - 1].item() == pytest.approx(direct, rel=1e-10, abs=1e-14)
            assert subspace_similarity(U1, U2, i, j) == pytest.approx(direct, rel=1e-10, abs=1e-14)
    assert grid.max() > 0.3 and grid.min() < 0.2
    assert subspace_similarity_grid(U1, U2, 2, 3).shape == (2, 3)


def test_random_subspaces_share_about_max_i_j_over_n():
    n, r = 500, 32
    grid = random_subspace_control(n, r, r, seed=0)
    i = torch.arange(1, r + 1, dtype=torch.float64)
    expected = torch.maximum(i[:, None], i[None, :]) / n
    assert grid[-1, -1].item() == pytest.approx(r / n, rel=0.25)
    assert (grid / expected).mean().item() == pytest.approx(1.0, rel=0.15)
    assert grid.max() < 0.2  # nothing like a shared direction
    assert torch.equal(grid, random_subspace_control(n, r, r, seed=0))
    assert not torch.equal(grid, random_subspace_control(n, r, r, seed=1))


def test_top_singular_vectors_recover_planted_factors():
    U, V = orthonormal(30, 3, seed=4), orthonormal(20, 3, seed=5)
    M = (U * torch.tensor([5.0, 3.0, 1.0], dtype=torch.float64)) @ V.T
    for side, ref in (("left", U), ("right", V)):
        got = top_singular_vectors(M, 3, side=side)
        assert got.shape == ref.shape
        assert torch.allclose((got * ref).sum(0).abs(), torch.ones(3, dtype=torch.float64), atol=1e-10)
    got = top_singular_vectors(M.T, 2, side="right")  # wide input: right vectors of M^T are U
    assert torch.allclose((got * U[:, :2]).sum(0).abs(), torch.ones(2, dtype=torch.float64), atol=1e-10)


# ---- amplification (Hu et al. Section 7.3) ---------------------------------------------------

def test_amplification_on_a_hand_built_example():
    d = [10.0, 5.0, 3.0, 1.0, 0.5, 0.2]
    W = torch.zeros(6, 8, dtype=torch.float64)
    W[range(6), range(6)] = torch.tensor(d, dtype=torch.float64)
    # dW = 2 e3 f3^T + 1 e4 f4^T lives where W is small: U^T W V = diag(1, 0.5)
    dW = torch.zeros(6, 8, dtype=torch.float64)
    dW[3, 3], dW[4, 4] = 2.0, 1.0
    out = amplification(W, dW, r=2)
    assert out["delta_dirs"] == pytest.approx(math.sqrt(1.25), rel=1e-12)
    assert out["w_dirs"] == pytest.approx(math.sqrt(125.0), rel=1e-12)
    assert out["dw_norm"] == pytest.approx(math.sqrt(5.0), rel=1e-12)
    assert out["w_norm"] == pytest.approx(math.sqrt(sum(x * x for x in d)), rel=1e-12)
    assert out["factor"] == pytest.approx(2.0, rel=1e-12)
    assert 0 < out["random_dirs"] < out["w_dirs"]


def test_amplification_uses_left_vectors_on_the_left():
    # rank-1 dW = 3 e0 f2^T: U^T W V picks W[0, 2] (= 4), not W[2, 0] (= 0)
    W = torch.zeros(5, 7, dtype=torch.float64)
    W[range(5), range(5)] = 1.0
    W[0, 2] = 4.0
    dW = torch.zeros(5, 7, dtype=torch.float64)
    dW[0, 2] = 3.0
    out = amplification(W.numpy(), dW.numpy(), r=1)
    assert out["delta_dirs"] == pytest.approx(4.0, rel=1e-12)
    assert out["factor"] == pytest.approx(0.75, rel=1e-12)
    assert out["w_dirs"] == pytest.approx(np.linalg.svd(W.numpy(), compute_uv=False)[0], rel=1e-12)


def test_amplification_random_directions_average_r2_w2_over_mn():
    gen = torch.Generator().manual_seed(6)
    m, n, r = 40, 30, 3
    W = torch.randn(m, n, generator=gen, dtype=torch.float64)
    dW = torch.randn(m, n, generator=gen, dtype=torch.float64)
    sq = [amplification(W, dW, r, seed=s)["random_dirs"] ** 2 for s in range(200)]
    # E ||U^T W V||_F^2 = r^2 ||W||_F^2 / (m n) for independent uniformly random U, V
    expected = r * r * float(W.square().sum()) / (m * n)
    assert np.mean(sq) == pytest.approx(expected, rel=0.15)
    assert amplification(W, dW, r, seed=1)["random_dirs"] == amplification(W, dW, r, seed=1)["random_dirs"]


# ---- intruder dimensions (Shuttleworth et al. 2024) -------------------------------------------

def tall_pre(m: int = 96, n: int = 48, seed: int = 7):
    """W_pre (m x n, m > n, distinct singular values) and a unit vector y outside its column space."""
    Q = orthonormal(m, n + 1, seed)
    V = orthonormal(n, n, seed + 1)
    s = torch.linspace(10.0, 1.0, n, dtype=torch.float64)
    return (Q[:, :n] * s) @ V.T, Q[:, n], V


def test_no_intruders_for_a_tiny_perturbation():
    W_pre, _, _ = tall_pre()
    gen = torch.Generator().manual_seed(8)
    W_ft = W_pre + 1e-4 * torch.randn(*W_pre.shape, generator=gen, dtype=torch.float64)
    assert set(intruder_counts(W_pre, W_ft).values()) == {0}
    assert set(intruder_counts(W_pre, W_ft, side="right").values()) == {0}
    # signs of singular vectors are arbitrary: -W has the same directions on both sides
    assert set(intruder_counts(W_pre, -W_pre).values()) == {0}
    assert set(intruder_counts(W_pre, -W_pre, side="right").values()) == {0}


def test_a_large_new_direction_is_one_intruder():
    W_pre, y, V = tall_pre()
    # the new top direction y is orthogonal to every left singular vector of W_pre; pairing it with
    # W_pre's last right vector leaves all other singular pairs exactly in place
    W_ft = W_pre + 50.0 * torch.outer(y, V[:, -1])
    counts = intruder_counts(W_pre, W_ft, k=10)
    assert counts == {e: 1 for e in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)}
    assert intruder_dimensions(W_pre, W_ft) == 1
    assert intruder_dimensions(W_pre, W_ft, eps=0.1) == 1
    # on the right the new singular vector is W_pre's own v_n: not an intruder
    assert intruder_dimensions(W_pre, W_ft, side="right") == 0
    assert intruder_dimensions(W_pre, W_ft.float(), k=1) == 1


def test_square_full_rank_pre_has_a_floor_of_one_over_sqrt_n():
    # W_pre's singular vectors are a basis of R^n, so every unit vector has |cos| >= 1/sqrt(n) with
    # one of them: below that threshold nothing is an intruder, however large the new direction
    n = 16
    gen = torch.Generator().manual_seed(9)
    W_pre = torch.randn(n, n, generator=gen, dtype=torch.float64)
    y = torch.ones(n, dtype=torch.float64) / math.sqrt(n)
    W_ft = W_pre + 100.0 * torch.outer(orthonormal(n, n, 10) @ y, y)
    assert intruder_dimensions(W_pre, W_ft, k=5, eps=0.9 / math.sqrt(n)) == 0
    assert intruder_dimensions(W_pre, W_ft, k=5, eps=0.9) >= 1


# ---- energy in a subspace --------------------------------------------------------------------

def test_energy_in_subspace_known_answers():
    dW = torch.zeros(6, 5, dtype=torch.float64)
    dW[0, 0], dW[1, 1] = 3.0, 4.0  # energies 9 and 16 of 25
    out = energy_in_subspace(dW, basis(6, 0), basis(5, 1))
    assert out == pytest.approx({"col": 9 / 25, "row": 16 / 25, "both": 0.0})
    out = energy_in_subspace(dW, basis(6, 0, 1), basis(5, 0))
    assert out == pytest.approx({"col": 1.0, "row": 9 / 25, "both": 9 / 25})
    out = energy_in_subspace(dW.numpy(), basis(6, 1).numpy())
    assert out["col"] == pytest.approx(16 / 25) and math.isnan(out["row"]) and math.isnan(out["both"])


# ---- precision, edge values ------------------------------------------------------------------

def test_mixed_precision_inputs_are_computed_in_the_wider_type():
    """fp32 beside fp64 is promoted to fp64 (and fp32 alone stays fp32 and works): φ, the energy shares and the
    amplification of an fp32 matrix against fp64 directions agree with the all-fp64 computation to ~1e-15."""
    U1, U2 = orthonormal(30, 3, seed=20), orthonormal(30, 4, seed=21)
    ref = subspace_similarity(U1, U2, 2, 3)
    assert subspace_similarity(U1.float().double(), U2, 2, 3) == pytest.approx(
        subspace_similarity(U1.float(), U2, 2, 3), rel=1e-13)
    assert subspace_similarity(U1, U2.float(), 2, 3) == pytest.approx(subspace_similarity(U1, U2.float().double(), 2, 3),
                                                                      rel=1e-13)
    assert subspace_similarity(U1.float(), U2.float(), 2, 3) == pytest.approx(ref, rel=1e-5)
    gen = torch.Generator().manual_seed(22)
    dW = torch.randn(30, 20, generator=gen)  # fp32
    V = orthonormal(20, 2, seed=23)
    e64 = energy_in_subspace(dW.double(), U1, V)
    assert energy_in_subspace(dW, U1, V) == pytest.approx(e64, rel=1e-13)
    assert energy_in_subspace(dW.double(), U1.float(), V.float()) == pytest.approx(
        energy_in_subspace(dW.double(), U1.float().double(), V.float().double()), rel=1e-13)
    W = torch.randn(30, 20, generator=gen)  # fp32
    a64 = amplification(W.double(), dW.double(), 3)
    mixed = amplification(W, dW.double(), 3)
    assert {k: mixed[k] for k in ("delta_dirs", "w_dirs", "dw_norm", "w_norm")} == pytest.approx(
        {k: a64[k] for k in ("delta_dirs", "w_dirs", "dw_norm", "w_norm")}, rel=1e-12)
    a32 = amplification(W, dW, 3)  # all fp32: the random directions are drawn in fp32 too
    assert a32["delta_dirs"] == pytest.approx(a64["delta_dirs"], rel=1e-4)
    # W's own top-r energy is summed in fp64 from its fp32 singular values
    s32 = torch.linalg.svdvals(W).double()
    assert a32["w_dirs"] == pytest.approx(float(s32[:3].square().sum().sqrt()), rel=1e-14)


def test_amplification_factor_edge_values():
    W = torch.zeros(5, 4, dtype=torch.float64)
    W[0, 0] = 0.1
    W[1, 1] = 2.0
    dW = torch.zeros(5, 4, dtype=torch.float64)
    dW[0, 0] = 3.0  # ΔW's direction is where W holds 0.1: ‖UᵀWV‖ = 0.1 < 1, factor 30
    out = amplification(W, dW, 1)
    assert out["r"] == 1 and out["delta_dirs"] == pytest.approx(0.1, rel=1e-12)
    assert out["factor"] == pytest.approx(30.0, rel=1e-12)
    dW = torch.zeros(5, 4, dtype=torch.float64)
    dW[4, 3] = 1.0  # a direction W does not use at all: infinite amplification
    out = amplification(W, dW, 1)
    assert out["delta_dirs"] == 0.0 and out["factor"] == math.inf


def test_intruders_at_the_edges_of_k_and_eps():
    W_pre, y, V = tall_pre()
    # a new direction with singular value 5: above W_pre's 10th (7.0 of 10, 9.8, ..., 1) only if counted from the top
    W_ft = W_pre + 5.0 * torch.outer(y, V[:, -1])
    assert intruder_dimensions(W_pre, W_ft, k=10) == 0  # ranked below the top 10 (10 ... 8.1)
    assert intruder_dimensions(W_pre, W_ft, k=48) == 1 and intruder_dimensions(W_pre, W_ft, k=48, eps=1.0) >= 1
    assert list(intruder_counts(W_pre, W_pre, k=10, eps_grid=(1.0,))) == [1.0]  # ε = 1 is a valid threshold


def test_energy_in_subspace_of_a_unit_norm_update():
    dW = torch.zeros(4, 3, dtype=torch.float64)
    dW[1, 2] = 1.0  # ‖ΔW‖² = 1
    assert energy_in_subspace(dW, basis(4, 1), basis(3, 2)) == {"col": 1.0, "row": 1.0, "both": 1.0}
    assert all(math.isnan(v) for v in energy_in_subspace(torch.zeros(4, 3), basis(4, 1), basis(3, 2)).values())


# ---- errors a user can cause: one sentence naming the value and what is valid ----------------------

@pytest.mark.parametrize("call, message", [
    (lambda: subspace_similarity(torch.ones(4, 2), basis(4, 0), 1, 1),
     "U1 must have orthonormal columns (e.g. from top_singular_vectors)."),
    (lambda: subspace_similarity(basis(4, 0), 2 * basis(4, 0), 1, 1),
     "U2 must have orthonormal columns (e.g. from top_singular_vectors)."),
    (lambda: subspace_similarity(basis(4, 0), basis(5, 0), 1, 1), "U1 and U2 must live in the same space, got 4 and 5 rows."),
    (lambda: subspace_similarity(torch.eye(3, 4, dtype=torch.float64), basis(3, 0), 1, 1),
     "U1 must be n x r with r <= n orthonormal columns, got shape (3, 4)."),
    (lambda: subspace_similarity(basis(4, 0), torch.eye(3, 4, dtype=torch.float64), 1, 1),
     "U2 must be n x r with r <= n orthonormal columns, got shape (3, 4)."),
    (lambda: subspace_similarity(torch.ones(2, 4, 1), basis(4, 0), 1, 1), "U1 must be a 2-D matrix, got shape (2, 4, 1)."),
    (lambda: subspace_similarity(basis(4, 0, 1), basis(4, 0), 1, 2), "j must be at most U2.shape[1] = 1, got 2."),
    (lambda: subspace_similarity(basis(4, 0), basis(4, 0, 1), 2, 1), "i must be at most U1.shape[1] = 1, got 2."),
    (lambda: subspace_similarity(basis(4, 0), basis(4, 0), 0, 1), "i must be a positive integer, got 0."),
    (lambda: subspace_similarity(basis(4, 0), basis(4, 0), 1, 0), "j must be a positive integer, got 0."),
    (lambda: subspace_similarity_grid(basis(4, 0), basis(4, 0), 3, 1), "imax must be at most U1.shape[1] = 1, got 3."),
    (lambda: subspace_similarity_grid(basis(4, 0), basis(4, 0), 1, 3), "jmax must be at most U2.shape[1] = 1, got 3."),
    (lambda: subspace_similarity_grid(basis(4, 0), basis(4, 0), 0, 1), "imax must be a positive integer, got 0."),
    (lambda: subspace_similarity_grid(basis(4, 0), basis(4, 0), 1, 0), "jmax must be a positive integer, got 0."),
    (lambda: top_singular_vectors(torch.ones(4, 3), 2, side="up"), "side must be 'left' or 'right', got 'up'."),
    (lambda: top_singular_vectors(torch.ones(4), 1), "M must be a 2-D matrix, got shape (4,)."),
    (lambda: top_singular_vectors(torch.ones(2, 4, 3), 1), "M must be a 2-D matrix, got shape (2, 4, 3)."),
    (lambda: top_singular_vectors(torch.ones(4, 3), 4), "r must be at most min(M.shape) = 3, got 4."),
    (lambda: top_singular_vectors(torch.ones(4, 3), 0), "r must be a positive integer, got 0."),
    (lambda: random_subspace_control(0, 1, 1), "n must be a positive integer, got 0."),
    (lambda: random_subspace_control(10, 11, 2), "r1 must be at most n = 10, got 11."),
    (lambda: random_subspace_control(10, 2, 11), "r2 must be at most n = 10, got 11."),
    (lambda: random_subspace_control(10, 0, 2), "r1 must be a positive integer, got 0."),
    (lambda: random_subspace_control(10, 2, 0), "r2 must be a positive integer, got 0."),
    (lambda: amplification(torch.ones(4, 3), torch.ones(3, 4), 1), "W and dW must have the same shape, got (4, 3) and (3, 4)."),
    (lambda: amplification(torch.ones(2, 4, 3), torch.ones(4, 3), 1), "W must be a 2-D matrix, got shape (2, 4, 3)."),
    (lambda: amplification(torch.ones(4, 3), torch.ones(2, 4, 3), 1), "dW must be a 2-D matrix, got shape (2, 4, 3)."),
    (lambda: amplification([[1.0]], torch.ones(4, 3), 1), "W must be a torch tensor or numpy array, got list."),
    (lambda: amplification(torch.ones(4, 3), [[1.0]], 1), "dW must be a torch tensor or numpy array, got list."),
    (lambda: amplification(torch.ones(4, 3), torch.ones(4, 3), 0), "r must be a positive integer, got 0."),
    (lambda: amplification(torch.ones(4, 3), torch.ones(4, 3), 4), "r must be at most min(W.shape) = 3, got 4."),
    (lambda: intruder_dimensions(torch.ones(4, 3), torch.ones(4, 4)), "W_pre and W_ft must have the same shape, got (4, 3) and (4, 4)."),
    (lambda: intruder_dimensions(torch.ones(4, 3), torch.ones(4, 3), k=4), "k must be at most min(W.shape) = 3, got 4."),
    (lambda: intruder_dimensions(torch.ones(4, 3), torch.ones(4, 3), k=2, eps=1.5), "eps must be in (0, 1], got 1.5."),
    (lambda: intruder_dimensions(torch.ones(4, 3), torch.ones(4, 3), k=2, eps=0.0), "eps must be in (0, 1], got 0.0."),
    (lambda: intruder_counts(torch.ones(4, 3), torch.ones(4, 3), k=2, eps_grid=()), "eps_grid must hold at least one threshold."),
    (lambda: intruder_counts(torch.ones(4, 3), torch.ones(4, 3), k=2, side="up"), "side must be 'left' or 'right', got 'up'."),
    (lambda: energy_in_subspace(torch.ones(4, 3), basis(5, 0)), "U must have 4 rows (dW_full's row count), got 5."),
    (lambda: energy_in_subspace(torch.ones(4, 3), basis(4, 0), basis(4, 0)), "V must have 3 rows (dW_full's column count), got 4."),
    (lambda: energy_in_subspace(torch.ones(2, 4, 3), basis(4, 0)), "dW_full must be a 2-D matrix, got shape (2, 4, 3)."),
    (lambda: energy_in_subspace(torch.ones(4, 3), torch.ones(4, 1)), "U must have orthonormal columns (e.g. from top_singular_vectors)."),
    (lambda: energy_in_subspace(torch.ones(4, 3), basis(4, 0), torch.ones(3, 1)),
     "V must have orthonormal columns (e.g. from top_singular_vectors)."),
])
def test_bad_input_raises_one_clear_value_error(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value) == message
