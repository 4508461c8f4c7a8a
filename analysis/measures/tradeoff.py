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
from ..roles import (
    ROLE_COLUMNS,
    arm_title,
    arms,
    baselines,
    references,
    swept,
    with_roles,
)
from ..claims import NOT_MEASURED
from .base import Context, Measure, Section
from .intrinsic_dim import at_d90
from .truncation import LIKE_FOR_LIKE

ADAM_FP32_BYTES = 8
MIXED_PRECISION_BYTES = 16


def tradeoff(runs: pd.DataFrame, spectra: Optional[pd.DataFrame] = None,
             truncation: Optional[pd.DataFrame] = None, forgetting: Optional[pd.DataFrame] = None) -> pd.DataFrame:
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
            "parameter_bytes": g.parameter_bytes.mean() if "parameter_bytes" in g else np.nan,
            "activation_bytes": g.activation_bytes.mean() if "activation_bytes" in g else np.nan,
            "training_bytes": g.training_bytes.mean() if "training_bytes" in g else np.nan,
            "training_bytes_spread": (g.training_bytes.max() - g.training_bytes.min()) / g.training_bytes.mean()
            if "training_bytes" in g and g.training_bytes.notna().all() else np.nan,
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
            if first.axis == "rank" and len(s):  # r (d_out + d_in) per adapted matrix, plus the head
                one = s[s.member == s.member.iloc[0]]
                rank = first.get("rank_used")  # a matched-parameter arm trains at its own rank, not the swept one
                rank = first["value"] if rank is None or pd.isna(rank) else rank
                row["formula_params"] = int(first.head_params + int(rank) * (one.d_out + one.d_in).sum())
        if truncation is not None and not truncation.empty and first.axis == "rank":
            t = truncation[(truncation.scope == LIKE_FOR_LIKE) & (truncation.k == first["value"])]
            row["truncated_full_at_rank"] = t["mean"].mean() if len(t) else np.nan
        row["forgetting_mean"] = _forgetting(forgetting, first)
        if "cka" in g:
            row["cka"] = g.cka.mean()
        rows.append(row)
    out = pd.DataFrame(rows)
    for b in latency_batches(out):
        col = f"latency_plain_batch{b}_s"
        if col in base_lat:
            out[f"base_latency_batch{b}_s"] = base_lat[col]
    order = sorted(range(len(out)), key=lambda i: (label_key(out.iloc[i].to_dict()), out.label.iloc[i]))
    return out.iloc[order].reset_index(drop=True)


def _forgetting(forgetting: Optional[pd.DataFrame], first) -> float:
    """The run group's held-out accuracy drop pooled over the informative tasks (``forgetting_vs_full``); 0 for the
    frozen base, NaN where not measured."""
    if first.baseline:
        return 0.0
    if forgetting is None or forgetting.empty:
        return np.nan
    t = forgetting[(forgetting.tasks == "mean") & (forgetting.unit == "accuracy")]
    key = (t.arm == "reference") if first.reference else (t.arm == first.arm) & (t.value == first["value"])
    return float(t[key].forgetting.iloc[0]) if key.any() else np.nan


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


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and np.isnan(x))


def _latency(r, b: int):
    """The latency a user gets at batch ``b``: merged for a method that merges, else the plain model's."""
    merged = r.get(f"latency_merged_batch{b}_s")
    return r.get(f"latency_plain_batch{b}_s") if _nan(merged) else merged


def _method(r) -> str:
    return r.label + (f" ({int(r.seeds)} seeds)" if r.seeds > 1 else "")


def format_cost(t: pd.DataFrame) -> pd.DataFrame:
    """What each method costs, every column measured in the runs (means over seeds)."""
    sizes = latency_batches(t)
    rows = []
    for _, r in t.iterrows():
        counted = not _nan(r.get("training_bytes", np.nan))
        row = {"method": _method(r), "trainable params": f"{int(r.trainable_params):,} ({r.trainable_pct:.3g} %)",
               "parameters": _bytes(r.get("parameter_bytes")) if counted else "n/a",
               "gradients": _bytes(r.gradient_bytes), "optimizer state": _bytes(r.optimizer_state_bytes),
               "activations": _bytes(r.get("activation_bytes")) if counted else "n/a",
               "training memory": _bytes(r.training_bytes) if counted else f"{_bytes(r.peak_memory_bytes)} (RSS)",
               "storage per task": _bytes(r.storage_bytes), "step time": _ms_str(r.mean_step_s)}
        for b in sorted({sizes[0], sizes[-1]}) if sizes else []:
            row[f"latency b={b}"] = _ms_str(_latency(r, b))
        if sizes:
            un = [r.get(f"latency_unmerged_batch{b}_s") for b in sorted({sizes[0], sizes[-1]})]
            row["unmerged latency"] = "—" if any(_nan(u) for u in un) else " / ".join(_ms_str(u) for u in un)
        rows.append(row)
    return pd.DataFrame(rows)


def format_formulas(t: pd.DataFrame) -> pd.DataFrame:
    """The optimizer-memory predictions of the formulas, beside the measured state they predict."""
    return pd.DataFrame([{
        "method": _method(r), "trainable params": f"{int(r.trainable_params):,}",
        "optimizer state (measured)": _bytes(r.optimizer_state_bytes),
        "Adam fp32, 8 B/param (formula)": _bytes(r.predicted_adam_fp32_bytes),
        "measured / formula": "n/a" if _nan(r.measured_over_predicted) else f"{r.measured_over_predicted:.4f}",
        "mixed precision, 16 B/param (formula)": _bytes(r.mixed_precision_bill_bytes)} for _, r in t.iterrows()])


def format_quality(t: pd.DataFrame) -> pd.DataFrame:
    """What each method gets: test score, gain over the base, forgetting, ΔW's rank, truncated full FT at the same
    rank, and the merge's fidelity."""
    rows = []
    for _, r in t.iterrows():
        acc = f"{r.test_accuracy:.3f}" + (f" ± {r.test_accuracy_std:.3f}" if r.seeds > 1 else "")
        rows.append({
            "method": _method(r), "test accuracy (± std)": acc,
            "gain over base": "—" if _nan(r.gain_over_base) else f"{r.gain_over_base:+.3f}",
            "forgetting (informative tasks)": "not measured" if _nan(r.get("forgetting_mean", np.nan)) else
            f"{r.forgetting_mean:+.3f}",
            "mean rank@90 % of ΔW": "—" if _nan(r.get("mean_rank90", np.nan)) else f"{r.mean_rank90:.1f}",
            "full FT truncated to r": "—" if _nan(r.get("truncated_full_at_rank", np.nan)) else
            f"{r.truncated_full_at_rank:.3f}",
            "merge max |Δlogit|": "—" if _nan(r.get("max_abs_logit_diff_fp32", np.nan)) else
            f"{r.max_abs_logit_diff_fp32:.1e}",
            "CKA to the base (debiased)": "—" if _nan(r.get("cka", np.nan)) else f"{r.cka:.3f}"})
    return pd.DataFrame(rows)


def format_tradeoff(t: pd.DataFrame) -> pd.DataFrame:
    """The cost and quality tables side by side (one wide table, for scripts that want one)."""
    return pd.concat([format_cost(t), format_quality(t).drop(columns="method")], axis=1)


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
                f"at the smallest; its stored adapter takes {_bytes(g.storage_bytes.min())}–"
                f"{_bytes(g.storage_bytes.max())} against {_bytes(store)} for a full model copy (storage per task, "
                "in the cost table).")
    return txt


def _latency_sentence(g: pd.DataFrame, sizes: List[int]) -> str:
    """Unmerged against merged latency and the merge's fidelity, of one arm's rows ``g`` (median times of one run)."""
    sizes = sorted({sizes[0], sizes[-1]})
    txt = [f"batch {b}: unmerged / merged {np.median(g[f'latency_unmerged_batch{b}_s'] / g[f'latency_merged_batch{b}_s']):.2f}×"
           for b in sizes]
    diff = g.get("max_abs_logit_diff_fp32")
    fid = f"; merge fidelity: max |logit difference| merged vs unmerged {diff.max():.1e} (fp32)" if diff is not None else ""
    return "; ".join(txt) + fid


def merge_table(t: pd.DataFrame) -> pd.DataFrame:
    """Per rank-swept arm and batch size: the median over its runs of unmerged / merged latency (each run's own
    medians) and the merge's fidelity, the numbers the latency section states."""
    rows = []
    for arm in arms(t, "rank"):
        g = swept(t, "rank", arm)
        for b in latency_batches(t):
            un, me = f"latency_unmerged_batch{b}_s", f"latency_merged_batch{b}_s"
            if un not in g or me not in g or not g[me].notna().any():
                continue
            diff = g.get("max_abs_logit_diff_fp32")
            rows.append({"arm": arm, "title": arm_title(t, arm), "batch": b, "runs": int(g[me].notna().sum()),
                         "unmerged_over_merged": float(np.median(g[un] / g[me])),
                         "max_abs_logit_diff_fp32": float(diff.max()) if diff is not None else np.nan})
    return pd.DataFrame(rows, columns=["arm", "title", "batch", "runs", "unmerged_over_merged",
                                       "max_abs_logit_diff_fp32"])


def latency_finding(t: pd.DataFrame) -> str:
    """What merging removes: the unmerged / merged latency of each rank-swept arm and the merge's fidelity. Whether
    merged equals the base is the latency claim's, from timings interleaved inside each run."""
    measured = []
    for arm in arms(t, "rank"):
        g = swept(t, "rank", arm)
        sizes = [b for b in latency_batches(t) if f"latency_merged_batch{b}_s" in g
                 and g[f"latency_merged_batch{b}_s"].notna().any() and f"latency_unmerged_batch{b}_s" in g]
        if sizes:
            measured.append((arm, g, sizes))
    if not measured:
        return "No LoRA latency was measured in this study."
    return "Median latency of the same run before and after merging (" + "; ".join(
        f"{arm_title(t, arm)}: {_latency_sentence(g, sizes)}" for arm, g, sizes in measured) + \
        ("). Latencies of different runs are not compared with each other: runs time at different moments of a "
         "shared machine.")


class Tradeoff(Measure):
    name = "tradeoff"
    tables = ("tradeoff",)

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        return {"tradeoff": tradeoff(ctx.table("runs"), ctx.table("spectra"), ctx.table("truncation"),
                                     ctx.table("forgetting_vs_full"))}

    def sections(self, ctx: Context) -> List[Section]:
        runs, t = ctx.table("runs"), ctx.table("tradeoff")
        missing = [name for rows, name in ((baselines(runs), "the frozen base"), (references(runs), "full finetuning"),
                                           (swept(runs, "rank"), "LoRA")) if rows.empty]
        sizes = latency_batches(t)
        return [Section("The tradeoff: what each method costs and what it gets", [
            "One row per method, mean over seeds (± sample standard deviation where there are several). Every "
            "column of the cost table is measured in the runs. Training memory is counted in parts, the same on "
            "every rerun of a config: the parameters, the gradients and AdamW's state read from their tensors, and "
            "the activations autograd saved for backward at the largest micro-batch (through saved-tensor hooks); "
            "a CPU process's resident memory, which moves with the machine, is not used. Latency is the median of "
            "repeated timings at max_length tokens (merged for a method that merges); storage is the bytes a user "
            "ships per task. The formulas' predictions are in a table of their own.",
            *([f"This study has no run of {', '.join(missing)}: the rows and comparisons that need it are absent."]
              if missing else [])], table="tradeoff_cost",
            table_caption="Cost, measured" + (f" (latency at batch {' and '.join(map(str, sorted({sizes[0], sizes[-1]})))}"
                                             ", merged / unmerged for LoRA)" if sizes else "") + "."),
            Section("Optimizer memory: measured against the formulas", [memory_finding(t)], table="tradeoff_formulas",
                    level=3, table_caption="Optimizer state as measured beside two formulas: fp32 AdamW (exp_avg, "
                                           "exp_avg_sq: 8 bytes per trainable parameter) and the mixed-precision bill "
                                           "(2 + 2 + 8 + 4 = 16 bytes per parameter)."),
            Section("Quality", [
                "What each method gets for that cost. Test accuracy is the whole test split; forgetting the "
                "held-out accuracy drop pooled over the informative tasks (as in the forgetting section); rank@90 % the mean over the run's saved ΔW; the truncated full "
                "finetune keeps only the LoRA targets' ΔW, truncated to the row's rank (targets_only)."],
                table="tradeoff_quality", level=3, table_caption="Quality, measured (means over seeds).")]

    def formatted(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        t = ctx.table("tradeoff")
        if t.empty:
            return {}
        return {"tradeoff_cost": format_cost(t), "tradeoff_formulas": format_formulas(t),
                "tradeoff_quality": format_quality(t)}


def latency_table(study) -> pd.DataFrame:
    """Per run timed merged and per batch size: log(merged / base) per timing round (the arms timed in turn within
    each round share the machine's load) with its mean and 90 % t interval over the rounds, and the same for the
    A/A control (the merged model against itself: the timing noise)."""
    rows = []
    for r in study.runs:
        samples = (r.summary.get("latency") or {}).get("samples") or {}
        for key, times in samples.items():
            if "base" not in times or "merged_again" not in times:
                continue
            m, b, a = (np.log(np.asarray(times[k], dtype=float)) for k in ("merged", "base", "merged_again"))
            ratio, aa = m - b, m - a
            lo, hi = _t_interval(ratio)
            alo, ahi = _t_interval(aa)
            rows.append({"member": r.member, "arm": r.arm, "title": r.title, "label": r.label, "value": r.value,
                         "seed": r.seed, "batch": int(key.replace("batch", "")), "rounds": len(ratio),
                         "log_ratio": float(ratio.mean()), "log_ratio_low": lo, "log_ratio_high": hi,
                         "aa": float(aa.mean()), "aa_low": alo, "aa_high": ahi})
    return pd.DataFrame(rows)


def _t_interval(x: np.ndarray, level: float = 0.90) -> tuple:
    from ..paired import mean_interval
    return mean_interval(x[None, :], level) if len(x) > 1 else (float("nan"), float("nan"))


class MergeLatency(Measure):
    name = "latency"
    tables = ("latency", "merge_latency")

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        return {"latency": latency_table(ctx.study), "merge_latency": merge_table(ctx.table("tradeoff"))}

    def sections(self, ctx: Context) -> List[Section]:
        lat, claim = ctx.table("latency"), ctx.claim("latency")
        if lat.empty and (claim is None or claim.verdict == NOT_MEASURED):
            return []  # no latency measured: the verdict table's row says so, no section of its own
        paragraphs = [latency_finding(ctx.table("tradeoff"))]
        if claim is not None:
            paragraphs.append(claim.sentence())
        return [Section("Does merging remove LoRA's latency?", paragraphs,
                        table="latency" if not lat.empty else None,
                        table_caption="Merged / base latency per run and batch size, timed in turn over rounds in one "
                                      "process, with the A/A control (the merged model against itself); 90 % "
                                      "intervals over the rounds.")]

    def formatted(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        lat = ctx.table("latency")
        if lat.empty:
            return {}
        return {"latency": pd.DataFrame([{
            "run": r.member, "batch": int(r.batch), "rounds": int(r.rounds),
            "merged / base [90 %]": f"{np.exp(r.log_ratio):.3f}× [{np.exp(r.log_ratio_low):.3f}, "
                                    f"{np.exp(r.log_ratio_high):.3f}]",
            "A/A [90 %]": f"{np.exp(r.aa):.3f}× [{np.exp(r.aa_low):.3f}, {np.exp(r.aa_high):.3f}]"}
            for _, r in lat.iterrows()])}
