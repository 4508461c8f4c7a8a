"""The seed's tradeoff table, measured rather than asserted: one row per method (frozen base, full FT,
LoRA at each rank, subspace at d90), mean ± std over seeds, every number read from the runs' artifacts.
Of the subspace runs only those at d90 are kept, one row per variant (DID, SAID): the smallest tested d
whose seed-mean test accuracy reaches 90 % of full FT's (``intrinsic.at_d90``); none if no d reaches it.

Optimizer memory is compared with two predictions: fp32 AdamW keeps exp_avg and exp_avg_sq, 8 bytes per
trainable parameter (plus a 4-byte step counter per tensor); the seed's mixed-precision bill is
2 (bf16 weight) + 2 (gradient) + 8 (Adam m, v) + 4 (fp32 master) ≈ 16 bytes per trainable parameter.
"""
from __future__ import annotations

import re

from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from .intrinsic import at_d90
from .study import label_key

ADAM_FP32_BYTES = 8
MIXED_PRECISION_BYTES = 16


def tradeoff(runs: pd.DataFrame, spectra: Optional[pd.DataFrame] = None,
             truncation: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Numeric table (means over seeds) with one row per method/rank; ``format_tradeoff`` renders it."""
    if runs.empty:
        return pd.DataFrame()
    base_acc = runs[runs.method == "none"].groupby("seed").test_accuracy.mean()
    base_lat = runs[runs.method == "none"][[c for c in runs.columns if c.startswith("latency_plain")]].mean()
    if "subspace" in set(runs.method):
        runs = pd.concat([runs[runs.method != "subspace"], at_d90(runs)], ignore_index=True)
    rows: List[Dict] = []
    for label, g in runs.groupby("label", sort=False):
        first = g.iloc[0]
        n = first.trainable_params
        tensors_step = g.optimizer_state_bytes - ADAM_FP32_BYTES * g.trainable_params  # step counters, 4 B each
        gain = g.apply(lambda r: r.test_accuracy - base_acc.get(r.seed, np.nan), axis=1)
        row = {
            "method": first.method, "label": label, "rank": first["rank"], "d": first.get("d"), "seeds": len(g),
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
        if truncation is not None and not truncation.empty and first.method == "lora":
            t = truncation[truncation.k == first["rank"]]
            row["truncated_full_at_rank"] = t.truncated_full_accuracy.mean() if len(t) else np.nan
        if "forgetting_mean" in g:
            row["forgetting_mean"] = g.forgetting_mean.mean()
        rows.append(row)
    out = pd.DataFrame(rows)
    for b in latency_batches(out):
        col = f"latency_plain_batch{b}_s"
        if col in base_lat:
            out[f"base_latency_batch{b}_s"] = base_lat[col]
    return out.iloc[sorted(range(len(out)), key=lambda i: label_key(out.label.iloc[i]))].reset_index(drop=True)


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


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def to_latex(df: pd.DataFrame, caption: str = "") -> str:
    """A booktabs table (\\toprule / \\midrule / \\bottomrule); % and & are escaped."""
    def esc(s) -> str:
        return str(s).replace("\\", r"\textbackslash{}").replace("&", r"\&").replace("%", r"\%").replace(
            "#", r"\#").replace("_", r"\_").replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("—", "--")
    cols = list(df.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}",
             r"\toprule", " & ".join(esc(c) for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(r"\caption{" + esc(caption) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"
