"""Random projections P: R^d -> R^D for intrinsic-dimension training, θ = θ0 + P θ_d.

Three projections share one call signature, ``P(theta_d) -> (D,) tensor``, and one normalisation:
every column of P has unit Euclidean norm (Li et al. 2018), so E‖P x‖² = ‖x‖² and an Adam step of
size η on one coordinate of θ_d moves θ by η, whichever projection is used.

- ``Fastfood``: P = stack over blocks b of  S_b H diag(G_b) Π_b H diag(B_b) E  (Le et al. 2013, as used by
  Li et al. 2018 and Aghajanyan et al. 2020), never forming the D × d matrix. O(D log n) time, O(D) memory.
- ``DenseProjection``: an explicit D × d Gaussian matrix; refuses sizes that would not fit.
- ``SparseProjection``: Li et al.'s sparse random projection, about √D non-zeros ±1 per column (density
  1/√D), as a torch sparse COO matrix.

All random state comes from a seeded ``torch.Generator`` on the CPU (the same seed gives the same P on
every device) and is kept in non-persistent buffers: ``.to(device)`` moves it, ``state_dict()`` omits
it, and the seed rebuilds it.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

_MAX_RADIX_BITS = 6  # fwht contracts factors of at most 2^6 = 64 per matmul: fast BLAS, few passes


def _hadamard(m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Sylvester Hadamard matrix H_m (m a power of two), H_{2m} = [[H_m, H_m], [H_m, -H_m]]."""
    h = torch.ones(1, 1, dtype=dtype, device=device)
    while h.shape[0] < m:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


def _check_power_of_two(n: int) -> None:
    if n < 1 or n & (n - 1):
        raise ValueError(f"fwht needs the last dimension to be a power of two, got {n}.")


def _fwht_butterfly(x: torch.Tensor) -> torch.Tensor:
    """Radix-2 butterfly: log2(n) steps of (a, b) -> (a + b, a - b). Used for dtypes matmul lacks."""
    n = x.shape[-1]
    y, h = x.reshape(-1, n), 1
    while h < n:
        y = y.view(-1, n // (2 * h), 2, h)
        y = torch.stack((y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]), dim=2)
        h *= 2
    return y.reshape(x.shape)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised fast Walsh–Hadamard transform along the last dimension: y = x H_n (= H_n x per row).

    Equals ``scipy.linalg.hadamard(n) @ x[..., :]`` for each row; n must be a power of two. Because
    H_{2^L} = H_2 ⊗ … ⊗ H_2, it factors as a Kronecker product of small Hadamards H_{m_1} ⊗ … ⊗ H_{m_k}
    (m_i ≤ 64); each factor is one batched matmul over a reshaped view, so the transform costs
    ⌈log2 n / 6⌉ passes over x instead of log2 n butterfly passes. Linear, so autograd just works
    (H is symmetric: the backward is fwht again). Non-float dtypes fall back to the butterfly.
    """
    n = x.shape[-1]
    _check_power_of_two(n)
    if n == 1:
        return x.clone()
    if not (x.is_floating_point() or x.is_complex()):
        return _fwht_butterfly(x)
    bits = n.bit_length() - 1
    k = math.ceil(bits / _MAX_RADIX_BITS)
    sizes = [bits // k + (1 if i < bits % k else 0) for i in range(k)]  # balanced, most significant first
    y = x.reshape(-1, n)
    rows, inner = y.shape[0], 1  # inner = product of the factors already applied (least significant)
    for s in reversed(sizes):
        m = 1 << s
        h = _hadamard(m, x.dtype, x.device)
        if inner == 1:
            y = y.reshape(-1, m) @ h  # one large GEMM over the contiguous last factor
        else:
            y = torch.matmul(h, y.reshape(rows * (n // (m * inner)), m, inner))
        inner *= m
    return y.reshape(x.shape)


def default_max_bytes(device: torch.device | str = "cpu") -> int:
    """A quarter of the memory still available: MemAvailable on the CPU, free memory on a CUDA device."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 4
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 4
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4


class _Projection(nn.Module):
    """Common shape checks: maps theta_d of shape (d,) to a flat (D,) float32 tensor."""

    def __init__(self, D: int, d: int):
        super().__init__()
        if D < 1 or d < 1:
            raise ValueError(f"A projection needs D >= 1 and d >= 1, got D={D} and d={d}.")
        self.D, self.d = int(D), int(d)

    def _check(self, theta: torch.Tensor) -> None:
        if theta.shape != (self.d,):
            raise ValueError(f"Expected theta_d of shape ({self.d},), got {tuple(theta.shape)}.")

    def extra_repr(self) -> str:
        return f"D={self.D}, d={self.d}"


class _FastfoodFn(torch.autograd.Function):
    """P θ forward, Pᵀ g backward, both matrix-free; nothing of size D is kept for the backward."""

    @staticmethod
    def forward(ctx, theta, ff):
        ctx.ff = ff
        return ff.apply_matrix(theta)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return ctx.ff.apply_transpose(grad), None


class Fastfood(_Projection):
    """Fastfood projection P: R^d -> R^D (Le et al. 2013; Li et al. 2018; Aghajanyan et al. 2020).

    θ_d is zero-padded to n = 2^⌈log2 d⌉ (or ``block_size``) and fed to ⌈D/n⌉ independent blocks,

        P θ_d = S [ s_1 H G_1 Π_1 H B_1 ; … ; s_K H G_K Π_K H B_K ] pad(θ_d),

    with B_b a random ±1 diagonal, H the n × n Walsh–Hadamard matrix, Π_b a random permutation, G_b a
    diagonal of N(0, 1) draws, and S keeping the first D of the K n stacked rows.

    Normalisation (Li et al.'s, unit-norm columns): s_b = 1 / sqrt(D ‖G_b‖²). Each column of one block
    H G Π H B has squared norm exactly n ‖G_b‖² (H B e_j is a ±1 vector), so a full block adds exactly n/D
    to every column's squared norm: when n divides D every column of P has norm exactly 1, otherwise
    the cut last block makes it 1 in expectation. Over the random draw E[Pᵀ P] = I, so E‖P x‖² = ‖x‖²
    for every x, matching the dense N(0, 1/D) projection. (Public intrinsic-dimension code divides each
    transform by sqrt(n ‖G‖²) · sqrt(D_t/n), the same s, but runs one transform per weight tensor with
    D_t its size, so there each tensor's slice of a column has unit norm and the whole column has norm
    √(number of tensors); step sizes tuned there are larger by that factor than here.)
    """

    def __init__(self, D: int, d: int, seed: int = 0, block_size: int | None = None, chunk: int = 1 << 20):
        super().__init__(D, d)
        n = block_size if block_size is not None else 1 << max(0, (self.d - 1).bit_length())
        if n < self.d or n & (n - 1):
            raise ValueError(f"Fastfood block_size must be a power of two >= d={self.d}, got {n}.")
        self.n, self.blocks = n, -(-self.D // n)
        self.chunk_blocks = max(1, chunk // n)  # blocks transformed together: bounds temporaries, stays in cache
        g = torch.Generator().manual_seed(seed)
        # Compact storage (about 7 bytes per row of P with n <= 2^15): the buffers are the O(D) memory.
        signs = torch.randint(0, 2, (self.blocks, self.d), generator=g, dtype=torch.int8).mul_(2).sub_(1)
        gauss = torch.randn(self.blocks, n, generator=g)
        gauss.mul_((self.D * gauss.square().sum(1, keepdim=True)).rsqrt())  # folds s_b into G_b
        perm = torch.empty(self.blocks, n, dtype=torch.int16 if n <= 1 << 15 else torch.int32)
        step = max(1, (1 << 22) // n)  # argsort of uniforms in chunks: bounded temporary memory
        for i in range(0, self.blocks, step):
            j = min(self.blocks, i + step)
            perm[i:j] = torch.rand(j - i, n, generator=g).argsort(dim=1)
        self.register_buffer("signs", signs, persistent=False)
        self.register_buffer("gauss", gauss, persistent=False)
        self.register_buffer("perm", perm, persistent=False)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        self._check(theta)
        return _FastfoodFn.apply(theta, self)

    def _chunks(self):
        for i in range(0, self.blocks, self.chunk_blocks):
            j = min(self.blocks, i + self.chunk_blocks)
            yield i, j, i * self.n, min(self.D, j * self.n)

    @torch.no_grad()
    def apply_matrix(self, theta: torch.Tensor) -> torch.Tensor:
        """P θ for θ of shape (d,), without autograd, a chunk of blocks at a time."""
        out = self.gauss.new_empty(self.D)
        theta = theta.to(self.gauss.dtype)
        for i, j, lo, hi in self._chunks():
            u = self.gauss.new_zeros(j - i, self.n)
            torch.mul(self.signs[i:j], theta, out=u[:, : self.d])  # B pad(θ)
            u = fwht(u).gather(1, self.perm[i:j].long()).mul_(self.gauss[i:j])  # G Π H B pad(θ)
            out[lo:hi] = fwht(u).view(-1)[: hi - lo]
        return out

    @torch.no_grad()
    def apply_transpose(self, y: torch.Tensor) -> torch.Tensor:
        """Pᵀ y for y of shape (D,): Bᵀ Hᵀ Πᵀ G Hᵀ Sᵀ y, with H symmetric and Πᵀ a scatter."""
        y = y.to(self.gauss.dtype)
        out = self.gauss.new_zeros(self.d)
        for i, j, lo, hi in self._chunks():
            u = y[lo:hi]
            if hi - lo < (j - i) * self.n:
                u = F.pad(u, (0, (j - i) * self.n - (hi - lo)))
            u = fwht(u.view(j - i, self.n)).mul_(self.gauss[i:j])
            u = torch.empty_like(u).scatter_(1, self.perm[i:j].long(), u)
            out += (fwht(u)[:, : self.d] * self.signs[i:j]).sum(0)
        return out

    def extra_repr(self) -> str:
        return f"D={self.D}, d={self.d}, block_size={self.n}, blocks={self.blocks}"


class ProjectionTooLarge(ValueError):
    """An explicit projection matrix would not fit in the memory allowed for it."""


def _refuse_if_too_big(kind: str, D: int, d: int, need: int, max_bytes: int | None, device) -> None:
    limit = default_max_bytes(device) if max_bytes is None else int(max_bytes)
    if need > limit:
        raise ProjectionTooLarge(
            f"A {kind} projection with D={D:,} and d={d:,} needs {need:,} bytes ({need / 2**30:.2f} GiB) "
            f"but the limit is {limit:,} bytes ({limit / 2**30:.2f} GiB); use method.projection=fastfood, "
            f"which never forms the D x d matrix."
        )


class DenseProjection(_Projection):
    """Explicit D × d Gaussian matrix with each column scaled to unit norm (Li et al. 2018).

    Refuses, before allocating anything, a matrix of more than ``max_bytes`` (default: a quarter of the
    available memory of ``device``). Entries are drawn on the CPU in row chunks, so the same seed gives
    the same matrix on every device.
    """

    def __init__(self, D: int, d: int, seed: int = 0, max_bytes: int | None = None, device="cpu"):
        super().__init__(D, d)
        _refuse_if_too_big("dense", self.D, self.d, self.D * self.d * 4, max_bytes, device)
        g = torch.Generator().manual_seed(seed)
        matrix = torch.empty(self.D, self.d, device=device)
        step = max(1, (1 << 24) // self.d)
        for i in range(0, self.D, step):
            j = min(self.D, i + step)
            matrix[i:j] = torch.randn(j - i, self.d, generator=g)
        matrix.div_(torch.linalg.vector_norm(matrix, dim=0))
        self.register_buffer("matrix", matrix, persistent=False)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        self._check(theta)
        return self.matrix @ theta.to(self.matrix.dtype)


class SparseProjection(_Projection):
    """Li et al.'s sparse random projection: each column holds about k = √D entries ±1/√k (density
    1/√D, Li, Hastie & Church 2006), so every column has norm exactly 1. Rows are drawn with replacement
    and repeats dropped, which changes k by about k²/2D ≈ 1/2 per column. Stored as a coalesced COO
    matrix; refuses sizes past ``max_bytes`` like ``DenseProjection``.
    """

    def __init__(self, D: int, d: int, seed: int = 0, max_bytes: int | None = None, device="cpu"):
        super().__init__(D, d)
        k = max(1, round(math.sqrt(self.D)))
        # ~64 bytes per non-zero at the peak of construction (int64 draws, unique, COO indices, coalesce)
        _refuse_if_too_big("sparse", self.D, self.d, self.d * k * 64, max_bytes, device)
        g = torch.Generator().manual_seed(seed)
        rows = torch.randint(self.D, (self.d, k), generator=g)
        flat = torch.unique(torch.arange(self.d).unsqueeze(1) * self.D + rows)  # (col, row) pairs, deduped
        cols, rows = flat // self.D, flat % self.D
        per_col = torch.bincount(cols, minlength=self.d).float()
        signs = torch.randint(0, 2, (flat.numel(),), generator=g).float().mul_(2).sub_(1)
        values = signs * per_col.rsqrt()[cols]
        matrix = torch.sparse_coo_tensor(
            torch.stack((rows, cols)), values, (self.D, self.d), check_invariants=False
        ).coalesce()
        self.register_buffer("matrix", matrix.to(device), persistent=False)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        self._check(theta)
        return torch.sparse.mm(self.matrix, theta.to(self.matrix.dtype).unsqueeze(1)).squeeze(1)


def make_projection(kind: str, D: int, d: int, seed: int = 0, max_bytes: int | None = None, device="cpu"):
    """Build ``kind`` in {'fastfood', 'dense', 'sparse'} for a D-dimensional space and a d-dim θ_d."""
    if kind == "fastfood":
        return Fastfood(D, d, seed=seed).to(device)
    if kind == "dense":
        return DenseProjection(D, d, seed=seed, max_bytes=max_bytes, device=device)
    if kind == "sparse":
        return SparseProjection(D, d, seed=seed, max_bytes=max_bytes, device=device)
    raise ValueError(f"Unknown projection {kind!r}; valid: 'fastfood', 'dense', 'sparse'.")
