"""The fast Walsh–Hadamard transform and the three random projections of lora_study.methods.projections."""
import pytest
import scipy.linalg
import torch

from lora_study.methods import projections
from lora_study.methods.projections import (DenseProjection, Fastfood, SparseProjection, _fwht_butterfly,
                                            default_max_bytes, fwht, make_projection)


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


# ---- the definitions by hand, the documented paths and bounds -------------------------------------

def test_fwht_of_integers_in_a_batch_of_matrices_and_the_paths_it_takes(monkeypatch):
    x = torch.randint(-5, 5, (2, 3, 64))
    h = torch.from_numpy(scipy.linalg.hadamard(64))
    assert torch.equal(fwht(x), x @ h.T)  # integers: the butterfly, over every leading dimension
    calls = []
    real = projections._hadamard
    monkeypatch.setattr(projections, "_fwht_butterfly", lambda x: pytest.fail("a float took the butterfly"))
    monkeypatch.setattr(projections, "_hadamard", lambda m, *a: calls.append(m) or real(m, *a))
    y = torch.randn(2, 2**13, dtype=torch.float64)
    fwht(y)
    assert calls == [16, 16, 32]  # ⌈13 / 6⌉ = 3 balanced Kronecker factors (2^5 ⊗ 2^4 ⊗ 2^4), least significant first


def test_fastfood_is_its_definition_built_densely():
    """P = [s_b H G_b Π_b H B_b] stacked and cut to D rows, with the seeded draws in the documented order:
    signs B, Gaussians G (s_b = 1/√(D ‖G_b‖²) folded in), then the permutations Π as argsorts of uniforms."""
    D, d, seed = 200, 24, 7
    ff = Fastfood(D, d, seed=seed).double()
    n, blocks = 32, 7
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (blocks, d), generator=g, dtype=torch.int8).double() * 2 - 1
    gauss = torch.randn(blocks, n, generator=g).double()
    gauss = gauss / torch.sqrt(D * gauss.square().sum(1, keepdim=True))
    perm = torch.rand(blocks, n, generator=g).argsort(dim=1)
    H = torch.from_numpy(scipy.linalg.hadamard(n)).double()
    rows = []
    for b in range(blocks):
        pad = torch.zeros(n, d, dtype=torch.float64)
        pad[:d] = torch.diag(signs[b])  # B pad(θ)
        rows.append(H @ torch.diag(gauss[b]) @ (H @ pad)[perm[b]])  # H G Π H B
    P = torch.cat(rows)[:D]
    torch.testing.assert_close(_matrix(ff), P, rtol=1e-5, atol=1e-6)  # the buffers are stored in float32
    assert set(ff.signs.unique().tolist()) == {-1, 1}


@pytest.mark.parametrize("D,d,block_size,n", [(10, 1, None, 1), (100, 4, None, 4), (100, 5, None, 8),
                                              (100, 3, 8, 8), (100, 8, 8, 8), (100, 64, None, 64)])
def test_fastfood_block_size(D, d, block_size, n):
    ff = Fastfood(D, d, block_size=block_size)
    assert (ff.n, ff.blocks) == (n, -(-D // n))
    x = torch.randn(d, dtype=torch.float64)
    torch.testing.assert_close(ff.double()(x), _matrix(ff.double()) @ x)


def test_fastfood_permutation_indices_fit_their_type():
    small = Fastfood(32768, 20000)  # n = 2^15: int16 indices suffice
    assert small.n == 1 << 15 and small.perm.dtype == torch.int16
    assert torch.equal(small.perm[0].long().sort().values, torch.arange(1 << 15))
    big = Fastfood(1 << 16, 40000)  # n = 2^16 would overflow int16
    assert big.perm.dtype == torch.int32 and torch.equal(big.perm[0].long().sort().values, torch.arange(1 << 16))


def test_dense_projection_is_one_seeded_gaussian_draw_with_unit_columns():
    p = DenseProjection(50, 5, seed=3)
    m = torch.randn(50, 5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(p.matrix, m / m.norm(dim=0))
    assert p.state_dict() == {} and p(torch.ones(5, dtype=torch.float64)).dtype == torch.float32


def test_sparse_projection_is_seeded_not_global_and_signed():
    torch.manual_seed(0)
    a = SparseProjection(400, 30, seed=4).matrix.to_dense()
    torch.manual_seed(1)  # the global generator plays no part
    assert torch.equal(a, SparseProjection(400, 30, seed=4).matrix.to_dense())
    assert not torch.equal(a, SparseProjection(400, 30, seed=5).matrix.to_dense())
    assert (a > 0).any() and (a < 0).any()
    one = SparseProjection(2, 5, seed=0).matrix.to_dense()  # k = round(√2) = 1: one ±1 per column
    assert ((one != 0).sum(0) == 1).all() and set(one[one != 0].abs().tolist()) == {1.0}
    p = SparseProjection(100, 3)
    assert p.state_dict() == {} and p(torch.ones(3, dtype=torch.float64)).dtype == torch.float32
    torch.manual_seed(0)
    d1 = DenseProjection(40, 3, seed=2).matrix
    torch.manual_seed(1)
    assert torch.equal(d1, DenseProjection(40, 3, seed=2).matrix)


def test_make_projection_builds_each_kind_from_its_seed():
    x = torch.randn(10, dtype=torch.float64)
    for kind, cls in (("fastfood", Fastfood), ("dense", DenseProjection), ("sparse", SparseProjection)):
        p = make_projection(kind, 300, 10, seed=2, device="cpu")
        assert type(p) is cls and (p.D, p.d) == (300, 10)
        assert torch.equal(p(x), cls(300, 10, seed=2)(x))
        assert not torch.equal(p(x), make_projection(kind, 300, 10, seed=3)(x))
    with pytest.raises(ValueError, match="needs 12,000 bytes"):
        make_projection("dense", 300, 10, max_bytes=1000)
    with pytest.raises(ValueError) as e:
        make_projection("gaussian", 300, 10)
    assert str(e.value) == "Unknown projection 'gaussian'; valid: 'fastfood', 'dense', 'sparse'."


def test_smallest_projections_and_the_memory_limit_itself_are_allowed():
    for cls in (Fastfood, DenseProjection, SparseProjection):
        assert cls(1, 1)(torch.ones(1)).shape == (1,)
    assert DenseProjection(10, 10, max_bytes=400).matrix.shape == (10, 10)  # needs exactly the limit


def test_default_max_bytes_reads_mem_available_then_sysconf_then_cuda(monkeypatch):
    import builtins
    import io
    real_open = builtins.open
    meminfo = "MemTotal:       16000 kB\nMemFree:          100 kB\nMemAvailable:     4000 kB\n"
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: io.StringIO(meminfo) if path == "/proc/meminfo"
                        else real_open(path, *a, **k))
    got = default_max_bytes("cpu")
    assert got == 4000 * 1024 // 4 and type(got) is int
    monkeypatch.setattr(builtins, "open", lambda *a, **k: (_ for _ in ()).throw(OSError("no /proc")))
    monkeypatch.setattr(projections.os, "sysconf", {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}.__getitem__)
    got = default_max_bytes(torch.device("cpu"))
    assert got == 1000 * 4096 // 4 and type(got) is int
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (8000, 16000) if device == torch.device("cuda") else None)
    got = default_max_bytes("cuda")
    assert got == 2000 and type(got) is int


@pytest.mark.parametrize("call, message", [
    (lambda: DenseProjection(0, 5), "A projection needs D >= 1 and d >= 1, got D=0 and d=5."),
    (lambda: Fastfood(5, 0), "A projection needs D >= 1 and d >= 1, got D=5 and d=0."),
    (lambda: DenseProjection(10, 2)(torch.zeros(3)), "Expected theta_d of shape (2,), got (3,)."),
    (lambda: Fastfood(100, 3, block_size=6), "Fastfood block_size must be a power of two >= d=3, got 6."),
    (lambda: Fastfood(100, 9, block_size=8), "Fastfood block_size must be a power of two >= d=9, got 8."),
    (lambda: DenseProjection(10**6, 10**3, max_bytes=10**9),
     "A dense projection with D=1,000,000 and d=1,000 needs 4,000,000,000 bytes (3.73 GiB) but the limit is "
     "1,000,000,000 bytes (0.93 GiB); use method.projection=fastfood, which never forms the D x d matrix."),
    (lambda: SparseProjection(10**6, 10, max_bytes=10_000),
     "A sparse projection with D=1,000,000 and d=10 needs 640,000 bytes (0.00 GiB) but the limit is 10,000 bytes "
     "(0.00 GiB); use method.projection=fastfood, which never forms the D x d matrix."),
])
def test_bad_sizes_are_one_sentence(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value) == message
