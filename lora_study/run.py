"""One run: build the model, apply the method, train, evaluate, measure, and write the run directory.

Encoders train a classification head on a labelled task (``task.kind=cls``); causal LMs train on prompt →
completion pairs with the loss on completion tokens only (``task.kind=lm``), evaluated by exact match of
greedy answers or by perplexity (``lora_study.lm_eval``). Everything else — methods, the training loop,
ΔW, spectra, held-out evaluation, latency — is shared."""
from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path
from typing import Dict, List

import torch

from . import __version__
from .artifacts import RunDir
from .config import LORA_METHODS, Config, ConfigError, validate
from .data import Encoded
from .heldout import maybe_heldout
from .lm_data import LMEncoded
from .lm_eval import lm_evaluator
from .lm_tasks import load_lm_task
from .loggers import make_logger
from .measure import (dir_bytes, max_abs_diff, median_latency, parameter_bytes, spectra, tensor_bytes, top_singular)
from .methods import apply_method, base_module, lora_deltas, trainable_count
from .models import build_model, head_module_names, model_kind
from .tasks import load_task
from .train import Diverged, evaluate, resolve_device, resolve_precision, to_device, train


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


def _check_start(cfg: Config, device: torch.device) -> None:
    """Refusals that need no model weights: QLoRA off CUDA, a task of the wrong kind for the model."""
    if cfg.method.name == "qlora":
        if device.type != "cuda":
            raise ConfigError(f"method=qlora needs a CUDA GPU for its 4-bit NF4 base (bitsandbytes), but this run's "
                              f"device is {device.type}; use method=lora here.")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise ConfigError("method=qlora needs the package bitsandbytes; install it with "
                              "`pip install bitsandbytes` on the CUDA machine.") from e
    kind = model_kind(cfg.model)
    if kind == "causal" and cfg.task.kind != "lm":
        raise ConfigError(f"model.source={cfg.model.source} is a causal LM and task.kind={cfg.task.kind} is a classification "
                          "task; give it a language-modelling task such as task=lm_review_label (or model.kind=encoder).")
    if kind == "encoder" and cfg.task.kind == "lm":
        raise ConfigError(f"task.kind=lm needs a causal LM but model.source={cfg.model.source} is an encoder; use e.g. "
                          "model=smollm2_135m.")


def execute(cfg: Config, out: RunDir) -> Dict:
    """Run one finetune described by ``cfg`` into ``out``; returns the summary that was written."""
    validate(cfg)
    started = time.time()
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    _check_start(cfg, device)
    lm = cfg.task.kind == "lm"
    qlora = cfg.method.name == "qlora"
    task = load_lm_task(cfg.task) if lm else load_task(cfg.task)
    torch.manual_seed(cfg.train.seed)
    loaded = build_model(cfg.model, task.num_labels, quantize_4bit=qlora, device=device)
    if lm:
        loaded.model.config.use_cache = False  # training needs no cache; generation asks for one explicitly
    head = head_module_names(loaded.model, loaded.kind)
    total_params = _count(loaded.model.parameters())
    head_params = _count(p for h in head for p in getattr(loaded.model, h).parameters())
    prepared = apply_method(loaded.model, cfg.method, head, gradient_checkpointing=bool(cfg.train.gradient_checkpointing))
    w_pre = {n: base_module(prepared.model, n).weight.detach().float().cpu().clone() for n in prepared.analysed} \
        if cfg.method.name == "full" else {}
    model = prepared.model if qlora else prepared.model.to(device)  # a 4-bit model is loaded onto its device
    tok = loaded.tokenizer
    encode = LMEncoded if lm else Encoded
    enc = {r: encode(getattr(task, r), tok, cfg.train.max_length) for r in ("train", "validation", "test")}
    evaluator = lm_evaluator(task.metric, cfg.task.max_new_tokens) if lm else evaluate
    t_prep = time.perf_counter()
    base_key = (loaded.path or loaded.name) + ("#nf4" if qlora else "")
    heldout = maybe_heldout(cfg.heldout, model, tok, base_key, device, loaded.kind, precision,
                            cfg.train.eval_batch_size)  # base scores / features at step 0
    t_prep = time.perf_counter() - t_prep

    out.clear_outputs()
    logger = make_logger(cfg, out)
    summary = {
        "status": "running", "member": cfg.run.member, "method": cfg.method.name,
        "rank": int(cfg.method.rank) if cfg.method.name in LORA_METHODS else None,
        "d": int(cfg.method.d) if cfg.method.name == "subspace" else None,
        "seed": int(cfg.train.seed), "lr": float(cfg.optim.lr),
        "model": loaded.name, "kind": loaded.kind, "task": task.name, "num_labels": task.num_labels,
        "task_kind": cfg.task.kind, "task_metric": task.metric if lm else "accuracy",
        "base_model": {"name": loaded.name if cfg.model.source != "hf" else cfg.model.name, "path": loaded.path},
        "device": str(device), "precision": precision, "versions": _versions(), "git_commit": _git_commit(),
        "head_trained": bool(cfg.method.train_head and head), "head_modules": head,
        "params": {"total": total_params, "trainable": trainable_count(model), "head": head_params},
        "lora_targets": prepared.targets,
        "examples": {r: len(enc[r]) for r in enc},
    }
    try:
        # subspace models keep θ0 in their modules until merged, so they are probed at the end only
        probe = (lambda: heldout.evaluate(model)) if heldout and cfg.method.name != "subspace" else None
        head_lr = cfg.method.get("head_lr") if cfg.method.name == "subspace" else None
        group_lrs = {id(p): float(head_lr) for p in model.direct_parameters} if head_lr else None
        result = train(model, enc["train"], enc["validation"], cfg.train, cfg.optim, device, precision, logger.log,
                       probe=probe, probe_every=cfg.heldout.every if heldout else 0, evaluate_fn=evaluator,
                       group_lrs=group_lrs)
    except Diverged as e:
        summary.update(status="failed", reason=str(e), failed_step=e.step, wall_time_s=time.time() - started)
        out.write_summary(summary)
        logger.finish(summary)
        raise
    test = evaluator(model, enc["test"], cfg.train.eval_batch_size, device, precision)
    logger.log({"step": result.steps, "split": "test", **test})
    steady = result.step_times[1:] or result.step_times
    summary.update({
        "metrics": _metrics(test, result),
        "steps": result.steps,
        "memory": {"optimizer_state_bytes": result.optimizer_state_bytes, "gradient_bytes": result.gradient_bytes,
                   "parameter_bytes": parameter_bytes(model), "peak_bytes": result.peak_memory.get("bytes"),
                   "peak_kind": result.peak_memory.get("kind")},
        "time": {"mean_step_s": sum(steady) / len(steady) if steady else None,
                 "median_step_s": sorted(steady)[len(steady) // 2] if steady else None,
                 "train_s": sum(result.step_times), "heldout_prepare_s": t_prep,
                 "tokens_per_s": result.tokens / sum(result.step_times) if result.step_times else None},
    })
    saved = {"delta": False, "spectrum": False, "adapter": False, "model": False}
    deltas = _deltas(cfg, prepared, model, w_pre)
    if deltas:
        summary["delta_norms"] = {n: float(d.norm()) for n, d in deltas.items()}
        if cfg.run.save_delta:
            out.write_delta(deltas)
            saved["delta"] = True
        if cfg.run.save_spectrum:
            out.write_spectrum(spectra(deltas, device))
            saved["spectrum"] = True
    summary["storage"] = _storage(cfg, model, out, saved)
    if cfg.method.name == "subspace":
        summary["subspace"] = {"d": model.d, "D": model.D, "projection": cfg.method.projection, "said": bool(cfg.method.said),
                               "head_lr": float(cfg.method.head_lr) if cfg.method.get("head_lr") else float(cfg.optim.lr),
                               "subspace_params": model.num_subspace_params, "direct_params": model.num_direct_params}
        model = model.merge_into_base()  # θ0 + P θ_d written into the model: probes and latency see a plain model
    if heldout:
        t0 = time.perf_counter()
        summary["heldout"] = heldout.evaluate(model)
        summary["heldout"]["seconds"] = time.perf_counter() - t0
        logger.log({"step": result.steps, "split": "heldout", **summary["heldout"]})
    if cfg.method.name == "full" and cfg.run.truncation_ranks:
        summary["truncation"] = _truncation(cfg, model, prepared.analysed, w_pre, deltas, enc["test"], device,
                                            precision, test, evaluator)
    if cfg.run.latency:
        summary["latency"], summary["merge"] = _latency(cfg, model, enc["test"], device, precision)
    summary.update(status="complete", saved=saved, wall_time_s=time.time() - started)
    out.write_summary(summary)
    logger.finish(summary)
    return summary


def _metrics(test: Dict, result) -> Dict:
    """Test and validation metrics; ``test_accuracy`` is None for perplexity-only LM tasks, and LM tasks add
    the completion-token perplexities."""
    val, best = result.last_validation or {}, result.best_validation or {}
    m = {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "validation_accuracy": val.get("accuracy"),
         "best_validation_accuracy": best.get("accuracy")}
    if "perplexity" in test:
        m.update(test_perplexity=test["perplexity"], validation_perplexity=val.get("perplexity"),
                 best_validation_perplexity=best.get("perplexity"))
    return m


def _deltas(cfg: Config, prepared, model, w_pre) -> Dict[str, torch.Tensor]:
    if cfg.method.name == "full":
        return {n: base_module(model, n).weight.detach().float().cpu() - w for n, w in w_pre.items()}
    if cfg.method.name in LORA_METHODS:
        return lora_deltas(model)
    if cfg.method.name == "subspace":
        names = [n + ".weight" for n in prepared.analysed]
        return {n[:-len(".weight")]: d.float().cpu() for n, d in model.deltas(names).items()}
    return {}


def _storage(cfg: Config, model, out: RunDir, saved: Dict[str, bool]) -> Dict:
    """Bytes a user ships per task: the adapter for LoRA, the whole model for full finetuning."""
    if cfg.method.name in LORA_METHODS:
        model.save_pretrained(out.adapter_dir())
        saved["adapter"] = True
        return {"bytes": dir_bytes(out.adapter_dir()), "basis": "adapter directory (peft format)"}
    if cfg.method.name == "full":
        if cfg.run.save_model:
            model.save_pretrained(out.model_dir())
            saved["model"] = True
            return {"bytes": dir_bytes(out.model_dir()), "basis": "saved model directory"}
        return {"bytes": sum(tensor_bytes(t) for t in model.state_dict().values()),
                "basis": "model state dict (fp32), the size of a full copy"}
    if cfg.method.name == "subspace":
        return {"bytes": 4 * sum(p.numel() for p in model.trainable_parameters()),
                "basis": "θ_d, scalars and head in fp32 (the projection is regenerated from its seed)"}
    head = [p for p in model.parameters() if p.requires_grad]
    return {"bytes": sum(tensor_bytes(p) for p in head), "basis": "classification head"}


@torch.no_grad()
def _truncation(cfg, model, analysed: List[str], w_pre, deltas, test: Encoded, device, precision, full: Dict,
                evaluator) -> Dict:
    """The test metric of W_pre + trunc_k(ΔW), every analysed ΔW truncated to rank k at once; other
    parameters (embeddings, biases, norms, heads) keep their finetuned values. LM tasks also record perplexity."""
    weights = {n: base_module(model, n).weight for n in analysed}
    finetuned = {n: w.detach().clone() for n, w in weights.items()}
    results = []
    max_dim = max(min(d.shape) for d in deltas.values())
    ks = sorted(k for k in set(int(k) for k in cfg.run.truncation_ranks) if k < max_dim)
    factors = {n: top_singular(deltas[n], ks[-1], device) for n in analysed} if ks else {}  # one SVD per ΔW

    def entry(k, m):
        return {"k": k, "test_accuracy": m["accuracy"], **({"test_perplexity": m["perplexity"]} if "perplexity" in m else {})}
    for k in ks:
        for n, w in weights.items():
            us, vh = factors[n]
            w.copy_((w_pre[n] + us[:, :k] @ vh[:k]).to(w.device, w.dtype))
        results.append(entry(k, evaluator(model, test, cfg.train.eval_batch_size, device, precision)))
    for n, w in weights.items():
        w.copy_(finetuned[n])
    results.append(entry("full", full))
    return {"ranks": results, "scope": "all analysed block linear weights; other parameters finetuned"}


@torch.no_grad()
def _latency(cfg, model, test: Encoded, device, precision):
    """Median inference latency (one forward pass) at each of ``run.latency_batches`` (default 1 and 32) on
    inputs of exactly max_length tokens; for LoRA unmerged, then merged with peft's merge_and_unload (the run
    ends here, so the merge is not undone). The merge check compares logits at the largest batch."""
    model.eval()
    width = cfg.train.max_length
    sizes = sorted({int(b) for b in cfg.run.latency_batches})
    inputs = {b: to_device({k: v for k, v in test.fixed_width(b, width).items() if k != "labels"}, device)
              for b in sizes}
    big = sizes[-1]
    from .train import autocast

    def timings(tag):
        return {f"{tag}_batch{b}_s": median_latency(lambda: model(**inputs[b]), device, cfg.run.latency_repeats)
                for b in sizes}

    if cfg.method.name not in LORA_METHODS:
        return timings("plain"), None
    lat = timings("unmerged")
    ref = model(**inputs[big]).logits.float()
    ref_bf16 = None
    if precision == "bf16":
        with autocast(device, precision):
            ref_bf16 = model(**inputs[big]).logits.float()
    # merge_and_unload leaves the original architecture (no adapter wrappers), as a deployed model is
    model = model.merge_and_unload()
    lat.update(timings("merged"))
    merged = model(**inputs[big]).logits.float()
    merge = {"max_abs_logit_diff_fp32": max_abs_diff(ref, merged)}
    if ref_bf16 is not None:
        with autocast(device, precision):
            merge["max_abs_logit_diff_bf16"] = max_abs_diff(ref_bf16, model(**inputs[big]).logits.float())
    return lat, merge
