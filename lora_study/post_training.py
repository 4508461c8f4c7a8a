"""Measurements on a trained model inside its run: the test metric with every analysed ΔW truncated to rank k,
and inference latency (unmerged and merged for methods that merge) with the merge's fidelity."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch

from .accounting import max_abs_diff, median_latency
from .device import autocast, to_device
from .linalg import top_factors
from .models.structure import base_module


@torch.no_grad()
def truncation(model, analysed: List[str], w_pre: Dict[str, torch.Tensor], deltas: Dict[str, torch.Tensor],
               ranks: List[int], evaluate: Callable[[], Dict], untruncated: Dict, device) -> Dict:
    """The test metric of W_pre + trunc_k(ΔW), every analysed ΔW truncated to rank k at once; other
    parameters (embeddings, biases, norms, heads) keep their finetuned values. One SVD per ΔW serves every k;
    the finetuned weights are put back afterwards. Perplexity is recorded too where the task has it."""
    weights = {n: base_module(model, n).weight for n in analysed}
    finetuned = {n: w.detach().clone() for n, w in weights.items()}
    max_dim = max(min(d.shape) for d in deltas.values())
    ks = sorted(k for k in {int(k) for k in ranks} if k < max_dim)
    factors = {n: top_factors(deltas[n], ks[-1], device) for n in analysed} if ks else {}

    def entry(k, m):
        return {"k": k, "test_accuracy": m["accuracy"], **({"test_perplexity": m["perplexity"]} if "perplexity" in m else {})}
    results = []
    for k in ks:
        for n, w in weights.items():
            us, vh = factors[n]
            w.copy_((w_pre[n] + us[:, :k] @ vh[:k]).to(w.device, w.dtype))
        results.append(entry(k, evaluate()))
    for n, w in weights.items():
        w.copy_(finetuned[n])
    results.append(entry("full", untruncated))
    return {"ranks": results, "scope": "all analysed block linear weights; other parameters finetuned"}


@torch.no_grad()
def latency(model, test, width: int, batches: List[int], repeats: int, device, precision: str,
            merge: Optional[Callable] = None):
    """Median inference latency (one forward pass) at each batch size on inputs of exactly ``width`` tokens.
    With ``merge`` (methods whose update merges into the base weights): unmerged, then merged, and the largest
    |logit difference| between the two at the largest batch (the run ends here, so the merge is not undone)."""
    model.eval()
    sizes = sorted({int(b) for b in batches})
    inputs = {b: to_device({k: v for k, v in test.fixed_width(b, width).items() if k != "labels"}, device)
              for b in sizes}
    big = sizes[-1]

    def timings(m, tag):
        return {f"{tag}_batch{b}_s": median_latency(lambda: m(**inputs[b]), device, repeats) for b in sizes}

    if merge is None:
        return timings(model, "plain"), None
    lat = timings(model, "unmerged")
    ref = model(**inputs[big]).logits.float()
    ref_bf16 = None
    if precision == "bf16":
        with autocast(device, precision):
            ref_bf16 = model(**inputs[big]).logits.float()
    merged_model = merge(model)
    lat.update(timings(merged_model, "merged"))
    fidelity = {"max_abs_logit_diff_fp32": max_abs_diff(ref, merged_model(**inputs[big]).logits.float())}
    if ref_bf16 is not None:
        with autocast(device, precision):
            fidelity["max_abs_logit_diff_bf16"] = max_abs_diff(ref_bf16, merged_model(**inputs[big]).logits.float())
    return lat, fidelity
