"""Median training-step time and peak memory: full finetuning vs LoRA r ∈ {1, 8, 64} on the default
model and task, and the same LoRA r=8 run through transformers' Trainer + peft, side by side in one
process. Prints a table of times and ratios.

    python benchmarks/train_step.py --steps 30

Goals: LoRA r=8 step ≤ 0.65 × full-FT step on CPU; our loop ≥ 1.0 × the Trainer's throughput.
Peak memory is the process's peak RSS (CPU, reset between configurations) or CUDA max allocated.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lora_study import methods  # noqa: E402
from lora_study.config import OptimConfig, TrainConfig  # noqa: E402
from lora_study.models import ModelConfig  # noqa: E402
from lora_study.tasks import TaskConfig  # noqa: E402
from lora_study.tasks.classification import ClassificationFamily, Encoded, Split, load_task  # noqa: E402
from lora_study.accounting import peak_memory, reset_peak_memory  # noqa: E402
from lora_study.models import build_model  # noqa: E402
from lora_study.device import resolve_device  # noqa: E402
from lora_study.run.train import train  # noqa: E402


def prepared(method, num_labels: int):
    torch.manual_seed(0)
    family = ClassificationFamily()
    loaded = build_model(ModelConfig(), family.auto_class, num_labels=num_labels)
    return methods.get(method.name).prepare(loaded.model, method, family.head_modules(loaded.model)).model, \
        loaded.tokenizer


def ours(method, lr: float, task, steps: int, device, batch: int, max_length: int):
    model, tok = prepared(method, task.num_labels)
    model.to(device)
    enc_train = Encoded(task.train, tok, max_length)
    # validation is not what is timed: keep it negligible
    enc_val = Encoded(Split(task.validation.texts[:8], task.validation.labels[:8]), tok, max_length)
    cfg = TrainConfig(max_steps=steps, batch_size=batch, max_length=max_length, eval_every=10 ** 9, log_every=10 ** 9)
    gc.collect()
    res = train(model, enc_train, enc_val, cfg, OptimConfig(lr=lr), device, "fp32", lambda r: None,
                evaluate_fn=ClassificationFamily().evaluator(task, TaskConfig()))
    steady = res.step_times[2:]
    return statistics.median(steady), res.peak_memory["bytes"], res.tokens / sum(res.step_times)


def trainer(method, lr: float, task, steps: int, device, batch: int, max_length: int):
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    model, tok = prepared(method, task.num_labels)
    ds = Dataset.from_dict({"text": task.train.texts, "label": task.train.labels})
    ds = ds.map(lambda b: tok(b["text"], truncation=True, max_length=max_length), batched=True, remove_columns=["text"])
    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    import math
    import tempfile
    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="lora-study-bench-"), max_steps=steps,
                             per_device_train_batch_size=batch, learning_rate=lr,
                             warmup_steps=int(math.ceil(0.06 * steps)), lr_scheduler_type="linear", report_to=[],
                             save_strategy="no", logging_strategy="no", use_cpu=device.type == "cpu",
                             dataloader_num_workers=0, seed=0, disable_tqdm=True)
    gc.collect()
    reset_peak_memory(device)
    Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tok),
            callbacks=[Timer()]).train()
    return statistics.median(times[2:]), peak_memory(device)["bytes"], None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--no-trainer", action="store_true", help="skip the transformers Trainer comparison")
    ap.add_argument("--only", nargs="*", help="configurations to time, e.g. --only full 'lora r=8'")
    a = ap.parse_args()
    device = resolve_device("auto")
    task = load_task(TaskConfig())
    rows = []
    configs = [("full", methods.get("full").schema(name="full"), 5e-5)] + [
        (f"lora r={r}", methods.get("lora").schema(name="lora", rank=r, alpha=2 * r), 5e-4) for r in (1, 8, 64)]
    if a.only:
        configs = [c for c in configs if c[0] in a.only]
    for name, m, lr in configs:
        t, mem, tps = ours(m, lr, task, a.steps, device, a.batch_size, a.max_length)
        rows.append((name + " (lora-study loop)", t, mem, tps))
        print(f"{rows[-1][0]:34s} {t * 1e3:8.1f} ms/step", flush=True)
    if not a.no_trainer:
        t, mem, _ = trainer(methods.get("lora").schema(name="lora", rank=8, alpha=16), 5e-4, task, a.steps, device,
                            a.batch_size, a.max_length)
        rows.append(("lora r=8 (transformers Trainer)", t, mem, None))
    full_t = rows[0][1]
    ours_r8 = next((r[1] for r in rows if r[0].startswith("lora r=8 (lora")), float("nan"))
    print(f"\n{device.type}, batch {a.batch_size}, max_length {a.max_length}, {a.steps} steps each "
          f"(median of steps 3..{a.steps}), torch threads {torch.get_num_threads()}")
    print(f"| configuration | median step (ms) | × {rows[0][0]} | peak memory (MiB) |")
    print("|---|---:|---:|---:|")
    for name, t, mem, _ in rows:
        print(f"| {name} | {t * 1e3:.1f} | {t / full_t:.2f} | {mem / 2 ** 20:.0f} |")
    if configs and configs[0][0] == "full":
        print(f"\nLoRA r=8 / full FT step: {ours_r8 / full_t:.2f} (goal ≤ 0.65)")
    if not a.no_trainer:
        print(f"our loop throughput / Trainer throughput (LoRA r=8): {rows[-1][1] / ours_r8:.2f} (goal ≥ 1.0)")


if __name__ == "__main__":
    main()
