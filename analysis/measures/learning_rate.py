"""Were the learning rates fair? A rank comparison means nothing if one rank got a bad learning rate, so a study that
searched them shows the evidence: the validation score of every (method or rank, learning rate) tried, as a heatmap
with the best rate of each row marked. The grid comes from ``study.json``: ``lr_evidence`` (the search behind a
preset's configured rates) and ``lr_search.grid`` (a study that searched itself; its keys take precedence), both
mapping a key — a method (``full``), a method at a rank (``lora_r8``) or at a dimension d (``subspace_d10000``) — to
{learning rate: validation score}. Nothing is drawn without one.

From the same grid, LoRA's best rate over full finetuning's per arm and rank (``rate_ratios``), with the bracket
the grid gives (the neighbouring rates tried on either side of each best), and the claim of Schulman et al. 2025
("LoRA Without Regret") that it is about 10× and independent of rank under α = 32 with the α/r scaling."""
from __future__ import annotations

import re
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from .. import plotting
from ..loader import Study, label_key
from ..claims import FINDING, HOLDS, FAILS, NOT_MEASURED, UNRESOLVED, Claim
from .base import Context, Measure, Section
from .verdicts import LORA

KEY = re.compile(r"^(?P<arm>.+?)_(?P<axis>[rd])(?P<value>\d+)$")
# "LoRA's best rate is about 10x full FT's": read as within a factor of 3 either side of 10 (3.3x to 30x)
RATIO_TARGET, RATIO_FACTOR = 10.0, 3.0
RATIO_SOURCE = "Schulman et al. 2025, LoRA Without Regret (Llama 3 / Qwen 3 SFT on Tulu3, OpenThoughts3; α = 32, α/r)"


def evidence(study: Study) -> Optional[dict]:
    """The study's {key: {lr: score}}: ``lr_evidence`` with ``lr_search.grid``'s keys over it, keeping only the keys
    of this study's arms (a preset's shipped evidence may carry another study's keys); None without any."""
    shipped = study.index.get("lr_evidence")
    searched = (study.index.get("lr_search") or {}).get("grid")
    searched = searched if isinstance(searched, dict) else {}
    # an arm this study searched itself is read from its own search alone: the preset's shipped rows for it describe
    # the search behind the shipped rates (another design's ranks, another grid), not the rates these runs used
    mine = {_arm_of(str(k)) for k in searched}
    shipped = {k: v for k, v in (shipped if isinstance(shipped, dict) else {}).items() if _arm_of(str(k)) not in mine}
    grid = {**shipped, **searched}
    arms = {r.arm for r in study.runs} | {m.get("arm") for m in (study.index.get("lr_search") or {}).get("members", [])}
    # a row set to null is dropped: how a preset removes a row it inherits (lora_r64 where it stops at r = 16)
    grid = {k: v for k, v in grid.items() if _arm_of(str(k)) in arms and v is not None}
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


def _best_and_bracket(scores: dict) -> tuple:
    """(best rate, the tried rate below it, the tried rate above it) of one grid row; a rate that did not learn (None)
    counts as tried; a side is None where the best sits at the grid's edge (the optimum may lie beyond it)."""
    tried = sorted(float(lr) for lr in scores)
    vals = {float(lr): float(v) for lr, v in scores.items() if v is not None}
    if not vals:
        return None, None, None
    best = max(vals, key=vals.get)
    i = tried.index(best)
    return best, (tried[i - 1] if i > 0 else None), (tried[i + 1] if i + 1 < len(tried) else None)


def rate_ratios(study: Study) -> pd.DataFrame:
    """One row per (LoRA arm, rank) searched beside full FT: both best rates, their ratio and the ratio's bracket
    (LoRA's lower neighbour over full FT's upper one, and the reverse; NaN where a best sits at its grid's edge)."""
    grid = evidence(study) or {}
    reference = {r.arm for r in study.runs if r.is_reference}  # full FT's arm, by its role
    main_key = next((k for k in grid if str(k) in reference), None)
    rows = []
    for key, scores in grid.items():
        m = KEY.match(str(key))
        if not m or m.group("axis") != "r":
            continue
        arm, rank = m.group("arm"), int(m.group("value"))
        runs = [r for r in study.runs if r.arm == arm]
        if not runs or runs[0].family != LORA:
            continue
        # full FT in the arm's own setting when the arm names one (study.arms.<arm>.reference), else the study's
        full_key = getattr(runs[0], "reference_arm", None) or main_key
        if full_key not in grid:
            continue
        f_best, f_lo, f_hi = _best_and_bracket(grid[full_key])
        best, lo, hi = _best_and_bracket(scores)
        if best is None or f_best is None:
            continue
        at = [r for r in runs if r.record.get("rank") == rank]
        alpha = at[0].record.get("alpha") if at else None
        alphas = {(r.record.get("alpha"), r.record.get("rank")) for r in runs if r.record.get("alpha") is not None}
        rows.append({"arm": arm, "title": runs[0].title, "rank": rank, "alpha": alpha, "full": str(full_key),
                     "alpha_rule": _arm_rule(alphas) or _alpha_rule(alpha, rank, runs),
                     "lora_lr": best, "full_lr": f_best, "ratio": best / f_best,
                     "ratio_low": lo / f_hi if lo is not None and f_hi is not None else np.nan,
                     "ratio_high": hi / f_lo if hi is not None and f_lo is not None else np.nan})
    return pd.DataFrame(rows).sort_values(["arm", "rank"]).reset_index(drop=True) if rows else pd.DataFrame()


def _arm_rule(pairs) -> str:
    """An arm's α rule from its (α, rank) pairs over two or more ranks: 'α = 32' when α is the same at every rank
    (so its rank where α = 2r too reads as the fixed rule), 'α = 2r' when α = 2r at every rank; '' otherwise."""
    if len({k for _, k in pairs}) < 2:
        return ""
    if len({float(a) for a, _ in pairs}) == 1:
        return f"α = {float(next(iter(pairs))[0]):g}"
    return "α = 2r" if all(float(a) == 2 * k for a, k in pairs) else ""


def _alpha_rule(alpha, rank: int, runs) -> str:
    """'α = 2r' or 'α = 32' for a searched rank; a rank searched but not trained in this study (a preset's shipped
    grid) takes its arm's rule when every trained rank of the arm shows the same one."""
    if alpha is not None:
        return "α = 2r" if float(alpha) == 2 * rank else f"α = {float(alpha):g}"
    pairs = [(r.record.get("alpha"), r.record.get("rank")) for r in runs if r.record.get("alpha") is not None]
    if pairs and all(float(a) == 2 * k for a, k in pairs):
        return "α = 2r"
    if pairs and len({float(a) for a, _ in pairs}) == 1:
        return f"α = {float(pairs[0][0]):g}"
    return "—"


MAX_BRACKET = 16.0  # the widest bracket that places a ratio: 2x grid steps on both sides of both optima


def ratio_verdict(t: pd.DataFrame) -> tuple:
    """(verdict, why) of "LoRA's best rate ≈ 10× full FT's and independent of rank" on a rate_ratios table (one arm).
    Does not hold: some rank's bracket lies wholly outside 10/3–30×, or two ranks' brackets are disjoint (the ratio
    moves with the rank). Holds: every rank's ratio lies in 10/3–30×, all brackets share a ratio, and every bracket
    is at most 16× wide (grids of about 2× steps on both sides of each optimum, as the claim needs: with 3× steps a
    bracket spans 81–100× and places nothing).
    Otherwise (a bracket open at a grid edge, or brackets too wide to place the ratio) unresolved."""
    lo_band, hi_band = RATIO_TARGET / RATIO_FACTOR, RATIO_TARGET * RATIO_FACTOR
    low = t.ratio_low.fillna(0.0)
    high = t.ratio_high.fillna(np.inf)
    outside = t[(high < lo_band) | (low > hi_band)]
    if len(outside):
        return FAILS, ("the grid places the ratio outside 3.3–30× at " +
                       ", ".join(f"r={int(r['rank'])}" for _, r in outside.iterrows()) + ".")
    if len(t) > 1 and low.max() > high.min():
        a = t.loc[low.idxmax()]
        b = t.loc[high.idxmin()]
        return FAILS, (f"the ratio moves with the rank: r={int(a['rank'])}'s bracket starts above where "
                       f"r={int(b['rank'])}'s ends.")
    common = (max(low.max(), lo_band), min(high.min(), hi_band))
    inside = t.ratio.between(lo_band, hi_band).all()
    fine = bool((high / low.where(low > 0)).le(MAX_BRACKET * (1 + 1e-9)).all())
    if inside and fine and common[0] <= common[1] and t.ratio_low.notna().all() and t.ratio_high.notna().all():
        return HOLDS, ("every rank's best rate is 3.3–30× full FT's, one ratio fits every rank's bracket, and every "
                       f"bracket is at most {MAX_BRACKET:g}× wide.")
    if t.ratio_low.isna().any() or t.ratio_high.isna().any():
        return UNRESOLVED, "a best rate sits at the edge of its grid, so its bracket is open on that side."
    out_of_band = t[~t.ratio.between(lo_band, hi_band)]
    if fine and len(out_of_band):
        return UNRESOLVED, ("the best ratio lies outside 3.3–30× at " +
                            ", ".join(f"r={int(r['rank'])} ({r.ratio:.3g}×)" for _, r in out_of_band.iterrows()) +
                            ", but its bracket reaches into the band: the grid places it on neither side.")
    return UNRESOLVED, (f"the grid's brackets (widest {t.ratio_low.min():.3g}–{t.ratio_high.max():.3g}×) are too "
                        "wide to place the ratio: a finer grid near each optimum would decide it.")


def ratio_claims(study: Study) -> List[Claim]:
    claim = "LoRA's best learning rate ≈ 10× full FT's and independent of rank"
    rule = ("best rates on the validation grid (the highest mean validation score per row; the scores' own noise is "
            "not tested, so a best rate one grid step off moves the ratio); the bracket of each ratio from the "
            "neighbouring rates tried "
            "(LoRA's lower over full FT's upper, and the reverse); holds when every ratio lies in 3.3–30×, one "
            "ratio fits every bracket and no bracket is over 16× wide (about 2× grid steps near each optimum), does not hold when a bracket lies outside that band or two ranks' brackets are "
            "disjoint, else unresolved")
    t = rate_ratios(study)
    if t.empty:
        return [Claim("lr_ratio", claim, FINDING, NOT_MEASURED, "—", rule,
                      "needs a searched rate grid for full FT and a LoRA arm at some rank", published="≈ 10×",
                      source=RATIO_SOURCE, section="learning_rates")]
    out = []
    several = t.groupby("arm")["rank"].nunique()
    for arm, a in t.groupby("arm", sort=False):
        if several[arm] < 2 and several.max() >= 2:
            continue  # one searched rank says nothing of "independent of rank" beside arms that sweep it
        verdict, why = ratio_verdict(a)
        rules = sorted(set(a.alpha_rule))
        measured = "; ".join(f"r={int(r['rank'])} {r.ratio:.3g}× [{_bound(r.ratio_low)}, {_bound(r.ratio_high)}]"
                             for _, r in a.iterrows())
        out.append(Claim(f"lr_ratio:{arm}", f"{claim} ({a.title.iloc[0]}, {', '.join(rules)})", FINDING, verdict,
                         measured, rule, why, published="≈ 10×, independent of rank (α = 32, α/r)",
                         source=RATIO_SOURCE, interval="bracket of the rate grid",
                         section="learning_rates"))
    return out


def _bound(x: float) -> str:
    return "open" if pd.isna(x) else f"{x:.3g}"


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

    def claims(self, ctx: Context) -> list:
        return ratio_claims(ctx.study) if evidence(ctx.study) else []

    def sections(self, ctx: Context) -> List[Section]:
        if not ctx.drew("lr_heatmap"):
            return []
        return [Section("Were the learning rates fair? The validation sweep", [finding(ctx.table("learning_rates"))],
                        figure="lr_heatmap", level=3 if ctx.study.swept("rank") else 2,  # under reach, if any
                        caption=self.caption(swept_word(ctx.table("learning_rates"))))]

    @staticmethod
    def caption(word: str) -> str:
        whose, moves = ("each rank's", "the rank") if word == "rank" else ("each row's", word)
        return (f"Whether {whose} chosen rate (boxed) is an interior optimum of its row and how the best rate moves "
                f"with {moves}; scope: the validation split, the learning-rate search's runs (first seed).")
