"""Findings: one paragraph per claim of the low-rank hypothesis, stated from the study's numbers, and
saying plainly when the study does not support the claim. Thresholds are stated in the text."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pandas as pd
import torch

from .spectral import rank_at_energy
from .forgetting import forgetting_difference_se
from .study import label_key
from .tradeoff import latency_batches


def _random_rank90(shape: tuple) -> int:
    """Rank at 90 % energy of a Gaussian random matrix of this shape: what 'no low-rank structure' gives."""
    g = torch.Generator().manual_seed(0)
    s = torch.linalg.svdvals(torch.randn(*shape, generator=g, dtype=torch.float64))
    return rank_at_energy(s, 0.9)


def energy_finding(spectra: pd.DataFrame) -> str:
    full = spectra[spectra.method == "full"]
    if full.empty:
        return "No full finetune with saved spectra: the concentration of full finetuning's ΔW is not measured here."
    full = full.assign(dim=full[["d_out", "d_in"]].min(axis=1))
    med = full.rank90.median()
    frac = (full.rank90 / full.dim).median()
    rnd: dict = {}
    ratios = []
    for _, r in full.iterrows():  # against a random matrix of each module's own shape
        shape = (int(r.d_out), int(r.d_in))
        if shape not in rnd:
            rnd[shape] = _random_rank90(shape)
        ratios.append(r.rank90 / rnd[shape])
    ratio = float(np.median(ratios))
    eff = full.effective_rank.median()
    verdict = ("supports" if ratio <= 0.25 else "only partly supports" if ratio < 0.75 else "does not support")
    text = (f"Full finetuning's ΔW needs a median of {med:.0f} directions for 90 % of its energy "
            f"({100 * frac:.1f} % of the matrix dimension; median effective rank {eff:.1f}); a Gaussian random "
            f"matrix of the same shape needs {1 / ratio:.1f}× as many (median ratio {ratio:.2f}). "
            f"This {verdict} the claim that the finetuning update concentrates its energy in a few directions "
            f"(thresholds: ratio ≤ 0.25 supports, < 0.75 partly).")
    lora = spectra[spectra.method == "lora"]
    if not lora.empty:
        per_rank = lora.groupby("rank").rank90.median()
        text += " LoRA's ΔW, rank-r by construction, reaches 90 % energy at a median of " + ", ".join(
            f"{int(v)} (r={int(k)})" for k, v in per_rank.items()) + " directions."
    return text


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def rank_finding(runs: pd.DataFrame, trunc: pd.DataFrame, n_test: Optional[int] = None) -> str:
    full = runs[runs.method == "full"].test_accuracy
    lora = runs[runs.method == "lora"].groupby("rank").test_accuracy.mean()
    base = runs[runs.method == "none"].test_accuracy
    if full.empty or lora.empty:
        return "The study lacks full finetuning or LoRA runs, so LoRA's accuracy is not compared with full finetuning's."
    f = full.mean()
    sizes = runs.n_test.dropna() if "n_test" in runs else pd.Series(dtype=float)
    n = n_test or (int(sizes.min()) if len(sizes) else 1000)  # the test examples each run was scored on
    tol = 2 * _se(f, n)
    head = "trainable_params" in runs and (runs[runs.method == "none"].trainable_params > 0).any()
    parts = [f"Full finetuning reaches {f:.3f} test accuracy"
             + (f", the frozen base {'with a trained head' if head else '(nothing trained)'} {base.mean():.3f}"
                if len(base) else "") + "."]
    if len(base) and f <= base.mean() + tol:
        parts.append(f"Full finetuning does not beat the frozen base by more than two binomial standard errors ({tol:.3f}), "
                     "so this study has no finetuning gain to compare LoRA against: no conclusion on rank.")
        return " ".join(parts)
    reach = [int(r) for r, a in lora.items() if a >= f - tol]
    best_r = int(lora.idxmax())
    if reach:
        parts.append(f"LoRA comes within two binomial standard errors ({tol:.3f}) of full finetuning from r = {min(reach)} "
                     f"({lora[min(reach)]:.3f}); at r = {int(lora.index.min())} it reaches {lora.iloc[0]:.3f}. "
                     "This supports the claim that LoRA gets most of the benefit at small rank.")
        above = [int(r) for r, a in lora.items() if a > f + tol]
        if above:
            parts.append(f"LoRA beats full finetuning by more than two standard errors at r = {', '.join(map(str, above))}: "
                         "before reading that as LoRA being better, check that full finetuning's learning rate was "
                         "searched (study.lr_search) and its budget sufficed.")
    else:
        parts.append(f"No LoRA rank comes within two binomial standard errors ({tol:.3f}) of full finetuning: the best is "
                     f"r = {best_r} at {lora[best_r]:.3f}. On this study the claim that LoRA matches full finetuning "
                     "at small rank is not supported.")
    if len(base):
        g = f - base.mean()
        if g > 0:
            kept = (lora - base.mean()) / g
            parts.append("Share of full finetuning's gain over the base kept by LoRA: " +
                         ", ".join(f"r={int(r)} {100 * k:.0f} %" for r, k in kept.items()) + ".")
    if not trunc.empty:
        t = trunc.groupby("k")[["truncated_full_accuracy", "lora_accuracy"]].mean()
        ok = [int(k) for k, row in t.iterrows() if row.truncated_full_accuracy >= f - tol]
        parts.append("Truncating every ΔW of the full finetune to rank k gives " +
                     ", ".join(f"k={int(k)} {row.truncated_full_accuracy:.3f}" for k, row in t.iterrows()) +
                     (f"; from k = {min(ok)} it stays within two standard errors of the untruncated model." if ok else
                      "; no tested k recovers the full finetune within two standard errors, so full finetuning's "
                      "gain is not carried by its top directions alone."))
        both = t.dropna()
        if not both.empty:
            better = int((both.lora_accuracy > both.truncated_full_accuracy).sum())
            parts.append(f"Training at rank k beats truncating full finetuning to rank k at {better} of {len(both)} ranks.")
    return " ".join(parts)


def similarity_finding(sim: pd.DataFrame) -> str:
    if sim.empty:
        return "Fewer than two LoRA ranks: no subspace similarity is measured."
    rnd = sim[sim.kind == "random"].phi_1_1.mean()
    real = sim[sim.kind != "random"]
    top = real.phi_1_1.mean()
    pairs = ", ".join(f"r={a} vs r={b}" for a, b in sorted(set(zip(real.small, real.large))))
    verdict = "shares its top direction" if top > 0.5 else "does not clearly share its top direction"
    return (f"For {pairs}, φ(1, 1) averaged over layers and module kinds is {top:.2f} against {rnd:.3f} for the random "
            f"Gaussian control: the smaller rank {verdict} with the larger one (Hu et al. report φ > 0.5 for r = 8 vs 64 "
            f"on GPT-3). Mean φ over the whole grid is {real.phi_mean.mean():.2f} (random {sim[sim.kind == 'random'].phi_mean.mean():.2f}).")


def intruder_finding(intr: pd.DataFrame, eps: float = 0.5) -> str:
    t = intr[np.isclose(intr.eps, eps)].groupby("label").intruders.mean()
    if t.empty:
        return "No intruder dimensions were measured."
    full = t.get("full FT")
    lora = {k: v for k, v in t.items() if k.startswith("LoRA")}
    txt = f"At ε = {eps}, intruder dimensions summed over modules: " + ", ".join(f"{k} {t[k]:.0f}" for k in sorted(t.index, key=label_key)) + "."
    if full is not None and lora:
        more = [k for k, v in lora.items() if v > full]
        txt += (f" {len(more)} of {len(lora)} LoRA ranks have more intruders than full finetuning"
                + (", as Shuttleworth et al. found for small ranks." if more else
                   "; Shuttleworth et al.'s finding (LoRA introduces intruders, full finetuning does not) is not reproduced here."))
    return txt


def memory_finding(t: pd.DataFrame) -> str:
    if t.empty:
        return ""
    parts = []
    for _, r in t.iterrows():
        if r.trainable_params and not np.isnan(r.measured_over_predicted):
            parts.append(f"{r.label} {r.measured_over_predicted:.4f}")
    full = t[t.method == "full"]
    txt = ("Measured optimizer state / the fp32 AdamW prediction of 8 bytes per trainable parameter: " + ", ".join(parts) +
           " (the excess is AdamW's 4-byte step counter per parameter tensor).")
    lora = t[t.method == "lora"]
    if not full.empty and not lora.empty:
        txt += (f" LoRA's optimizer state is {100 * lora.optimizer_state_bytes.max() / full.optimizer_state_bytes.iloc[0]:.2f} % "
                f"of full finetuning's at the largest rank and {100 * lora.optimizer_state_bytes.min() / full.optimizer_state_bytes.iloc[0]:.3f} % "
                f"at the smallest; its stored adapter is {100 * lora.storage_bytes.min() / full.storage_bytes.iloc[0]:.2f}–"
                f"{100 * lora.storage_bytes.max() / full.storage_bytes.iloc[0]:.2f} % of a full model copy.")
    return txt


def latency_finding(t: pd.DataFrame) -> str:
    lora = t[t.method == "lora"]
    sizes = [b for b in latency_batches(t) if f"latency_merged_batch{b}_s" in lora]
    if lora.empty or not sizes:
        return "No LoRA latency was measured in this study."
    sizes = sorted({sizes[0], sizes[-1]})
    txt = []
    for b in sizes:
        m, u = lora[f"latency_merged_batch{b}_s"], lora[f"latency_unmerged_batch{b}_s"]
        txt.append(f"batch {b}: unmerged / merged latency median {np.median(u / m):.2f}×")
        base = t.get(f"base_latency_batch{b}_s")
        if base is not None and not np.isnan(base.iloc[0]):
            ratio = float(np.median(m / base.iloc[0]))
            txt[-1] += f", merged / frozen base {ratio:.2f}×"
    base_ok = []
    for b in sizes:
        base = t.get(f"base_latency_batch{b}_s")
        if base is not None and not np.isnan(base.iloc[0]):
            base_ok.append(abs(float(np.median(lora[f"latency_merged_batch{b}_s"] / base.iloc[0])) - 1) <= 0.10)
    verdict = ("After merging, latency is within 10 % of the frozen base at every measured batch size: the "
               "zero-added-latency claim holds here." if base_ok and all(base_ok) else
               "After merging, latency is not within 10 % of the frozen base at every batch size (timings on a shared "
               "machine are noisy; the merged model has exactly the base architecture)." if base_ok else "")
    diff = lora.get("max_abs_logit_diff_fp32")
    fid = f" Merge fidelity: max |logit difference| merged vs unmerged {diff.max():.1e} (fp32)." if diff is not None else ""
    return "; ".join(txt) + ". " + verdict + fid


def forgetting_finding(forget: pd.DataFrame, corr: dict) -> str:
    if forget.empty:
        return ("Not measured in this study: its runs carry no held-out probes, so the claim that LoRA forgets less "
                "is neither supported nor refuted here.")
    full = forget[forget.method == "full"].forgetting_mean
    lora = forget[forget.method == "lora"].groupby("rank").forgetting_mean.mean()
    metrics = {c[len("metric_"):]: forget[c].dropna().iloc[0] for c in forget.columns
               if c.startswith("metric_") and forget[c].notna().any()}
    perplexity = any(m == "perplexity" for m in metrics.values())
    what = ("accuracy drops and relative perplexity increases averaged over held-out tasks; positive = worse than "
            "the base" if perplexity else "base probe accuracy − finetuned, averaged over held-out tasks")
    parts = [f"Mean forgetting ({what}): " +
             (f"full FT {full.mean():+.3f}; " if len(full) else "") +
             ", ".join(f"LoRA r={int(r)} {v:+.3f}" for r, v in lora.items()) + "."]
    if perplexity:  # the mean mixes units: give each task on its own
        by = forget[forget.method != "none"]
        for task, metric in metrics.items():
            col = f"forgetting_{task}"
            if col not in by:
                continue
            v = by.groupby("label")[col].mean()
            unit = "perplexity, finetuned − base" if metric == "perplexity" else f"{metric}, base − finetuned"
            parts.append(f"{task} ({unit}): " + ", ".join(f"{k} {v[k]:+.3g}" for k in sorted(v.index, key=label_key)) + ".")
    if len(full) and len(lora):
        less = [int(r) for r, v in lora.items() if v < full.mean() - 1e-9]
        se = forgetting_difference_se(forget)
        resolved = None if se is None else [int(r) for r, v in lora.items() if abs(v - full.mean()) > 2 * se]
        verdict = (": this supports Biderman et al.'s 'LoRA forgets less'." if len(less) == len(lora) else
                   " — the claim holds only partly here." if less else
                   ": on this study the claim that LoRA forgets less is not supported.")
        if resolved is not None and not resolved:
            verdict = "."
        parts.append(f"LoRA forgot less than full finetuning at {len(less)} of {len(lora)} ranks" + verdict)
        if se is not None:
            parts.append(f"With {int(forget.probe_n_test.dropna().iloc[0])} probe examples per task, two standard "
                         f"errors of a difference in mean forgetting are about {2 * se:.3f}; " +
                         (f"the difference from full finetuning exceeds that at r = {', '.join(map(str, resolved))}."
                          if resolved else "no rank's difference from full finetuning exceeds that, so this study "
                          "neither supports nor refutes 'LoRA forgets less' (more probe examples or seeds would be "
                          "needed)."))
    if "cka" in forget and forget.cka.notna().any():
        c = forget[forget.method != "none"].groupby("label").cka.mean()
        parts.append("Linear CKA to the base's features on held-out text: " +
                     ", ".join(f"{k} {c[k]:.3f}" for k in sorted(c.index, key=label_key)) + ".")
    if corr.get("rho") is not None:
        parts.append(f"Spearman correlation between intruder count (ε = {corr['eps']}) and forgetting over {corr['n']} "
                     f"runs: ρ = {corr['rho']:.2f} (p = {corr['p']:.2g}; Shuttleworth et al. report 0.971 on RoBERTa).")
    return " ".join(parts)
