"""One run: build the model, apply the method, train, evaluate, measure, and write the run directory.

What varies is looked up, never tested by name: the task family (``lora_study.tasks``) loads and encodes the
data, gives the model its head and evaluates it; the method (``lora_study.methods``) prepares the model, forms
ΔW, stores what a user ships and hands back the model used for inference; the family's held-out scorer
(``lora_study.heldout``) measures forgetting. Everything else — the training loop, ΔW's spectra, truncation,
latency, accounting — is shared. With ``train.processes > 1`` each process runs ``execute`` under torchrun
(``lora_study.run.distributed``): all of them train, rank 0 alone writes the run directory and measures the
gathered model after training.
"""
from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .. import __version__, methods, tasks
from . import distributed as dist, learning
from ..accounting import parameter_bytes
from ..artifacts import RunDir
from ..config import Config, validate
from ..device import resolve_device, resolve_precision, torch_threads
from ..heldout import make_scorer
from ..linalg import spectra
from ..loggers import Logger, make_logger
from ..methods.base import pretrained_weights
from ..models import build_model, load_config
from ..models.structure import resolve_targets
from .post_training import intruder_scaling, latency, truncation
from .train import Diverged, train


def _versions() -> Dict[str, str]:
    import peft
    import transformers
    return {"lora_study": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version()}


def _git_commit() -> str:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                           text=True, timeout=5)
        return r.stdout.strip() if r.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _count(params) -> int:
    return sum(p.numel() for p in params)


def _prepare(cfg: Config, method, family, task, device: torch.device, keep: bool = True):
    """The pretrained model with the family's head, prepared by the method: (loaded model, head modules,
    (total, head) parameter counts of the unprepared model, Prepared, and with ``keep`` the copies of W_pre the
    run needs — the method's pretrained scope, and every parameter but the head when truncation resets them)."""
    torch.manual_seed(cfg.train.seed)
    loaded = build_model(cfg.model, family.auto_class, **family.model_kwargs(task),
                         **method.load_options(cfg.method, device))
    family.prepare_model(loaded.model)
    head = family.head_modules(loaded.model)
    counts = (_count(loaded.model.parameters()),
              _count(p for h in head for p in getattr(loaded.model, h).parameters()))
    w_pre = pretrained_weights(loaded.model, method.pretrained_scope(loaded.model, cfg.method)) if keep else {}
    truncating = method.truncates and bool(cfg.run.truncation_ranks) and bool(cfg.run.truncation_scopes)
    # W_pre of every parameter but the head, for truncation scopes that reset the rest of the model
    pretrained = {n: p.detach().clone() for n, p in loaded.model.named_parameters()
                  if not any(n.startswith(h + ".") for h in head)} if truncating and keep else {}
    prepared = method.prepare(loaded.model, cfg.method, head,
                              gradient_checkpointing=bool(cfg.train.gradient_checkpointing))
    return loaded, head, counts, prepared, w_pre, pretrained


def execute(cfg: Config, out: RunDir, device: Optional[torch.device] = None) -> Optional[Dict]:
    """Run one finetune described by ``cfg`` into ``out``; returns the summary that was written. Under torchrun
    (``device`` is then this process's), every process trains and rank 0 alone writes and returns the summary.
    ``train.threads`` sets torch's threads before anything computes (and restores them after)."""
    validate(cfg)
    with torch_threads(cfg.train.threads):
        return _execute(cfg, out, device)


def _execute(cfg: Config, out: RunDir, device: Optional[torch.device]) -> Optional[Dict]:
    started = time.time()
    method = methods.get(cfg.method.name)
    family = tasks.get(cfg.task.family)
    device = resolve_device(cfg.train.device) if device is None else device
    precision = resolve_precision(cfg.train.precision, device)
    method.check_device(cfg.method, device)
    name, _, model_config = load_config(cfg.model)
    family.check_model(name, model_config)
    task = family.load(cfg.task)
    main = dist.is_main()
    loaded, head, (total_params, head_params), prepared, w_pre, pretrained = _prepare(cfg, method, family, task,
                                                                                     device, keep=main)
    truncating = bool(pretrained)
    model = method.to_device(prepared, device)
    tok = loaded.tokenizer
    enc = {r: family.encode(getattr(task, r), tok, cfg.train.max_length) for r in ("train", "validation", "test")}
    evaluate = family.evaluator(task, cfg.task)
    t_prep = time.perf_counter()
    base_key = (loaded.path or loaded.name) + (f"#{method.base_tag}" if method.base_tag else "")
    heldout = make_scorer(cfg.heldout, family.name, model, tok, base_key, device, precision,
                          cfg.train.eval_batch_size) if main else None  # base scores / features at step 0
    t_prep = time.perf_counter() - t_prep

    if main:
        out.clear_outputs()
    logger = make_logger(cfg, out) if main else Logger(None)
    fields = {**method.summary(cfg.method), **{k: cfg.method.get(k) for k in ("said", "alpha") if k in cfg.method}}
    summary: Dict[str, Any] = {
        "status": "running", "member": cfg.run.member, "method": method.name, **method.summary(cfg.method),
        "placement": method.placement(fields, cfg.run.arm or method.name, cfg.run.arm_title, cfg.run.arm_order),
        "seed": int(cfg.train.seed), "lr": float(cfg.optim.lr),
        "model": loaded.name, "family": family.name, "task": task.name, "num_labels": task.num_labels,
        "task_metric": task.metric,
        "base_model": {"name": loaded.name if cfg.model.source != "hf" else cfg.model.name, "path": loaded.path},
        "device": str(device), "precision": precision, "versions": _versions(), "git_commit": _git_commit(),
        "head_trained": bool(cfg.method.train_head and head), "head_modules": head,
        "params": {"total": total_params, "trainable": _count(p for p in model.parameters() if p.requires_grad),
                   "head": head_params},
        "lora_targets": prepared.targets, **prepared.info,
        "examples": {r: len(enc[r]) for r in enc},
        "processes": int(cfg.train.processes), "threads": torch.get_num_threads(),
    }
    strategy = method.distributed if dist.active() else None
    if strategy:
        summary["distributed"] = {"strategy": strategy, "backend": torch.distributed.get_backend(),
                                  "global_batch_size": cfg.train.batch_size * cfg.train.grad_accum * dist.world_size()}
    trained = dist.wrap(model, strategy, device) if strategy else model
    dist.seed_ranks(cfg.train.seed)
    try:
        # held-out probes during training need the whole model in one process: not with FSDP
        probes = heldout and method.probes_during_training and strategy != "fsdp"
        probe = (lambda: {k: v for k, v in heldout.evaluate(model).items() if k != "per_example"}) if probes else None
        result = train(trained, enc["train"], enc["validation"], cfg.train, cfg.optim, device, precision, logger.log,
                       evaluate_fn=evaluate, probe=probe, probe_every=cfg.heldout.every if heldout else 0,
                       group_lrs=method.group_lrs(model, cfg.method))
    except Diverged as e:
        if main:
            summary.update(status="failed", reason=str(e), failed_step=e.step, wall_time_s=time.time() - started)
            out.write_summary(summary)
            logger.finish(summary)
        raise
    per_device = None
    if strategy:
        per_device = dist.gather_stats({"optimizer_state_bytes": result.optimizer_state_bytes,
                                        "gradient_bytes": result.gradient_bytes,
                                        "peak_bytes": result.peak_memory.get("bytes")})
        result.tokens = int(dist.total(result.tokens))
        gathered = dist.gather_model(trained, strategy, rebuild=lambda: _rebuild(cfg, method, family, task, device))
        if not main:
            return None
        prepared, model = (gathered[0] or prepared), gathered[1]
    test, predictions = {}, {}
    phases: Dict[str, float] = {}  # seconds of each pass after training, so a study can say where its time goes
    tick = time.perf_counter()
    if cfg.run.evaluate_test:
        test = evaluate(model, enc["test"], cfg.train.eval_batch_size, device, precision, per_example=True)
        predictions = {f"test.{k}": v for k, v in test.pop("per_example").items()}
        logger.log({"step": result.steps, "split": "test", **test})
        phases["test_s"] = time.perf_counter() - tick
    steady = result.step_times[1:] or result.step_times
    split, examples = ("test", predictions_of(predictions, "test.")) if test else ("validation",
                                                                                  result.validation_examples)
    summary["learning"] = learning.check(split, examples, test or (result.last_validation or {}), task.num_labels,
                                         result.losses)
    summary.update({
        "metrics": _metrics(test, result),
        "steps": result.steps,
        "memory": _memory(result, model, per_device),
        "time": {"mean_step_s": sum(steady) / len(steady) if steady else None,
                 "median_step_s": sorted(steady)[len(steady) // 2] if steady else None,
                 "train_s": sum(result.step_times), "heldout_prepare_s": t_prep,
                 "tokens_per_s": result.tokens / sum(result.step_times) if result.step_times else None},
    })
    saved = {"delta": False, "spectrum": False, "adapter": False, "model": False, "predictions": False}
    tick = time.perf_counter()
    deltas = method.deltas(prepared, model, w_pre)
    summary["placement"]["delta_scope"] = _delta_scope(deltas, prepared)
    if deltas:
        summary["delta_norms"] = {n: float(d.norm()) for n, d in deltas.items()}
        if cfg.run.save_delta:
            out.write_delta(deltas)
            saved["delta"] = True
        if cfg.run.save_spectrum:
            out.write_spectrum(spectra(deltas, device))
            saved["spectrum"] = True
    summary["storage"] = method.storage(model, out, cfg.run, saved)
    model, extra = method.finish(model, cfg.method)
    summary.update(extra)
    phases["delta_and_storage_s"] = time.perf_counter() - tick
    if heldout:
        t0 = time.perf_counter()
        summary["heldout"] = heldout.evaluate(model)
        predictions.update({f"heldout.{k}": v for k, v in summary["heldout"].pop("per_example").items()})
        summary["heldout"]["seconds"] = phases["heldout_s"] = time.perf_counter() - t0
        logger.log({"step": result.steps, "split": "heldout", **summary["heldout"]})
    def test_outputs(data=enc["test"]):
        return evaluate(model, data, cfg.train.eval_batch_size, device, precision, per_example=True)
    targets = prepared.targets or resolve_targets(model, cfg.run.intervention_targets)
    if truncating and deltas:
        tick = time.perf_counter()
        # truncation evaluates 1 + 3 scopes x (k = 0 and each rank) times: on the test split's first examples only
        n_sub = cfg.run.truncation_max_examples
        subset = enc["test"] if not n_sub or n_sub >= len(task.test) else \
            family.encode(task.test.head(int(n_sub)), tok, cfg.train.max_length)
        summary["truncation"] = truncation(model, prepared.analysed, targets, w_pre, deltas, pretrained,
                                           list(cfg.run.truncation_ranks), list(cfg.run.truncation_scopes),
                                           lambda: test_outputs(subset), device)
        summary["truncation"]["examples"] = len(subset)
        predictions.update({f"truncation.{k}": v for k, v in summary["truncation"].pop("per_example").items()})
        phases["truncation_s"] = time.perf_counter() - tick
    if cfg.run.intruder_scaling and deltas and all(t in w_pre for t in targets):
        tick = time.perf_counter()

        def scaled_outputs():
            r = test_outputs()
            examples = {f"test.{k}": v for k, v in r.pop("per_example").items()}
            if heldout:
                r["heldout"] = heldout.evaluate(model)
                examples.update({f"heldout.{k}": v for k, v in r["heldout"].pop("per_example").items()})
            r["per_example"] = examples
            return r
        summary["intruder_scaling"] = intruder_scaling(
            model, targets, w_pre, deltas, cfg.run.intruder_lambda, cfg.run.intruder_eps, cfg.run.intruder_k,
            scaled_outputs)
        predictions.update({f"intruder_scaled.{k}": v for k, v in summary["intruder_scaling"].pop("per_example").items()})
        phases["intruder_scaling_s"] = time.perf_counter() - tick
    if cfg.run.latency:
        tick = time.perf_counter()
        summary["latency"], summary["merge"] = latency(
            model, enc["test"], cfg.train.max_length, list(cfg.run.latency_batches), cfg.run.latency_repeats, device,
            precision, merge=method.merge if method.mergeable else None,
            w_pre={n: w for n, w in w_pre.items() if n in set(prepared.targets or [])})
        phases["latency_s"] = time.perf_counter() - tick
    if predictions:
        out.write_predictions(predictions)
        saved["predictions"] = True
    summary["time"]["after_training"] = phases
    summary.update(status="complete", saved=saved, wall_time_s=time.time() - started)
    out.write_summary(summary)
    logger.finish(summary)
    return summary


def _rebuild(cfg: Config, method, family, task, device: torch.device):
    """A plain copy of the prepared model on ``device`` (FSDP's gathered weights are loaded into it)."""
    prepared = _prepare(cfg, method, family, task, device, keep=False)[3]
    return prepared, method.to_device(prepared, device)


def _delta_scope(deltas: Dict[str, torch.Tensor], prepared) -> Dict[str, Any]:
    """What the saved ΔW covers: the adapted targets, every block linear, or nothing; and the module names."""
    names = sorted(deltas)
    kind = "none" if not names else "targets" if prepared.targets and set(names) == set(prepared.targets) else \
        "block_linears" if set(names) == set(prepared.analysed) else "modules"
    return {"kind": kind, "modules": names}


def predictions_of(predictions: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    return {k[len(prefix):]: v for k, v in predictions.items() if k.startswith(prefix)}


def _memory(result, model, per_device: Optional[Dict[str, list]]) -> Dict:
    """Measured bytes. ``parts`` is the training memory counted deterministically — parameters, gradients,
    optimizer state, and the activations autograd saved for backward at the largest micro-batch — and
    ``training_bytes`` their sum, which reruns of one config reproduce; ``peak_bytes`` is the device's own peak
    (CUDA's allocator, or the process's resident set on a CPU, which moves with the machine). Over several
    processes: optimizer state and gradients summed over the devices, the peak the largest device's, each device's
    values under ``per_device``; parameters of the gathered model."""
    parts = {"parameters": parameter_bytes(model), "gradients": result.gradient_bytes,
             "optimizer_state": result.optimizer_state_bytes, "activations": result.activation_bytes}
    memory = {"optimizer_state_bytes": result.optimizer_state_bytes, "gradient_bytes": result.gradient_bytes,
              "parameter_bytes": parts["parameters"], "activation_bytes": result.activation_bytes,
              "parts": parts, "training_bytes": sum(parts.values()),
              "peak_bytes": result.peak_memory.get("bytes"), "peak_kind": result.peak_memory.get("kind")}
    if per_device:
        peaks = [b for b in per_device["peak_bytes"] if b is not None]
        memory.update(optimizer_state_bytes=sum(per_device["optimizer_state_bytes"]),
                      gradient_bytes=sum(per_device["gradient_bytes"]), peak_bytes=max(peaks) if peaks else None,
                      per_device=per_device)
    return memory


def _metrics(test: Dict, result) -> Dict:
    """Test and validation metrics; ``test_accuracy`` is None for perplexity-only LM tasks and when the test split
    was not evaluated (``run.evaluate_test=false``), and LM tasks add the completion-token perplexities."""
    val, best = result.last_validation or {}, result.best_validation or {}
    m = {"test_accuracy": test.get("accuracy"), "test_loss": test.get("loss"),
         "validation_accuracy": val.get("accuracy"), "best_validation_accuracy": best.get("accuracy")}
    if "perplexity" in test or "perplexity" in best:
        m.update(test_perplexity=test.get("perplexity"), validation_perplexity=val.get("perplexity"),
                 best_validation_perplexity=best.get("perplexity"))
    return m
