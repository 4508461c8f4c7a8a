"""Measurements on a trained model inside its run (they need the model on a device, so the analyses cannot make
them): the test metric with ΔW truncated to rank k in three scopes, the effect of scaling intruder dimensions
down (forgetting and the target metric again), and inference latency (unmerged and merged for methods that
merge) with the merge's fidelity."""
from __future__ import annotations

import statistics
from typing import Callable, Dict, List, Optional

import torch

from ..accounting import interleaved_latency, max_abs_diff, median_latency
from ..artifacts import SCOPES
from ..device import autocast, to_device
from ..linalg import max_cosines, top_factors
from ..models.structure import base_module


@torch.no_grad()
def truncation(model, analysed: List[str], targets: List[str], w_pre: Dict[str, torch.Tensor],
               deltas: Dict[str, torch.Tensor], pretrained: Dict[str, torch.Tensor], ranks: List[int],
               scopes: List[str], evaluate: Callable[[], Dict], device) -> Dict:
    """The test metric of W_pre + trunc_k(ΔW) for k = 0 (no matrix update, the control) and every k in ``ranks``,
    in each of ``scopes`` (``SCOPES``): the truncated matrices are all analysed ones or only ``targets``; the
    rest of the model (``pretrained``: W_pre of every parameter but the head) is finetuned or reset. One SVD per
    ΔW serves every k; the finetuned parameters are put back afterwards. ``evaluate()`` returns the metrics and
    the per-example outputs, which come back under ``per_example`` keyed ``<scope>.k<k>``."""
    params = dict(model.named_parameters())
    finetuned = {n: params[n].detach().clone() for n in pretrained}
    weights = {n: base_module(model, n).weight for n in analysed}
    max_dim = max(min(d.shape) for d in deltas.values())
    ks = sorted(k for k in {int(k) for k in ranks} if 0 < k < max_dim)
    factors = {n: top_factors(deltas[n], ks[-1], device) for n in analysed} if ks else {}
    out: Dict = {"scopes": {}, "per_example": {}}
    for scope in scopes:
        matrices = targets if scope == "targets_only" else analysed
        rest = finetuned if scope == "finetuned_rest" else pretrained
        for n, value in rest.items():
            params[n].copy_(value)
        entries = []
        for k in [0] + ks:
            for n in analysed:
                w = w_pre[n]
                if k and n in matrices:
                    us, vh = factors[n]
                    w = w + us[:, :k] @ vh[:k]
                weights[n].copy_(w.to(weights[n].device, weights[n].dtype))
            m = evaluate()
            out["per_example"].update({f"{scope}.k{k}.{f}": v for f, v in m.pop("per_example", {}).items()})
            entries.append({"k": k, "test_accuracy": m["accuracy"],
                            **({"test_perplexity": m["perplexity"]} if "perplexity" in m else {})})
        out["scopes"][scope] = {"description": SCOPES[scope], "matrices": len(matrices), "ranks": entries}
    for n, value in finetuned.items():
        params[n].copy_(value)
    return out


@torch.no_grad()
def intruder_scaling(model, names: List[str], w_pre: Dict[str, torch.Tensor], deltas: Dict[str, torch.Tensor],
                     lam: float, eps: float, k: int, evaluate: Callable[[], Dict]) -> Dict:
    """Shuttleworth et al.'s causal test: in each matrix of ``names``, W_ft = W_pre + ΔW; among its top-k left
    singular vectors u_j, the intruders are those with max_i |cos(u_j, x_i)| < ε over W_pre's left singular
    vectors x_i; their singular values are scaled by λ: W' = W_ft − (1 − λ) Σ_intruders σ_j u_j v_jᵀ. The model
    is evaluated with W' in place of W_ft: the base weight moves by W' − W_ft, so a method whose update lives
    beside the base weight (LoRA's adapter) keeps it and the effective weight becomes W'; every weight is
    restored afterwards."""
    modified, originals, count = {}, {}, 0  # W' per matrix, the base weights as they were, intruders found
    for n in names:
        w_ft = w_pre[n] + deltas[n]
        cos, (U, S, Vh) = max_cosines(w_pre[n], w_ft, k)
        intruders = (cos < eps).nonzero().flatten()
        count += len(intruders)
        scale = torch.ones(len(S), dtype=S.dtype)
        scale[intruders] = lam
        modified[n] = w_ft - ((1 - scale[:k]) * S[:k] * U[:, :k]) @ Vh[:k] if len(intruders) else w_ft
    for n in names:
        w = base_module(model, n).weight
        originals[n] = w.detach().clone()
        w.add_((modified[n] - (w_pre[n] + deltas[n])).to(w.device, w.dtype))
    result = evaluate()
    for n in names:
        base_module(model, n).weight.copy_(originals[n])
    result.update(intruders=count, modules=len(names), vectors_examined=k * len(names), **{"lambda": lam}, eps=eps,
                  k=k)
    return result


@torch.no_grad()
def latency(model, test, width: int, batches: List[int], repeats: int, device, precision: str,
            merge: Optional[Callable] = None, w_pre: Optional[Dict[str, torch.Tensor]] = None):
    """Inference latency (one forward pass) at each batch size on inputs of exactly ``width`` tokens.

    Without ``merge``: the plain model, ``repeats`` times; the median per batch size. With ``merge`` (methods whose
    update merges into the base weights): the unmerged model first; then, after merging, three arms timed in turn
    over ``repeats`` rounds (``accounting.interleaved_latency``): the merged model, the merged model again (an A/A
    control: its ratio to the first is the timing noise), and the base (the merged model with the matrices the
    merge changed back at W_pre, ``w_pre``: the base's architecture and weights). Their per-round times are kept
    (``samples``) so the analysis can put an interval on merged / base and on the A/A ratio; and the largest
    |logit difference| between unmerged and merged at the largest batch (the run ends here: the merge stays)."""
    model.eval()
    sizes = sorted({int(b) for b in batches})
    inputs = {b: to_device({k: v for k, v in test.fixed_width(b, width).items() if k != "labels"}, device)
              for b in sizes}
    big = sizes[-1]

    def medians(m, tag):
        return {f"{tag}_batch{b}_s": median_latency(lambda: m(**inputs[b]), device, repeats) for b in sizes}

    if merge is None:
        return medians(model, "plain"), None
    lat = medians(model, "unmerged")
    ref = model(**inputs[big]).logits.float()
    ref_bf16 = None
    if precision == "bf16":
        with autocast(device, precision):
            ref_bf16 = model(**inputs[big]).logits.float()
    merged_model = merge(model)
    fidelity = {"max_abs_logit_diff_fp32": max_abs_diff(ref, merged_model(**inputs[big]).logits.float())}
    if ref_bf16 is not None:
        with autocast(device, precision):
            fidelity["max_abs_logit_diff_bf16"] = max_abs_diff(ref_bf16, merged_model(**inputs[big]).logits.float())
    modules = dict(merged_model.named_modules())
    weights = {n: (modules[n] if n in modules else base_module(merged_model, n)).weight for n in (w_pre or {})}
    merged_w = {n: w.detach().clone() for n, w in weights.items()}

    def to_base():
        for n, w in weights.items():
            w.copy_(w_pre[n].to(w.device, w.dtype))

    def to_merged():
        for n, w in weights.items():
            w.copy_(merged_w[n])

    samples = {}
    for b in sizes:
        fn = (lambda b=b: merged_model(**inputs[b]))  # noqa: E731
        arms = {"merged": (fn, None, None), "merged_again": (fn, None, None)}
        if weights:
            arms["base"] = (fn, to_base, to_merged)
        times = interleaved_latency(arms, device, repeats)
        samples[f"batch{b}"] = times
        lat[f"merged_batch{b}_s"] = statistics.median(times["merged"])
        if "base" in times:
            lat[f"base_batch{b}_s"] = statistics.median(times["base"])
    lat["samples"] = samples
    return lat, fidelity
