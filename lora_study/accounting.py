"""Measured accounting: bytes of the optimizer state, gradients, parameters and saved files, peak memory, and
inference latency."""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import torch


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def local_bytes(t: torch.Tensor) -> int:
    """Bytes this process holds of ``t``: its shard when ``t`` is a sharded DTensor (FSDP), else all of it."""
    return tensor_bytes(t.to_local() if hasattr(t, "to_local") else t)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in this process's optimizer state tensors (AdamW: exp_avg, exp_avg_sq and a step counter per
    tensor)."""
    return sum(local_bytes(v) for state in optimizer.state.values() for v in state.values()
               if isinstance(v, torch.Tensor))


def gradient_bytes(model: torch.nn.Module) -> int:
    """Bytes of the gradients this process holds (its shards under FSDP)."""
    return sum(local_bytes(p.grad) for p in model.parameters() if p.grad is not None)


def parameter_bytes(model: torch.nn.Module) -> int:
    return sum(tensor_bytes(p) for p in model.parameters())


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# -- peak memory -------------------------------------------------------------------------------

class SavedActivations:
    """The bytes autograd saves for backward in one forward pass (the activations), measured through
    ``torch.autograd.graph.saved_tensors_hooks``: each saved tensor's storage counted once, the model's parameters
    (which a linear layer saves to propagate its gradient) left out. ``peak`` is the most over the measured passes.
    Deterministic for a given model, batch and data order, unlike a process's resident memory.

        with saved.measure():
            loss = model(**batch).loss
        loss.backward()
    """

    def __init__(self, model: torch.nn.Module):
        self._params = {k for k in map(self._key, model.parameters()) if k is not None}
        self.peak = 0

    @staticmethod
    def _key(t: torch.Tensor) -> Optional[tuple]:
        """(device, storage address), or None for a tensor whose storage cannot be read (a sharded or freed one)."""
        try:
            s = t.untyped_storage()
            return s.device.type, s.data_ptr()
        except (RuntimeError, NotImplementedError):
            return None

    def measure(self):
        seen: Dict[tuple, int] = {}

        def pack(t: torch.Tensor):
            key = self._key(t)
            if key is not None and key not in self._params and key not in seen:
                seen[key] = t.untyped_storage().nbytes()
            return t

        outer = self

        class _Scope:
            def __enter__(self):
                self.hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
                self.hooks.__enter__()

            def __exit__(self, *exc):
                self.hooks.__exit__(*exc)
                outer.peak = max(outer.peak, sum(seen.values()))
                return False

        return _Scope()


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


@torch.no_grad()
def interleaved_latency(arms: Dict[str, tuple], device: torch.device, repeats: int, warmup: int = 1
                        ) -> Dict[str, list]:
    """Wall times in seconds of several forward passes timed in turn, ``repeats`` rounds, the order rotated every
    round so that no arm always runs first: {arm: [time per round]}. ``arms`` maps a name to (fn, before, after):
    ``before()`` and ``after()`` (or None) run untimed around the arm's call (to swap weights in and out). Timing
    arms side by side in one process lets them share whatever load the machine is under, so their per-round ratios
    hold where absolute times drift between runs."""
    names = list(arms)

    def call(name: str, timed: bool) -> Optional[float]:
        fn, before, after = arms[name]
        if before:
            before()
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        took = time.perf_counter() - t0
        if after:
            after()
        return took if timed else None

    for name in names:
        for _ in range(warmup):
            call(name, False)
    times: Dict[str, list] = {n: [] for n in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(call(name, True))
    return times


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())

