"""Were the learning rates fair? A rank comparison means nothing if one rank got a bad learning rate, so a study that
searched them shows the evidence: the validation score of every (method or rank, learning rate) tried, as a heatmap
with the best rate of each row marked. The grid comes from ``study.json``: ``lr_evidence`` (the search behind a
preset's configured rates) and ``lr_search.grid`` (a study that searched itself; its keys take precedence), both
mapping a key — a method (``full``), a method at a rank (``lora_r8``) or at a dimension d (``subspace_d10000``) — to
{learning rate: validation score}. Nothing is drawn without one."""
from __future__ import annotations

import re
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from .. import plotting
from ..loader import Study, label_key
from .base import Context, Measure, Section

KEY = re.compile(r"^(?P<arm>.+?)_(?P<axis>[rd])(?P<value>\d+)$")


def evidence(study: Study) -> Optional[dict]:
    """The study's {key: {lr: score}}: ``lr_evidence`` with ``lr_search.grid``'s keys over it, keeping only the keys
    of this study's arms (a preset's shipped evidence may carry another study's keys); None without any."""
    shipped = study.index.get("lr_evidence")
    searched = (study.index.get("lr_search") or {}).get("grid")
    grid = {**(shipped if isinstance(shipped, dict) else {}), **(searched if isinstance(searched, dict) else {})}
    arms = {r.arm for r in study.runs} | {m.get("arm") for m in (study.index.get("lr_search") or {}).get("members", [])}
    grid = {k: v for k, v in grid.items() if _arm_of(str(k)) in arms}
    return grid or None


def _arm_of(key: str) -> str:
    m = KEY.match(key)
    return m.group("arm") if m else key


def _row_name(study: Study, key: str) -> tuple:
    """(sort key, label) of a grid key: 'lora_r8' -> LoRA r=8, 'subspace_d1000' -> subspace d=1000, 'full' -> full
    FT, each arm by its title and place in the study."""
    m = KEY.match(key)
    arm, axis, value = (m.group("arm"), m.group("axis"), int(m.group("value"))) if m else (key, None, None)
    run = next((r for r in study.runs if r.arm == arm), None)
    title = run.title if run is not None else arm
    order = label_key(run)[:3] if run is not None else (3, 0, arm)
    return (*order, value or 0), title + (f" {axis}={value}" if value is not None else "")


def lr_table(study: Study) -> pd.DataFrame:
    """One row per (key, learning rate): the validation score, and whether it is the row's best."""
    grid = evidence(study)
    if grid is None:
        return pd.DataFrame()
    rows = []
    for key, scores in grid.items():
        order, label = _row_name(study, str(key))
        vals = {float(lr): float(v) for lr, v in (scores or {}).items() if v is not None}
        best = max(vals, key=vals.get) if vals else None
        for lr, v in sorted(vals.items()):
            rows.append({"key": key, "label": label, "order": str(order), "lr": lr, "validation_score": v,
                         "best": lr == best})
    t = pd.DataFrame(rows)
    if t.empty:
        return t
    keys = sorted(grid, key=lambda k: _row_name(study, str(k))[0])
    t["row"] = t.key.map({k: i for i, k in enumerate(keys)})
    return t.sort_values(["row", "lr"]).drop(columns="order").reset_index(drop=True)


@plotting.styled
def heatmap(study: Study, t: pd.DataFrame):
    """Rows: methods and ranks; columns: learning rates; cells: validation score (best of each row boxed)."""
    labels = list(dict.fromkeys(t.sort_values("row").label))
    lrs = sorted(t.lr.unique())
    grid = np.full((len(labels), len(lrs)), np.nan)
    for _, r in t.iterrows():
        grid[labels.index(r.label), lrs.index(r.lr)] = r.validation_score
    fig, axes = plotting.subplots(width=2.6 + 0.85 * len(lrs), height=1.5 + 0.36 * len(labels))
    ax = axes[0, 0]
    masked = np.ma.masked_invalid(grid)
    im = ax.imshow(masked, cmap=plotting.SEQUENCE_CMAP, aspect="auto")
    ax.set_facecolor("0.92")
    hi = np.nanmax(grid)
    lo = np.nanmin(grid)
    for _, r in t.iterrows():
        i, j = labels.index(r.label), lrs.index(r.lr)
        v = r.validation_score
        light = (v - lo) / max(hi - lo, 1e-12) > 0.6
        ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=plotting.ANNOTATION,
                color="black" if light else "white", fontweight="bold" if r.best else "normal")
        if r.best:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="tab:red", lw=2))
    ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs], rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("learning rate")
    fig.colorbar(im, ax=ax, label="validation score")
    return plotting.finish(fig, study)


def swept_word(t: pd.DataFrame) -> str:
    """What the grid's rows sweep: 'rank' (LoRA's ranks, or nothing swept), 'd' (subspace dimensions), or both."""
    axes = {m.group("axis") for m in map(KEY.match, map(str, t.key.unique())) if m}
    return "d" if axes == {"d"} else "rank or d" if axes == {"r", "d"} else "rank"


def finding(t: pd.DataFrame) -> str:
    best = t[t.best].sort_values("row")
    text = (f"Validation score (never the test split) of every learning rate tried, per method and {swept_word(t)}; "
            "the best of each row is boxed: " + ", ".join(f"{r.label} {r.lr:g} ({r.validation_score:.3f})"
                                                 for _, r in best.iterrows()) + ".")
    edge = [r.label for _, r in best.iterrows()
            if r.lr in (t[t.key == r.key].lr.min(), t[t.key == r.key].lr.max()) and (t.key == r.key).sum() > 2]
    if edge:
        text += (" The best rate is at the edge of the grid for " + ", ".join(edge) +
                 ": the optimum may lie outside it.")
    return text


class LearningRates(Measure):
    name = "learning_rates"
    tables = ("learning_rates",)

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        t = lr_table(ctx.study)
        return {"learning_rates": t} if not t.empty else {}

    def figures(self, ctx: Context) -> Dict[str, object]:
        return {"lr_heatmap": heatmap(ctx.study, ctx.table("learning_rates"))} if ctx.has("learning_rates") else {}

    def sections(self, ctx: Context) -> List[Section]:
        if not ctx.drew("lr_heatmap"):
            return []
        return [Section("Were the learning rates fair? The validation sweep", [finding(ctx.table("learning_rates"))],
                        figure="lr_heatmap", level=3,
                        caption=self.caption(swept_word(ctx.table("learning_rates"))))]

    @staticmethod
    def caption(word: str) -> str:
        whose, moves = ("each rank's", "the rank") if word == "rank" else ("each row's", word)
        return (f"Whether {whose} chosen rate (boxed) is an interior optimum of its row and how the best rate moves "
                f"with {moves}; scope: the validation split, the learning-rate search's runs (first seed).")
