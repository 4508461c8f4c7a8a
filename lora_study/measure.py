"""Measured accounting: memory of the optimizer state, gradients and parameters, peak memory, latency,
spectra of ΔW and the best rank-k truncation of ΔW (Eckart–Young)."""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import torch


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer's state tensors (AdamW: exp_avg, exp_avg_sq and a step counter per tensor)."""
    return sum(tensor_bytes(v) for state in optimizer.state.values() for v in state.values()
               if isinstance(v, torch.Tensor))


def gradient_bytes(model: torch.nn.Module) -> int:
    return sum(tensor_bytes(p.grad) for p in model.parameters() if p.grad is not None)


def parameter_bytes(model: torch.nn.Module) -> int:
    return sum(tensor_bytes(p) for p in model.parameters())


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# -- peak memory -------------------------------------------------------------------------------

def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 to clear_refs resets the process's peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory(device: torch.device) -> Dict[str, object]:
    if device.type == "cuda":
        return {"bytes": int(torch.cuda.max_memory_allocated(device)), "kind": "cuda_max_allocated"}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return {"bytes": int(line.split()[1]) * 1024, "kind": "cpu_peak_rss"}
    except OSError:
        pass
    import resource
    scale = 1 if os.uname().sysname == "Darwin" else 1024
    return {"bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale, "kind": "cpu_peak_rss_process"}


# -- latency -----------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def median_latency(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time in seconds of ``fn`` over ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# -- spectra and truncation --------------------------------------------------------------------

@torch.no_grad()
def spectra(deltas: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    """Singular values of every ΔW, batched over matrices of equal shape, on the run's device."""
    by_shape: Dict[tuple, list] = {}
    for name, d in deltas.items():
        by_shape.setdefault(tuple(d.shape), []).append(name)
    out = {}
    for names in by_shape.values():
        stack = torch.stack([deltas[n].float() for n in names]).to(device)
        s = torch.linalg.svdvals(stack).cpu()
        out.update({n: s[i] for i, n in enumerate(names)})
    return out


@torch.no_grad()
def truncate(delta: torch.Tensor, k: int) -> torch.Tensor:
    """trunc_k(ΔW) = U_k diag(σ_1..σ_k) V_kᵀ, the best rank-k approximation in Frobenius and spectral norm."""
    if k >= min(delta.shape):
        return delta
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    return (u[:, :k] * s[:k]) @ vh[:k]


@torch.no_grad()
def top_singular(delta: torch.Tensor, k: int, device: Optional[torch.device] = None) -> tuple:
    """(U_k diag(σ_1..σ_k), V_kᵀ) from one SVD, so that trunc_j(ΔW) = (U_k Σ_k)[:, :j] V_kᵀ[:j] for every j ≤ k
    without another decomposition (a study truncates each ΔW at several ranks)."""
    u, s, vh = torch.linalg.svd(delta.float().to(device or delta.device), full_matrices=False)
    k = min(k, len(s))
    return (u[:, :k] * s[:k]).cpu(), vh[:k].cpu()


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())

