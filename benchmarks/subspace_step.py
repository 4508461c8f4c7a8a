"""Training-step time and memory of Fastfood subspace training (d = 1,000 and d = 100,000) against full
finetuning on the default model and task, side by side in one process. Prints a table of times and ratios.

    python benchmarks/subspace_step.py --steps 12

The configurations take turns step by step (full, d=1e3, d=1e5, full, ...) on the same pre-tokenised
batches, so drifts in machine load hit them alike. Each step mirrors ``lora_study.run.train.train``: autocast
forward, backward, gradient clipping, AdamW over the trainable parameters (``model.trainable_parameters()``
for subspace: θ_d and the head), the warmup/linear schedule, ``zero_grad(set_to_none=True)``.

Goal: a subspace step ≤ 2.0 × the full-FT step. Memory: a subspace step needs O(D) beyond the model
(P θ_d, θ0 + Δ, their gradients) and O(d) optimizer state, whatever d is; full finetuning's AdamW keeps
2 D floats. "step peak" is the peak during a step minus the memory held just before it (CPU: peak RSS,
reset between steps, after returning freed heap to the OS; CUDA: max allocated).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lora_study import methods  # noqa: E402
from lora_study.config import OptimConfig  # noqa: E402
from lora_study.models import ModelConfig  # noqa: E402
from lora_study.tasks import TaskConfig  # noqa: E402
from lora_study.tasks.classification import ClassificationFamily, Encoded, Split, load_task  # noqa: E402
from lora_study.accounting import optimizer_state_bytes, peak_memory, reset_peak_memory, tensor_bytes  # noqa: E402
from lora_study.models import build_model  # noqa: E402
from lora_study.device import autocast, resolve_device, resolve_precision, to_device  # noqa: E402
from lora_study.run.train import make_optimizer, make_schedule  # noqa: E402

MiB = 2 ** 20


def current_memory(device: torch.device) -> int:
    """Memory held now: CUDA bytes allocated, or the process's resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc), so the next step's peak RSS is its own."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Config:
    """One model being trained: the method applied, its optimizer and schedule, its timings."""

    def __init__(self, name: str, method, lr: float, num_labels: int, steps: int, device):
        torch.manual_seed(0)
        family = ClassificationFamily()
        loaded = build_model(ModelConfig(), family.auto_class, num_labels=num_labels)
        self.tokenizer = loaded.tokenizer
        self.model = methods.get(method.name).prepare(loaded.model, method,
                                                      family.head_modules(loaded.model)).model.to(device)
        self.name, self.device = name, device
        self.params = (self.model.trainable_parameters() if hasattr(self.model, "trainable_parameters")
                       else [p for p in self.model.parameters() if p.requires_grad])
        self.optim_cfg = OptimConfig(lr=lr)
        self.optimizer = make_optimizer(self.params, self.optim_cfg)
        self.schedule = make_schedule(self.optimizer, self.optim_cfg, steps)
        self.times, self.step_peaks, self.peaks = [], [], []
        self.model.train()

    def step(self, batch, precision: str) -> None:
        _trim_heap()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        reset_peak_memory(self.device)
        held = current_memory(self.device)
        t0 = time.perf_counter()
        batch = to_device(batch, self.device)
        with autocast(self.device, precision):
            loss = self.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.optim_cfg.max_grad_norm)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter() - t0)
        peak = peak_memory(self.device)["bytes"]
        self.peaks.append(peak)
        self.step_peaks.append(peak - held)

    def trainable(self) -> int:
        return sum(p.numel() for p in self.params)

    def resident_bytes(self) -> int:
        """Parameters (θ0 included), buffers (the Fastfood draws) and optimizer state kept between steps."""
        return (sum(tensor_bytes(p) for p in self.model.parameters()) + sum(tensor_bytes(b) for b in self.model.buffers())
                + optimizer_state_bytes(self.optimizer))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=12, help="timed steps per configuration (the first 2 are warm-up)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--dims", type=int, nargs="+", default=[1000, 100000])
    a = ap.parse_args()
    device = resolve_device("auto")
    precision = resolve_precision("auto", device)
    task = load_task(TaskConfig())
    specs = [("full FT", methods.get("full").schema(name="full"), 5e-5)] + [
        (f"subspace DID d={d:,}", methods.get("subspace").schema(name="subspace", d=d, projection="fastfood"), 1e-2) for d in a.dims]
    configs = []
    for name, m, lr in specs:
        t0 = time.perf_counter()
        configs.append(Config(name, m, lr, task.num_labels, a.steps, device))
        print(f"built {name} in {time.perf_counter() - t0:.1f} s", flush=True)
    enc = Encoded(task.train, configs[0].tokenizer, a.max_length)
    it = enc.train_batches(a.batch_size, seed=0)
    batches = [next(it) for _ in range(a.steps)]  # tokenised once, the same batches for every configuration
    for i, batch in enumerate(batches):
        for c in configs:  # interleaved: each configuration takes one step in turn
            c.step(batch, precision)
        print(f"step {i + 1}/{a.steps}: " + ", ".join(f"{c.name} {c.times[-1] * 1e3:.0f} ms" for c in configs), flush=True)
    skip = 2 if a.steps > 4 else 0
    med = {c.name: statistics.median(c.times[skip:]) for c in configs}
    full = med[configs[0].name]
    kind = peak_memory(device)["kind"]
    print(f"\n{device.type} ({precision}), batch {a.batch_size}, max_length {a.max_length}, {a.steps} interleaved steps each "
          f"(median of steps {skip + 1}..{a.steps}), torch threads {torch.get_num_threads()}; memory: {kind}")
    print("| configuration | trainable params | median step (ms) | × full FT | step peak (MiB) | resident params + "
          "buffers + optimizer (MiB) | process peak (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for c in configs:
        print(f"| {c.name} | {c.trainable():,} | {med[c.name] * 1e3:.1f} | {med[c.name] / full:.2f} | "
              f"{statistics.median(c.step_peaks[skip:]) / MiB:.0f} | {c.resident_bytes() / MiB:.0f} | "
              f"{max(c.peaks) / MiB:.0f} |")
    worst = max(med[c.name] for c in configs[1:])
    print(f"\nslowest subspace step / full-FT step: {worst / full:.2f} (goal ≤ 2.0)")
    subs = configs[1:]
    if len(subs) >= 2:
        lo, hi = subs[0], subs[-1]
        print(f"step peak at {hi.name} minus at {lo.name}: "
              f"{(statistics.median(hi.step_peaks[skip:]) - statistics.median(lo.step_peaks[skip:])) / MiB:+.0f} MiB "
              f"(d grows {hi.trainable() / lo.trainable():.0f}×; D = {hi.model.D:,})")


if __name__ == "__main__":
    main()
