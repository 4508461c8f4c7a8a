"""The fast Walsh–Hadamard transform and the three random projections of lora_study.methods.projections."""
import pytest
import scipy.linalg
import torch

from lora_study.methods.projections import DenseProjection, Fastfood, SparseProjection, _fwht_butterfly, default_max_bytes, fwht


def _matrix(projection, dtype=torch.float64):
    """Materialise P column by column (small sizes only) by applying it to the unit vectors."""
    eye = torch.eye(projection.d, dtype=dtype)
    return torch.stack([projection(eye[j]) for j in range(projection.d)], dim=1)


@pytest.mark.parametrize("n", [1, 2, 4, 32, 64, 128, 1024, 4096])
def test_fwht_matches_scipy_hadamard_batched(n):
    x = torch.randn(3, 2, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    expected = x @ torch.from_numpy(scipy.linalg.hadamard(n)).double().T
    torch.testing.assert_close(fwht(x), expected, rtol=1e-12, atol=1e-9)


def test_fwht_float32_and_integers():
    x = torch.randint(-5, 5, (4, 256))
    h = torch.from_numpy(scipy.linalg.hadamard(256))
    assert torch.equal(fwht(x), x @ h.T)  # butterfly path, exact
    torch.testing.assert_close(fwht(x.float()), (x @ h.T).float())


def test_fwht_three_factors_matches_butterfly():
    # n = 2^13 needs three Kronecker factors; scipy's 8192 x 8192 matrix would be 512 MB, so compare with
    # the radix-2 butterfly, itself checked against scipy above.
    x = torch.randint(-3, 4, (2, 2**13))
    assert torch.equal(fwht(x.double()), _fwht_butterfly(x).double())


def test_fwht_rejects_non_power_of_two():
    with pytest.raises(ValueError, match="power of two, got 12"):
        fwht(torch.zeros(3, 12))


def test_fwht_backward_is_fwht():
    x = torch.randn(5, 512, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 512, dtype=torch.float64)
    (grad,) = torch.autograd.grad(fwht(x), x, g)
    torch.testing.assert_close(grad, fwht(g))  # H is symmetric


def test_fastfood_is_linear():
    ff = Fastfood(1000, 100, seed=3).double()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, dtype=torch.float64, generator=gen), torch.randn(100, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(ff(2.5 * x - 0.7 * y), 2.5 * ff(x) - 0.7 * ff(y))


@pytest.mark.parametrize("chunk", [1 << 20, 128])  # one chunk of 11 blocks, or 6 chunks of <= 2 blocks
def test_fastfood_backward_is_the_transpose(chunk):
    ff = Fastfood(700, 40, seed=1, chunk=chunk).double()  # D = 10 * 64 + 60: the last block is cut
    theta = torch.randn(40, dtype=torch.float64, requires_grad=True)
    g = torch.randn(700, dtype=torch.float64)
    (grad,) = torch.autograd.grad(ff(theta), theta, g)
    torch.testing.assert_close(grad, _matrix(ff).T @ g)


def test_fastfood_columns_have_unit_norm_when_blocks_tile_D():
    ff = Fastfood(4 * 64, 50, seed=0)  # n = 64 divides D: every column norm is exactly 1
    assert (ff.n, ff.blocks) == (64, 4)
    torch.testing.assert_close(_matrix(ff.double()).norm(dim=0), torch.ones(50, dtype=torch.float64))


def test_fastfood_preserves_squared_norm_in_expectation():
    # D = 7 * 128 + 104: the last block is cut. Normalisation promises E||P x||^2 = ||x||^2 for any x.
    x = torch.randn(100, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ratios = torch.tensor([Fastfood(1000, 100, seed=s).double()(x).square().sum() / x.square().sum() for s in range(300)])
    standard_error = ratios.std() / ratios.numel() ** 0.5
    assert abs(ratios.mean() - 1) < 4 * standard_error + 1e-3, (ratios.mean(), standard_error)
    assert 0.9 < ratios.median() < 1.1  # not only right on average: a single draw is close to an isometry


def test_fastfood_chunking_does_not_change_the_map():
    x = torch.randn(40, dtype=torch.float64)
    whole, chunked = Fastfood(700, 40, seed=1).double(), Fastfood(700, 40, seed=1, chunk=128).double()
    torch.testing.assert_close(chunked(x), whole(x))


def test_fastfood_blocks_are_independent_and_seeded():
    a, b = Fastfood(512, 60, seed=5), Fastfood(512, 60, seed=5)
    x = torch.randn(60)
    assert torch.equal(a(x), b(x))
    assert not torch.allclose(a(x), Fastfood(512, 60, seed=6)(x))
    rows = a(x).view(a.blocks, a.n)
    assert not torch.allclose(rows[0].abs().sort().values, rows[1].abs().sort().values)


def test_fastfood_memory_is_linear_in_D_and_not_saved():
    ff = Fastfood(100_000, 1000)
    stored = sum(b.numel() * b.element_size() for b in ff.buffers())
    assert stored <= 7 * (ff.D + ff.n)  # int8 signs, fp32 gauss, int16 perm: never the D x d matrix (400 MB)
    assert ff.state_dict() == {}  # rebuilt from the seed


@pytest.mark.parametrize("cls", [DenseProjection, SparseProjection])
def test_explicit_projections_have_unit_norm_columns(cls):
    p = cls(2500, 30, seed=0)
    torch.testing.assert_close(_matrix(p, torch.float32).norm(dim=0), torch.ones(30))
    x = torch.randn(30)
    torch.testing.assert_close(p(x), _matrix(p, torch.float32) @ x)


def test_sparse_projection_density():
    p = SparseProjection(10_000, 200, seed=0)
    per_column = torch.bincount(p.matrix.indices()[1], minlength=200).float()
    assert abs(per_column.mean() - 100) < 1  # about sqrt(D) = 100 non-zeros a column (density 1/sqrt(D))
    assert per_column.min() >= 95


def test_sparse_projection_gradient():
    p = SparseProjection(900, 20, seed=2)
    theta = torch.randn(20, requires_grad=True)
    g = torch.randn(900)
    (grad,) = torch.autograd.grad(p(theta), theta, g)
    torch.testing.assert_close(grad, p.matrix.to_dense().T @ g)


def test_dense_projection_refuses_before_allocating(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("allocated before refusing")

    monkeypatch.setattr(torch, "empty", boom)
    monkeypatch.setattr(torch, "randn", boom)
    with pytest.raises(ValueError) as info:
        DenseProjection(10**9, 10**6)
    message = str(info.value)
    for needle in ("D=1,000,000,000", "d=1,000,000", "4,000,000,000,000,000 bytes", "limit", "fastfood"):
        assert needle in message
    with pytest.raises(ValueError, match=r"needs 400,000 bytes .* limit is 1,000 bytes"):
        DenseProjection(1000, 100, max_bytes=1000)


def test_sparse_projection_refuses_past_max_bytes():
    with pytest.raises(ValueError, match="sparse projection with D=1,000,000 and d=10"):
        SparseProjection(10**6, 10, max_bytes=10_000)


def test_default_max_bytes_is_a_fraction_of_memory():
    with open("/proc/meminfo") as f:
        total = int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) * 1024
    assert 0 < default_max_bytes("cpu") <= total // 4
