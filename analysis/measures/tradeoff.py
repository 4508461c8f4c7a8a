"""The seed's tradeoff table, measured rather than asserted: one row per method (frozen base, full FT, each
rank-swept arm at each rank, subspace at d90), mean ± std over seeds, every number read from the runs' artifacts.
Of the d-swept runs only those at d90 are kept, one row per variant (DID, SAID): the smallest tested d whose
seed-mean test accuracy reaches 90 % of full FT's (``intrinsic_dim.at_d90``); none if no d reaches it.

Optimizer memory is compared with two predictions: fp32 AdamW keeps exp_avg and exp_avg_sq, 8 bytes per
trainable parameter (plus a 4-byte step counter per tensor); the seed's mixed-precision bill is
2 (bf16 weight) + 2 (gradient) + 8 (Adam m, v) + 4 (fp32 master) ≈ 16 bytes per trainable parameter.

Two measures live here: ``Tradeoff`` (the table and the memory finding, first in the report) and
``MergeLatency`` (merged against unmerged latency and merge fidelity, later in the report).
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from ..loader import label_key
from ..roles import ROLE_COLUMNS, arm_title, arms, baselines, references, swept, with_roles
from .base import Context, Measure, Section
from .intrinsic_dim import at_d90
from .truncation import LIKE_FOR_LIKE

ADAM_FP32_BYTES = 8
MIXED_PRECISION_BYTES = 16


def tradeoff(runs: pd.DataFrame, spectra: Optional[pd.DataFrame] = None,
             truncation: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Numeric table (means over seeds) with one row per method/rank; ``format_tradeoff`` renders it."""
    if runs.empty:
        return pd.DataFrame()
    runs = with_roles(runs)
    base = baselines(runs)
    base_acc = base.groupby("seed").test_accuracy.mean()
    base_lat = base[[c for c in runs.columns if c.startswith("latency_plain")]].mean()
    if not swept(runs, "d").empty:
        runs = pd.concat([runs[runs.axis != "d"], at_d90(runs)], ignore_index=True)
    rows: List[Dict] = []
    for label, g in runs.groupby("label", sort=False):
        first = g.iloc[0]
        n = first.trainable_params
        tensors_step = g.optimizer_state_bytes - ADAM_FP32_BYTES * g.trainable_params  # step counters, 4 B each
        gain = g.apply(lambda r: r.test_accuracy - base_acc.get(r.seed, np.nan), axis=1)
        row = {
            "method": first.method, "label": label, "rank": first["rank"], "d": first.get("d"),
            **{c: first[c] for c in ROLE_COLUMNS}, "variant": first.get("variant"), "seeds": len(g),
            "trainable_params": n, "trainable_pct": 100.0 * n / first.total_params,
            "optimizer_state_bytes": g.optimizer_state_bytes.mean(),
            "predicted_adam_fp32_bytes": ADAM_FP32_BYTES * n,
            "measured_over_predicted": (g.optimizer_state_bytes / (ADAM_FP32_BYTES * g.trainable_params)).mean()
            if n else np.nan,
            "step_counter_bytes": tensors_step.mean(),
            "mixed_precision_bill_bytes": MIXED_PRECISION_BYTES * n,
            "gradient_bytes": g.gradient_bytes.mean(), "peak_memory_bytes": g.peak_memory_bytes.mean(),
            "mean_step_s": g.mean_step_s.mean(), "tokens_per_s": g.tokens_per_s.mean(),
            "storage_bytes": g.storage_bytes.mean(),
            "test_accuracy": g.test_accuracy.mean(), "test_accuracy_std": g.test_accuracy.std(ddof=1),
            "gain_over_base": gain.mean(),
        }
        for col in [c for c in g.columns if c.startswith("latency_")]:
            row[col] = g[col].mean()
        for col in ("max_abs_logit_diff_fp32", "max_abs_logit_diff_bf16"):
            if col in g:
                row[col] = g[col].max()
        if spectra is not None and not spectra.empty:
            s = spectra[spectra.member.isin(g.member)]
            row["mean_rank90"] = s.rank90.mean() if len(s) else np.nan
        if truncation is not None and not truncation.empty and first.axis == "rank":
            t = truncation[(truncation.scope == LIKE_FOR_LIKE) & (truncation.k == first["value"])]
            row["truncated_full_at_rank"] = t["mean"].mean() if len(t) else np.nan
        if "forgetting_mean" in g:
            row["forgetting_mean"] = g.forgetting_mean.mean()
        rows.append(row)
    out = pd.DataFrame(rows)
    for b in latency_batches(out):
        col = f"latency_plain_batch{b}_s"
        if col in base_lat:
            out[f"base_latency_batch{b}_s"] = base_lat[col]
    order = sorted(range(len(out)), key=lambda i: (label_key(out.iloc[i].to_dict()), out.label.iloc[i]))
    return out.iloc[order].reset_index(drop=True)


def latency_batches(t: pd.DataFrame) -> list:
    """The batch sizes at which latency was measured (run.latency_batches), from the columns present."""
    found = {int(m.group(1)) for c in t.columns
             for m in [re.fullmatch(r"latency_(?:plain|merged|unmerged)_batch(\d+)_s", c)] if m}
    return sorted(found)


def _bytes(b) -> str:
    if b is None or (isinstance(b, float) and np.isnan(b)):
        return "n/a"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{int(b)} B"


def _ms_str(s) -> str:
    return "n/a" if s is None or np.isnan(s) else f"{1e3 * s:.1f} ms"


def format_tradeoff(t: pd.DataFrame) -> pd.DataFrame:
    """The table as strings for Markdown / HTML / LaTeX."""
    rows = []
    sizes = latency_batches(t) or [1, 32]
    lo, hi = sizes[0], sizes[-1]
    for _, r in t.iterrows():
        lat1 = r.get(f"latency_merged_batch{lo}_s", r.get(f"latency_plain_batch{lo}_s"))
        lat32 = r.get(f"latency_merged_batch{hi}_s", r.get(f"latency_plain_batch{hi}_s"))
        un1, un32 = r.get(f"latency_unmerged_batch{lo}_s"), r.get(f"latency_unmerged_batch{hi}_s")
        acc = f"{r.test_accuracy:.3f}" + (f" ± {r.test_accuracy_std:.3f}" if r.seeds > 1 else "")
        rows.append({
            "method": r.label,
            "trainable params": f"{int(r.trainable_params):,} ({r.trainable_pct:.3g} %)",
            "optimizer state (measured)": _bytes(r.optimizer_state_bytes),
            "Adam fp32 prediction (8 B/param)": _bytes(r.predicted_adam_fp32_bytes),
            "measured / predicted": "n/a" if np.isnan(r.measured_over_predicted) else f"{r.measured_over_predicted:.4f}",
            "mixed-precision bill (16 B/param)": _bytes(r.mixed_precision_bill_bytes),
            "gradients": _bytes(r.gradient_bytes), "peak memory": _bytes(r.peak_memory_bytes),
            "step time": _ms_str(r.mean_step_s), "tokens/s": "n/a" if np.isnan(r.tokens_per_s) else f"{r.tokens_per_s:,.0f}",
            f"latency b={lo} (merged)": _ms_str(lat1), f"latency b={hi} (merged)": _ms_str(lat32),
            f"latency b={lo} / b={hi} unmerged": "—" if un1 is None or np.isnan(un1) else f"{_ms_str(un1)} / {_ms_str(un32)}",
            "storage per task": _bytes(r.storage_bytes),
            "test accuracy": acc, "gain over base": "—" if np.isnan(r.gain_over_base) else f"{r.gain_over_base:+.3f}",
            "mean rank@90 % of ΔW": "—" if np.isnan(r.get("mean_rank90", np.nan)) else f"{r.mean_rank90:.1f}",
            "truncated full FT at r": "—" if np.isnan(r.get("truncated_full_at_rank", np.nan)) else f"{r.truncated_full_at_rank:.3f}",
            "forgetting (mean)": "not measured" if np.isnan(r.get("forgetting_mean", np.nan)) else f"{r.forgetting_mean:+.3f}",
            "merge max |Δlogit|": "—" if np.isnan(r.get("max_abs_logit_diff_fp32", np.nan)) else f"{r.max_abs_logit_diff_fp32:.1e}",
        })
    return pd.DataFrame(rows)


# -- findings -------------------------------------------------------------------------------------

def memory_finding(t: pd.DataFrame) -> str:
    if t.empty:
        return ""
    parts = []
    for _, r in t.iterrows():
        if r.trainable_params and not np.isnan(r.measured_over_predicted):
            parts.append(f"{r.label} {r.measured_over_predicted:.4f}")
    full = references(t)
    txt = ("Measured optimizer state / the fp32 AdamW prediction of 8 bytes per trainable parameter: " + ", ".join(parts) +
           " (the excess is AdamW's 4-byte step counter per parameter tensor).")
    if full.empty:
        return txt
    opt, store = full.optimizer_state_bytes.iloc[0], full.storage_bytes.iloc[0]
    for arm in arms(t, "rank"):
        g = swept(t, "rank", arm)
        txt += (f" {arm_title(t, arm)}'s optimizer state is {100 * g.optimizer_state_bytes.max() / opt:.2f} % "
                f"of full finetuning's at the largest rank and {100 * g.optimizer_state_bytes.min() / opt:.3f} % "
                f"at the smallest; its stored adapter is {100 * g.storage_bytes.min() / store:.2f}–"
                f"{100 * g.storage_bytes.max() / store:.2f} % of a full model copy.")
    return txt


def _latency_sentence(t: pd.DataFrame, g: pd.DataFrame, sizes: List[int]) -> str:
    """Merged against unmerged latency (and against the frozen base) of one arm's rows ``g``."""
    sizes = sorted({sizes[0], sizes[-1]})
    txt = []
    base_ok = []
    for b in sizes:
        m, u = g[f"latency_merged_batch{b}_s"], g[f"latency_unmerged_batch{b}_s"]
        txt.append(f"batch {b}: unmerged / merged latency median {np.median(u / m):.2f}×")
        base = t.get(f"base_latency_batch{b}_s")
        if base is not None and not np.isnan(base.iloc[0]):
            ratio = float(np.median(m / base.iloc[0]))
            txt[-1] += f", merged / frozen base {ratio:.2f}×"
            base_ok.append(abs(ratio - 1) <= 0.10)
    verdict = ("After merging, latency is within 10 % of the frozen base at every measured batch size: the "
               "zero-added-latency claim holds here." if base_ok and all(base_ok) else
               "After merging, latency is not within 10 % of the frozen base at every batch size (timings on a shared "
               "machine are noisy; the merged model has exactly the base architecture)." if base_ok else "")
    diff = g.get("max_abs_logit_diff_fp32")
    fid = f" Merge fidelity: max |logit difference| merged vs unmerged {diff.max():.1e} (fp32)." if diff is not None else ""
    return "; ".join(txt) + ". " + verdict + fid


def latency_finding(t: pd.DataFrame) -> str:
    """For each rank-swept arm timed merged and unmerged: the latency ratios, whether merging brings latency back
    to the frozen base's, and the merge's fidelity."""
    measured = []
    for arm in arms(t, "rank"):
        g = swept(t, "rank", arm)
        sizes = [b for b in latency_batches(t) if f"latency_merged_batch{b}_s" in g
                 and g[f"latency_merged_batch{b}_s"].notna().any()]
        if sizes:
            measured.append((arm, g, sizes))
    if not measured:
        return "No LoRA latency was measured in this study."
    if len(measured) == 1:
        return _latency_sentence(t, measured[0][1], measured[0][2])
    return " ".join(f"{arm_title(t, arm)}: {_latency_sentence(t, g, sizes)}" for arm, g, sizes in measured)


class Tradeoff(Measure):
    name = "tradeoff"
    tables = ("tradeoff",)
    report_tables = ("tradeoff",)

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        return {"tradeoff": tradeoff(ctx.table("runs"), ctx.table("spectra"), ctx.table("truncation"))}

    def sections(self, ctx: Context) -> List[Section]:
        runs = ctx.table("runs")
        missing = [name for rows, name in ((baselines(runs), "the frozen base"), (references(runs), "full finetuning"),
                                           (swept(runs, "rank"), "LoRA")) if rows.empty]
        return [Section("Tradeoff table", [
            "One row per method, mean over seeds (± sample standard deviation where there are several). "
            "Every column is measured in the runs: optimizer state is read from AdamW's state tensors, latency is "
            "the median of repeated timings at max_length tokens, storage is the bytes a user ships per task.",
            memory_finding(ctx.table("tradeoff")),
            *([f"This study has no run of {', '.join(missing)}: the rows and comparisons that need it are absent."]
              if missing else []),
        ], table="tradeoff")]

    def formatted(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        t = ctx.table("tradeoff")
        return {"tradeoff": format_tradeoff(t) if not t.empty else pd.DataFrame()}


class MergeLatency(Measure):
    name = "latency"

    def sections(self, ctx: Context) -> List[Section]:
        return [Section("Merge and latency", [latency_finding(ctx.table("tradeoff"))])]
