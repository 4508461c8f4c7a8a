"""lora_study/cka.py: the anchors' known answers for biased and debiased linear CKA, invariances, bad input."""
from __future__ import annotations

import numpy as np
import pytest

from lora_study.heldout.cka import linear_cka, linear_cka_debiased

P = 384  # the packaged default model's width


def independent(n: int, seed: int, p: int = P) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, p)), rng.normal(size=(n, p))


def reference_debiased(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith's published route, written independently: U-centre each Gram matrix (zero diagonal,
    subtract row/column means over n - 2, add back the grand mean over 2(n - 1)), then cosine of the two."""
    def u_centre(g):
        n = g.shape[0]
        g = g.copy()
        np.fill_diagonal(g, 0)
        means = g.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        g -= means[:, None] + means[None, :]
        np.fill_diagonal(g, 0)
        return g
    k, l = u_centre(x @ x.T), u_centre(y @ y.T)
    return float(np.vdot(k, l) / np.sqrt(np.vdot(k, k) * np.vdot(l, l)))


def test_biased_is_inflated_at_small_n_and_debiased_is_not():
    # Known answers (Kornblith et al. 2019; Nguyen, Raghu & Kornblith 2021): independent Gaussian features, p = 384: biased about 0.80 at n = 100, 0.28 at n = 1000
    # (in expectation p / (n + p) = 0.79 and 0.28); the debiased estimator is about 0 at both.
    x, y = independent(100, seed=0)
    assert linear_cka(x, y) == pytest.approx(0.80, abs=0.03)
    assert abs(linear_cka_debiased(x, y)) < 0.05
    x, y = independent(1000, seed=1)
    assert linear_cka(x, y) == pytest.approx(0.28, abs=0.02)
    assert abs(linear_cka_debiased(x, y)) < 0.02


def test_biased_keeps_the_heldout_formula():
    x, y = independent(50, seed=2, p=20)
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert linear_cka(x, y) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n,p,q", [(6, 3, 5), (40, 10, 7), (120, 384, 64)])
def test_debiased_matches_the_u_centred_gram_route(n, p, q):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, p))
    y = x @ rng.normal(size=(p, q)) + 2 * rng.normal(size=(n, q))  # related, so the value is far from 0
    got = linear_cka_debiased(x, y)
    assert got == pytest.approx(reference_debiased(x - x.mean(0), y - y.mean(0)), abs=1e-10)
    assert abs(got) > 0.05


@pytest.mark.parametrize("cka", [linear_cka, linear_cka_debiased])
def test_rotation_scale_and_shift_give_one(cka):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(100, P))
    rotation = np.linalg.qr(rng.normal(size=(P, P)))[0]
    assert cka(x, x @ rotation) == pytest.approx(1.0, abs=1e-6)
    assert cka(x, 3 * x + 5) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("cka", [linear_cka, linear_cka_debiased])
def test_symmetric_and_not_invariant_to_a_general_linear_map(cka):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 16))
    y = x @ rng.normal(size=(16, 8)) + rng.normal(size=(200, 8))
    assert cka(x, y) == pytest.approx(cka(y, x), rel=1e-12)
    stretched = x * np.r_[30.0, np.ones(15)]  # CKA is invariant to rotation and isotropic scale only
    assert cka(x, stretched) < 0.5


def test_hsic1_is_the_u_statistic_over_distinct_indices():
    # Song et al. 2012: HSIC_1 = mean_{i!=j} K_ij L_ij + mean_{i,j,q,r distinct} K_ij L_qr
    #                            - 2 mean_{i,j,q distinct} K_ij L_iq
    from itertools import permutations

    from lora_study.heldout import cka as module
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    x[:, 0] += y[:, 0]
    k, l = x @ x.T, y @ y.T
    n = 6
    mean = lambda terms: float(np.mean(list(terms)))  # noqa: E731
    expected = (mean(k[i, j] * l[i, j] for i, j in permutations(range(n), 2))
                + mean(k[i, j] * l[q, r] for i, j, q, r in permutations(range(n), 4))
                - 2 * mean(k[i, j] * l[i, q] for i, j, q in permutations(range(n), 3)))
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    assert module._hsic1(k, l) == pytest.approx(expected, rel=1e-10)


def test_debiased_shift_invariant_even_without_centring():
    # the U-statistic cancels K_ij -> K_ij + g(i) + g(j) + c, so a shifted copy of x needs no centring
    from lora_study.heldout import cka as module
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 5))
    y = x @ rng.normal(size=(5, 4)) + rng.normal(size=(30, 4))

    def uncentred(x, y):
        k, l = x @ x.T, y @ y.T
        np.fill_diagonal(k, 0)
        np.fill_diagonal(l, 0)
        return module._hsic1(k, l) / np.sqrt(module._hsic1(k, k) * module._hsic1(l, l))
    assert uncentred(x + 7, y - 3) == pytest.approx(linear_cka_debiased(x, y), abs=1e-9)


@pytest.mark.parametrize("cka", [linear_cka, linear_cka_debiased])
def test_constant_features_give_nan(cka):
    x = np.random.default_rng(6).normal(size=(10, 3))
    assert np.isnan(cka(x, np.ones((10, 4))))


@pytest.mark.parametrize("cka", [linear_cka, linear_cka_debiased])
def test_small_scales_one_feature_and_four_examples(cka):
    """Only a side with no variance at all gives NaN: features of size 1e-2 (Gram norms far below 1) still give 1
    for a rescaled copy; one feature is a valid feature matrix; four examples are enough for the debiased form."""
    rng = np.random.default_rng(7)
    x = 1e-2 * rng.normal(size=(20, 3))
    assert cka(x, 3 * x) == pytest.approx(1.0, abs=1e-12)
    one = rng.normal(size=(20, 1))
    assert cka(one, -2 * one + 5) == pytest.approx(1.0, abs=1e-12)
    four = rng.normal(size=(4, 2))
    assert cka(four, four @ np.array([[0.0, 1.0], [1.0, 0.0]])) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("cka", [linear_cka, linear_cka_debiased])
def test_computed_in_float64_whatever_the_input(cka):
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(30, 6)).astype(np.float32), rng.normal(size=(30, 5)).astype(np.float32)
    assert cka(x, y) == pytest.approx(cka(x.astype(np.float64), y.astype(np.float64)), rel=1e-12, abs=1e-14)
    assert cka(x.tolist(), y) == pytest.approx(cka(x.astype(np.float64), y), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("call, message", [
    (lambda: linear_cka_debiased(np.eye(3), np.eye(3)), "the debiased CKA needs at least 4 examples (rows of x and y), got 3."),
    (lambda: linear_cka(np.ones((5, 3)), np.ones((6, 4))), "x and y must hold the same examples (rows), got 5 and 6."),
    (lambda: linear_cka(np.zeros((10, 3)), np.zeros(10)), "y must be a non-empty 2-D (n x features) array, got shape (10,)."),
    (lambda: linear_cka(np.zeros((0, 3)), np.zeros((0, 3))), "x must be a non-empty 2-D (n x features) array, got shape (0, 3)."),
    (lambda: linear_cka_debiased(np.full((10, 3), np.nan), np.zeros((10, 3))),
     "x must hold finite numbers only, got NaN or infinity."),
    (lambda: linear_cka([[1.0, 2.0], [3.0]], np.zeros((2, 2))),
     "x must be a numeric (n x features) array, got ragged or non-numeric input."),
    (lambda: linear_cka(np.zeros((2, 2)), [["a", "b"], ["c", "d"]]),
     "y must be a numeric (n x features) array, got ragged or non-numeric input."),
])
def test_bad_input_raises_one_sentence(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value) == message
