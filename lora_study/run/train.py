"""One training loop for every method: AdamW, warmup then linear/cosine decay, gradient accumulation,
periodic validation, bf16 autocast on CUDA. The loop knows nothing of the method: it trains whatever
parameters require gradients. It knows nothing of the task either beyond ``evaluate_fn``, the task family's
evaluator. Over several processes (``lora_study.run.distributed``) it trains the wrapped model on this process's
slice of each global batch; with one process those calls change nothing."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from tqdm.auto import tqdm

from . import distributed as dist
from ..accounting import SavedActivations, gradient_bytes, optimizer_state_bytes, peak_memory, reset_peak_memory
from ..config import OptimConfig, TrainConfig
from ..device import autocast, to_device


class Diverged(RuntimeError):
    def __init__(self, step: int, loss: float):
        super().__init__(f"the training loss became {loss} at step {step}; lower optim.lr or check the data.")
        self.step = step


def validation_score(metrics: Dict[str, Optional[float]]) -> float:
    """Higher is better: accuracy when the task has one, else −loss (lower perplexity is better)."""
    acc = metrics.get("accuracy")
    return float(acc) if acc is not None else -float(metrics["loss"])


@dataclass
class TrainResult:
    steps: int
    step_times: List[float] = field(default_factory=list)
    tokens: int = 0
    optimizer_state_bytes: int = 0
    gradient_bytes: int = 0
    peak_memory: Dict[str, object] = field(default_factory=dict)
    best_validation: Optional[Dict[str, float]] = None
    last_validation: Optional[Dict[str, float]] = None
    losses: List[float] = field(default_factory=list)  # the training loss of every step
    activation_bytes: int = 0  # the most bytes autograd saved for backward in one micro-batch (activations)
    validation_examples: Optional[Dict[str, object]] = None  # per-example outputs of the last validation


def make_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, foreach=False)


def param_groups(params: list, group_lrs: Optional[Dict[int, float]] = None) -> list:
    """AdamW parameter groups: the parameters whose id() is in ``group_lrs`` get their own learning rate
    (one group per rate); the rest share optim.lr. The schedule scales every group alike."""
    if not group_lrs:
        return params
    groups: Dict[Optional[float], list] = {}
    for p in params:
        groups.setdefault(group_lrs.get(id(p)), []).append(p)
    return [{"params": ps} if lr is None else {"params": ps, "lr": float(lr)} for lr, ps in groups.items()]


def make_schedule(optimizer, cfg: OptimConfig, max_steps: int):
    from transformers import get_scheduler
    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=int(math.ceil(cfg.warmup_ratio * max_steps)),
                         num_training_steps=max_steps)


def train(model, train_data, val_data, cfg: TrainConfig, optim_cfg: OptimConfig, device: torch.device, precision: str,
          log: Callable[[Dict], None], evaluate_fn: Callable[..., Dict], probe: Optional[Callable[[], Dict]] = None,
          probe_every: int = 0, group_lrs: Optional[Dict[int, float]] = None) -> TrainResult:
    """Train the parameters that require gradients; ``probe`` (held-out evaluation) runs every
    ``probe_every`` steps when both are given; ``evaluate_fn(model, data, batch_size, device, precision)``
    validates every ``cfg.eval_every`` steps; ``group_lrs`` maps id(parameter) to its own learning rate.
    Under torchrun ``model`` is DDP- or FSDP-wrapped: each process takes its slice of a global batch of
    ``cfg.batch_size × processes``, the logged loss is the global batch's, and every process validates."""
    params = [p for p in model.parameters() if p.requires_grad]
    result = TrainResult(steps=0)
    if not params:  # the frozen base without a head (or a causal LM with method=none): evaluation only
        val = evaluate_fn(dist.unwrap(model), val_data, cfg.eval_batch_size, device, precision, per_example=True)
        result.validation_examples = val.pop("per_example", None)
        result.last_validation = result.best_validation = val
        log({"step": 0, "split": "validation", **result.last_validation})
        return result
    optimizer = make_optimizer(param_groups(params, group_lrs), optim_cfg)
    schedule = make_schedule(optimizer, optim_cfg, cfg.max_steps)
    batches = train_data.train_batches(cfg.batch_size * dist.world_size(), cfg.seed)
    model.train()
    reset_peak_memory(device)
    saved = SavedActivations(model)
    bar = tqdm(range(1, cfg.max_steps + 1), desc="train", dynamic_ncols=True, mininterval=2.0,
               disable=not dist.is_main())
    for step in bar:
        t0 = time.perf_counter()
        loss_total = 0.0
        for _ in range(cfg.grad_accum):
            batch = to_device(dist.shard_batch(next(batches)), device)
            result.tokens += int(batch["attention_mask"].sum())
            with saved.measure(), autocast(device, precision):
                loss = model(**batch).loss / cfg.grad_accum
            loss.backward()
            loss_total += float(loss.detach())
        loss_total = dist.mean(loss_total)  # every process sees the same loss, so all stop together on a NaN
        if not math.isfinite(loss_total):
            raise Diverged(step, loss_total)
        result.losses.append(loss_total)
        if step == 1:
            result.gradient_bytes = gradient_bytes(model)
        if optim_cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, optim_cfg.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result.step_times.append(time.perf_counter() - t0)
        result.steps = step
        if step % cfg.log_every == 0 or step == 1:
            log({"step": step, "split": "train", "loss": loss_total, "lr": schedule.get_last_lr()[0]})
            bar.set_postfix(loss=f"{loss_total:.3f}")
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            last = step == cfg.max_steps  # the last validation keeps its per-example outputs (did the run learn?)
            val = evaluate_fn(dist.unwrap(model), val_data, cfg.eval_batch_size, device, precision, per_example=last)
            if last:
                result.validation_examples = val.pop("per_example", None)
            log({"step": step, "split": "validation", **val})
            bar.set_postfix(loss=f"{loss_total:.3f}", val=f"{validation_score(val):.3f}")
            result.last_validation = val
            if result.best_validation is None or validation_score(val) > validation_score(result.best_validation):
                result.best_validation = {**val, "step": step}
        if probe is not None and probe_every > 0 and step % probe_every == 0 and step < cfg.max_steps:
            log({"step": step, "split": "heldout", **probe()})
            model.train()
    result.peak_memory = peak_memory(device)
    result.activation_bytes = saved.peak
    result.optimizer_state_bytes = optimizer_state_bytes(optimizer)
    del optimizer
    return result
