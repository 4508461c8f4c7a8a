"""Learning against forgetting over training (Biderman et al. 2024's Pareto plot, traced over training lengths): at
each checkpoint where a run logged both a validation score and held-out probes (``train.eval_every`` and
``heldout.every``, as ``experiment=training_length`` sets them), the learning (validation score) and the forgetting
(mean drop of held-out probe accuracy), from the run's ``metrics.jsonl``. Table ``training_curve``: one row per
run and checkpoint. Figure: learning against forgetting with each run's checkpoints joined in step order (one line
per method, the mean over seeds where there are several), beside both against the step.

A checkpoint is a point inside one run whose learning-rate schedule spans the whole run, not a shorter run of its
own: the early checkpoints have trained at higher rates than a run of that length would end on."""
from __future__ import annotations

from typing import Dict, List, Optional

import pandas as pd

from .. import plotting
from ..loader import Run, Study
from ..roles import ordered_labels, run_columns
from .base import Context, Measure, Section, per_run, seeds_phrase
from .forgetting import accuracy_tasks, informative


def _score(entry: dict) -> Optional[float]:
    """Higher is better: the validation accuracy when the task has one, else −loss."""
    if entry.get("accuracy") is not None:
        return float(entry["accuracy"])
    return -float(entry["loss"]) if entry.get("loss") is not None else None


def curve_rows(run: Run, tasks: Optional[List[str]] = None) -> List[dict]:
    """One row per step at which ``run`` logged a validation score and held-out probes; ``forgetting_mean`` over
    ``tasks`` (the informative accuracy tasks; None: every task the run logged)."""
    val: Dict[int, dict] = {}
    held: Dict[int, dict] = {}
    for e in run.dir.metrics():
        if e.get("split") == "validation":
            val[int(e["step"])] = e
        elif e.get("split") == "heldout" and e.get("tasks"):
            held[int(e["step"])] = e
    rows = []
    for step in sorted(set(val) & set(held)):
        score = _score(val[step])
        if score is None:
            continue
        row = {**run_columns(run), "step": step, "validation_score": score,
               "score": "accuracy" if val[step].get("accuracy") is not None else "−loss",
               "forgetting_mean": _mean_forgetting(held[step], tasks)}
        for task, t in (held[step].get("tasks") or {}).items():
            row[f"forgetting_{task}"] = t.get("forgetting")
        rows.append(row)
    return rows if len(rows) >= 2 else []


def _mean_forgetting(entry: dict, tasks: Optional[List[str]]) -> float:
    found = entry.get("tasks") or {}
    values = [float(found[t]["forgetting"]) for t in (tasks if tasks is not None else found) if t in found]
    return round(sum(values) / len(values), 12) if values else float("nan")


def curve_table(study: Study) -> pd.DataFrame:
    """Every run's checkpoints, forgetting averaged over the informative accuracy tasks only (a probe at chance
    cannot show forgetting)."""
    tasks = [t for t in accuracy_tasks(study) if informative(study, t)[0]]
    return pd.DataFrame(per_run(study, study.runs, lambda r: curve_rows(r, tasks)))


def _styles(t: pd.DataFrame) -> Dict[str, dict]:
    labels = ordered_labels(t)
    swept = [lab for lab in labels if not t[t.label == lab].baseline.any() and not t[t.label == lab].reference.any()]
    colors = {lab: plotting.sequence_color(i, len(swept)) for i, lab in enumerate(swept)}
    out = {}
    for lab in labels:
        first = t[t.label == lab].iloc[0]
        if first.baseline:
            out[lab] = {"color": plotting.BASE_COLOR, "marker": "D"}
        elif first.reference:
            out[lab] = {"color": plotting.REFERENCE_COLOR, "marker": "s"}
        else:
            out[lab] = {"color": colors[lab], "marker": "o"}
    return out


@plotting.styled
def figure(study: Study, t: pd.DataFrame):
    """Left: validation score against mean forgetting, each run's checkpoints joined in step order (thin), the
    method's mean over seeds (thick, open marker at the first checkpoint, filled at the last). Right: both against
    the step."""
    fig, axes = plotting.subplots(2, 2, width=8.0, height=5.6, gridspec_kw={"width_ratios": [1.5, 1]})
    big = fig.add_subplot(axes[0, 0].get_subplotspec().get_gridspec()[:, 0])
    axes[0, 0].remove()
    axes[1, 0].remove()
    learn, forget = axes[0, 1], axes[1, 1]
    styles = _styles(t)
    for label in ordered_labels(t):
        g = t[t.label == label]
        st = styles[label]
        for _, run in g.groupby("member"):
            run = run.sort_values("step")
            big.plot(run.validation_score, run.forgetting_mean, color=st["color"], lw=0.7, alpha=0.35)
        m = g.groupby("step")[["validation_score", "forgetting_mean"]].mean().sort_index()
        big.plot(m.validation_score, m.forgetting_mean, color=st["color"], lw=1.6, marker=st["marker"], ms=4,
                 label=label)
        big.plot(m.validation_score.iloc[:1], m.forgetting_mean.iloc[:1], ls="none", marker=st["marker"], ms=8,
                 mfc="white", color=st["color"])
        learn.plot(m.index, m.validation_score, color=st["color"], marker=st["marker"], ms=3, lw=1.2)
        forget.plot(m.index, m.forgetting_mean, color=st["color"], marker=st["marker"], ms=3, lw=1.2)
    for ax in (big, forget):
        ax.axhline(0, color=plotting.GUIDE_COLOR, ls=":", lw=0.8)
    what = t.score.iloc[0]
    big.set_xlabel(f"learning: validation {what}")
    big.set_ylabel("forgetting: mean held-out probe drop")
    big.set_title("each method over training (large open marker: first checkpoint)", fontsize=plotting.LABEL)
    learn.set_ylabel(f"validation {what}")
    forget.set_ylabel("forgetting")
    forget.set_xlabel("training step")
    learn.sharex(forget)
    learn.tick_params(labelbottom=False)
    plotting.figure_legend(fig, [big], ncol=4)
    return plotting.finish(fig, study)


def finding(t: pd.DataFrame) -> str:
    steps = sorted(t.step.unique())
    parts = [f"Validation score and mean held-out forgetting at {len(steps)} checkpoints (steps "
             f"{', '.join(map(str, steps))}), {seeds_phrase(t.seed)}."]
    last, first = [], []
    for label in ordered_labels(t):
        g = t[t.label == label].groupby("step")[["validation_score", "forgetting_mean"]].mean().sort_index()
        first.append(f"{label} {g.validation_score.iloc[0]:.3f} / {g.forgetting_mean.iloc[0]:+.3f}")
        last.append(f"{label} {g.validation_score.iloc[-1]:.3f} / {g.forgetting_mean.iloc[-1]:+.3f}")
    parts.append(f"Learning / forgetting at the first checkpoint (step {steps[0]}): " + ", ".join(first) +
                 f"; at the last (step {steps[-1]}): " + ", ".join(last) + ".")
    parts.append("Biderman et al. found that LoRA and full finetuning trace roughly one Pareto curve over training "
                 "lengths, LoRA learning less and forgetting less. The checkpoints lie inside runs whose learning-rate "
                 "schedule spans the whole run, so an early checkpoint is not a shorter run.")
    return " ".join(parts)


class TrainingLength(Measure):
    name = "training_length"
    tables = ("training_curve",)

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        t = curve_table(ctx.study)
        return {"training_curve": t} if not t.empty else {}

    def figures(self, ctx: Context) -> Dict[str, object]:
        return {"training_length": figure(ctx.study, ctx.table("training_curve"))} \
            if ctx.has("training_curve") else {}

    def sections(self, ctx: Context) -> List[Section]:
        if not ctx.drew("training_length"):
            return []
        t = ctx.table("training_curve")
        return [Section("Learning vs forgetting over training", [finding(t)], figure="training_length", level=3,
                        caption="Whether the methods' paths run along one curve (Biderman et al.) or LoRA forgets "
                                "less for the same learning; scope: the validation split and probes on every "
                                f"held-out task at each checkpoint, {seeds_phrase(t.seed)}.")]
