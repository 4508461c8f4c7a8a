"""Time the spectral analysis on Llama-7B-shaped fp32 matrices against plain numpy, in one process.

(a) full spectra: lora_study.linalg.batched_singular_values vs a numpy.linalg.svd(compute_uv=False) loop
(b) top-k (default 64): the randomized path (block Krylov) vs numpy's full SVD cut to the top k, with
    torch.svd_lowrank (q = k + 64, niter = 2) beside it as the plain-subspace-iteration reference.

Both sides get the same fp32 arrays. Goals: >= 1.5x for (a), >= 5x for (b), top-k relative error < 1e-3.

    python benchmarks/spectra.py                  # 4 x (4096 x 4096) and 4 x (4096 x 11008): ~10 min on 2 cores
    python benchmarks/spectra.py --sizes small    # shapes and k / 8, seconds
    python benchmarks/spectra.py --threads 1      # one thread for both libraries

On a machine whose cores are shared with other jobs, multi-threaded LAPACK in both libraries slows
down several-fold (threads wait for each other at every step), so compare runs made under similar
load, and prefer --threads 1 there: it times the libraries rather than the contention.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

from lora_study.linalg import batched_singular_values, randomized_singular_values

SHAPES = {"full": [(4096, 4096), (4096, 11008)], "small": [(512, 512), (512, 1376)]}


def low_rank_plus_noise(m: int, n: int, rank: int, gen: torch.Generator) -> torch.Tensor:
    """U diag(s) V^T with s decaying from 1 to 10^-1.5 over ``rank`` directions, plus Gaussian noise
    whose largest singular value is about 0.02 (a finetuning update's shape of spectrum)."""
    U = torch.linalg.qr(torch.randn(m, rank, generator=gen)).Q
    V = torch.linalg.qr(torch.randn(n, rank, generator=gen)).Q
    s = torch.logspace(0, -1.5, rank)
    noise = torch.randn(m, n, generator=gen) * (0.02 / (m ** 0.5 + n ** 0.5))
    return (U * s) @ V.T + noise


def gaussian(m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(m, n, generator=gen)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def max_rel_err(approx: list, exact: list, k: int) -> float:
    return max(float(np.max(np.abs(np.asarray(a[:k], np.float64) - e[:k]) / e[:k])) for a, e in zip(approx, exact))


def _gram_spectrum(M: torch.Tensor) -> torch.Tensor:
    """sigma = sqrt(eig(X X^T)) on the smaller side, in fp64: not in the library, shown for comparison."""
    X = M.double()
    G = X @ X.mT if X.shape[0] <= X.shape[1] else X.mT @ X
    return torch.linalg.eigvalsh(G).flip(0).clamp_min(0).sqrt()


def bench_shape(mats: list[torch.Tensor], k: int, repeats: int, plain_torch: bool, gram: bool) -> dict:
    arrays = [m.numpy() for m in mats]
    times: dict[str, list[float]] = {}
    out: dict[str, list] = {}

    def numpy_full():
        return [np.linalg.svd(a, compute_uv=False) for a in arrays]

    methods = {
        "numpy svd loop (full)": numpy_full,
        "batched_singular_values (full)": lambda: [s.numpy() for s in batched_singular_values(mats)],
        f"randomized top-{k} (block Krylov)": lambda: [randomized_singular_values(m, k).numpy() for m in mats],
        f"torch.svd_lowrank top-{k} (q=k+64, niter=2)":
            lambda: [torch.svd_lowrank(m, q=k + 64, niter=2)[1].numpy() for m in mats],
    }
    if gram:
        methods["fp64 Gram + eigvalsh (full; reference only)"] = lambda: [_gram_spectrum(m).numpy() for m in mats]
    if plain_torch:
        methods["torch.linalg.svdvals loop, as stored (full)"] = lambda: [torch.linalg.svdvals(m).numpy() for m in mats]
    names = list(methods)
    for rep in range(repeats):
        order = names if rep % 2 == 0 else names[::-1]  # alternate so drifting machine load hits both sides
        for name in order:
            dt, res = timed(methods[name])
            print(f"  {len(mats)} x {tuple(mats[0].shape)} {name}: {dt:.2f} s (load {os.getloadavg()[0]:.1f})",
                  file=sys.stderr, flush=True)
            times.setdefault(name, []).append(dt)
            out[name] = res
    exact = out["numpy svd loop (full)"]
    return {name: (min(times[name]), statistics.median(times[name]), max_rel_err(out[name], exact, k))
            for name in names}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", choices=sorted(SHAPES), default="full")
    p.add_argument("--count", type=int, default=4, help="matrices per shape")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per method (median reported)")
    p.add_argument("--k", type=int, default=None, help="top-k for part (b) (default 64; 8 with --sizes small)")
    p.add_argument("--kind", choices=["lowrank", "gaussian"], default="lowrank",
                   help="low-rank-plus-noise (rank 256) or Gaussian (flat spectrum: the hard case for top-k)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for both torch and numpy's BLAS (default: each library's own choice)")
    p.add_argument("--plain-torch", action="store_true",
                   help="also time torch.linalg.svdvals on the matrices as stored (wide ones are slow)")
    p.add_argument("--gram", action="store_true",
                   help="also time sigma = sqrt(eigvalsh(X X^T)) in fp64 (an alternative full-spectrum route)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.k is None:
        args.k = 64 if args.sizes == "full" else 8
    for name in ("count", "repeats", "k"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.threads:
        from threadpoolctl import threadpool_limits  # numpy's OpenBLAS; torch has its own setting

        threadpool_limits(args.threads)
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    for m, n in SHAPES[args.sizes]:
        if args.kind == "lowrank":
            mats = [low_rank_plus_noise(m, n, min(256, m // 2), gen) for _ in range(args.count)]
        else:
            mats = [gaussian(m, n, gen) for _ in range(args.count)]
        res = bench_shape(mats, args.k, args.repeats, args.plain_torch, args.gram)
        base = res["numpy svd loop (full)"][0]
        for name, (t, med, err) in res.items():
            rows.append((f"{args.count} x {m}x{n}", name, t, med, base / t, err))
        del mats

    print(f"\n{args.kind} fp32 matrices, {args.repeats} run(s) each, methods alternating; time = for all matrices"
          f" of the shape (min and median over runs); speed-up = numpy's min time / min time;"
          f" err = max relative error of the top {args.k} vs numpy's full SVD\n")
    w = max(len(r[1]) for r in rows)
    print(f"{'matrices':<16} {'method':<{w}} {'min s':>8} {'median s':>9} {'speed-up':>9} {'max rel err top-k':>18}")
    for shape, name, t, med, speed, err in rows:
        print(f"{shape:<16} {name:<{w}} {t:8.2f} {med:9.2f} {speed:8.2f}x {err:18.2e}")

    def total(prefix):
        return sum(r[2] for r in rows if r[1].startswith(prefix))

    full = total("numpy") / total("batched_singular_values")
    topk = total("numpy") / total("randomized")
    err = max(r[5] for r in rows if r[1].startswith("randomized"))
    print(f"\nall shapes: full spectra {full:.2f}x (goal >= 1.5x: {'met' if full >= 1.5 else 'NOT met'}); "
          f"top-{args.k} {topk:.2f}x (goal >= 5x: {'met' if topk >= 5 else 'NOT met'}); "
          f"top-{args.k} max rel err {err:.1e} (goal < 1e-3: {'met' if err < 1e-3 else 'NOT met'})")
    print(f"load average at end {os.getloadavg()[0]:.1f} (the machine may be shared: compare within one run)")


if __name__ == "__main__":
    main()
