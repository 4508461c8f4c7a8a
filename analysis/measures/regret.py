"""LoRA Without Regret at small scale (Schulman et al. 2025): where LoRA matches full finetuning and where it stops,
each LoRA arm beside full FT trained in the same setting, paired seed by seed on the same test examples.

Settings. A run's setting is its batch size and the number of training examples it saw (steps × batch × gradient
accumulation): the study's own (``shared.budget``) or its arm's ``train`` settings (``lora_study.study.arms``). An
arm that changes the setting names the arm of full FT trained in that setting as its ``reference``; every other
LoRA arm is compared with the study's reference. Arms in the study's own setting sit in the middle of both sweeps.

Table ``regret``: one row per LoRA arm and rank: where it adapts (targets, the rank used, trainable parameters), its
setting, its reference, and the paired difference from it (``paired.compare``: Banerjee's interval over seeds and
examples, TOST at the study's margin, each row at 5 %). Table ``regret_gaps``: per rank, the change of that gap
between the smallest and the largest value of each sweep (examples seen at the study's batch; batch size at the
study's examples), paired per seed and example: (LoRA − full FT) there minus (LoRA − full FT) here. Table
``regret_loss``: the training loss each run logged, against the examples it had seen.

Claims, with their published setting stated as theirs (Llama 3 / Qwen 3 on Tulu3 / OpenThoughts3; ours: the study's
model and task), decided by their rules below; the rate claim ("≈ 10× full FT's, independent of rank") is
``learning_rate.ratio_claims``, one row per α rule."""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from lora_study.artifacts import module_kind, target_preset

from .. import crossed, paired, plotting
from ..claims import FAILS, FINDING, HOLDS, MINIMUM, NOT_MEASURED, TOO_LITTLE, UNRESOLVED, Claim, degenerate
from ..loader import Run, Study
from ..paired import fmt_interval
from .base import Context, Measure, Section, seeds_phrase
from .reach import score_margin, scores
from .verdicts import LORA

SOURCE = ("Schulman et al. 2025, LoRA Without Regret (Llama 3 / Qwen 3 SFT on Tulu3, OpenThoughts3; α = 32, α/r; "
          "ours: the study's model and task)")
EQUIVALENT, DIFFERENT = crossed.EQUIVALENT, crossed.DIFFERENT
ALL_LINEAR = "all_linear"
ATTENTION = ("attn", "attn_qv")


# (claim, the rule that decides it, Schulman et al.'s finding as they state it) per claim
CLAIMS = {
    "placement": (
        "LoRA on every linear layer (MLP included) matches full FT; attention-only LoRA is worse, even at "
        "all-linear's parameter count",
        ("all-linear LoRA shown equivalent to full FT (TOST at the margin, 5 %) and attention-only LoRA at the "
         "matched parameter count shown worse than all-linear LoRA (the paired difference's 95 % interval below "
         "0): holds; all-linear shown different from full FT, or attention-only at matched parameters shown "
         "equivalent to all-linear within the margin or better: does not hold; else unresolved"),
        "every layer ≈ full FT; attention-only worse, even at matched parameters"),
    "capacity": (
        "Past the adapter's capacity, low-rank LoRA falls behind full FT as the data grow",
        ("the lowest rank's gap to full FT at the most examples seen shown below 0 (95 % interval) and its change "
         "from the fewest examples shown negative (paired per seed and example): holds; that gap shown "
         "equivalent to 0 within the margin, or its change shown positive: does not hold; else unresolved "
         "(whether LoRA trains slower or stops at a floor is read from the loss curves, not this test)"),
        "matches on small and medium data; past capacity falls behind as slower training, not a floor"),
    "batch": (
        "LoRA loses more than full FT at large batch size, and a higher rank does not remove it",
        ("per rank, the change of the gap (LoRA − full FT) from the smallest to the largest batch, paired per seed "
         "and example: holds when it is shown negative (95 % interval below 0) at every rank; does not hold when "
         "it is shown equivalent to 0 within the margin, or positive, at some rank (the penalty is absent there); "
         "else unresolved"),
        "larger penalty at large batch; a higher rank does not remove it"),
}


def setting(study: Study, run: Run) -> Dict[str, int]:
    """{batch, steps, examples_seen} of a run: its arm's training settings over the study's budget."""
    budget = {**(study.index.get("shared") or {}).get("budget", {}), **run.train}
    batch, steps = int(budget.get("batch_size") or 0), int(budget.get("max_steps") or 0)
    accum = int(budget.get("grad_accum") or 1)
    return {"batch": batch * accum, "steps": steps, "examples_seen": batch * accum * steps}


def reference_runs(study: Study, runs: List[Run]) -> List[Run]:
    """The runs an arm's runs are compared with: its declared reference arm's, else the study's reference."""
    ref = runs[0].reference_arm if runs else None
    return [r for r in study.runs if r.arm == ref] if ref else study.references()


def _targets(run: Run) -> str:
    """Where the run's LoRA went: the preset (attn_qv, attn, mlp, all_linear) of the modules it adapted, else their
    kinds joined by '+'; a run without its module list reads its arm's options."""
    modules = run.summary.get("lora_targets") or []
    if not modules:
        t = (run.record.get("options") or {}).get("target_modules", "attn_qv")
        return t if isinstance(t, str) else "+".join(t)
    return target_preset(modules) or "+".join(sorted({module_kind(m) or m for m in modules}))


def _matched(run: Run) -> Optional[str]:
    m = (run.record.get("options") or {}).get("match_params")
    return None if m is None else (m if isinstance(m, str) else "+".join(m))


def regret_table(study: Study) -> pd.DataFrame:
    """One row per LoRA arm and rank (every setting): the paired difference from its reference, and where and how
    it trained."""
    rows = []
    for arm in study.arms("rank", family=LORA, settings=True):
        for rank in study.values(arm):
            runs = [r for r in study.runs if r.arm == arm and r.value == rank]
            refs = reference_runs(study, runs)
            own, what = scores(runs)
            ref, _ = scores(refs)
            if not own or not ref:
                continue
            m = score_margin(study, what)
            c = paired.compare(own, ref, m)
            if c is None:
                continue
            first = runs[0]
            used = first.rank_used or rank
            s = setting(study, first)
            dnl = [r.member for r in runs + refs if r.did_not_learn and r.seed in c["seeds"]]
            ref_dnl = [r.member for r in refs if r.did_not_learn and r.seed in c["seeds"]]
            rows.append({"arm": arm, "title": first.title, "rank": rank, "rank_used": int(used),
                         "targets": _targets(first), "matched_to": _matched(first),
                         "alpha": first.record.get("alpha"),
                         "trainable": int(np.median([r.summary["params"]["trainable"] for r in runs])),
                         "lr": first.lr, "reference": refs[0].arm, "reference_lr": refs[0].lr,
                         "own_setting": first.own_setting, **s, "score": what, "seeds": len(c["seeds"]),
                         "examples": c["n_examples"], "mean": c["mean_a"], "reference_mean": c["mean_b"],
                         "gap": c["diff"], "ci_low": c["ci95"][0], "ci_high": c["ci95"][1],
                         "p_difference": c["p_difference"], "p_tost": c["p_tost"], "margin": c["margin"],
                         "verdict": c["verdict"], "did_not_learn": ", ".join(dnl),
                         "reference_did_not_learn": len(ref_dnl)})
    return pd.DataFrame(rows)


def _ref_settings(study: Study) -> Dict[str, int]:
    ref = study.references()
    return setting(study, ref[0]) if ref else {}


def sweeps(t: pd.DataFrame, study: Study) -> Dict[str, pd.DataFrame]:
    """The rows of each sweep: ``data`` (every examples-seen value at the study's batch) and ``batch`` (every batch
    at the study's examples seen), each only when it has at least two values."""
    own = _ref_settings(study)
    if t.empty or not own:
        return {}
    # the sweeps' LoRA is the one the arms in other settings use (W_q, W_v in without_regret; every linear layer
    # where a study's LoRA adapts those), at the study's own setting as well
    other = t[~t.own_setting.astype(bool)]
    where = other.targets.iloc[0] if other.targets.nunique() == 1 else "attn_qv"
    same_targets = t[(t.targets == where) & t.matched_to.isna() & t.arm.isin(_main_rule_arms(t, study))]
    out = {}
    for name, fixed, axis in (("data", "batch", "examples_seen"), ("batch", "examples_seen", "batch")):
        rows = same_targets[same_targets[fixed] == own[fixed]]
        ranks = [r for r, g in rows.groupby("rank") if g[axis].nunique() >= 2]
        rows = rows[rows["rank"].isin(ranks)]
        if rows[axis].nunique() >= 2:
            out[name] = rows.sort_values(["rank", axis]).reset_index(drop=True)
    return out


def _main_rule_arms(t: pd.DataFrame, study: Study) -> List[str]:
    """The arms whose α at every rank follows the study's rule (α = 2r, or the study's fixed α), so that a sweep
    compares one LoRA: an arm under another rule (α = 32 beside α = 2r) stays out even at the rank where both
    agree."""
    st = study.index.get("study") or {}
    rule, fixed = st.get("alpha_rule", "two_r"), st.get("alpha")

    def follows(row) -> bool:
        if row.alpha is None or row.alpha != row.alpha:
            return True
        want = 2 * row["rank"] if rule == "two_r" else fixed
        return want is None or float(row.alpha) == float(want)
    return [arm for arm, g in t.groupby("arm", sort=False) if all(follows(r) for _, r in g.iterrows())]


def gap_changes(study: Study, t: pd.DataFrame) -> pd.DataFrame:
    """Per sweep and rank: (LoRA − full FT) at the sweep's largest value minus at its smallest, paired over the
    seeds and test examples both share, with Banerjee's interval and TOST of "no change" at the margin. A setting in
    which a run of full FT did not learn is left out: the gap there is against a collapsed reference."""
    rows = []
    for name, s in sweeps(t, study).items():
        axis = "examples_seen" if name == "data" else "batch"
        for rank, g in s.groupby("rank"):
            g = g[g.reference_did_not_learn == 0]  # where full FT itself did not learn, there is no gap to read
            if g[axis].nunique() < 2:
                continue
            lo, hi = g.loc[g[axis].idxmin()], g.loc[g[axis].idxmax()]
            d_hi, what = _gap_scores(study, hi)
            d_lo, _ = _gap_scores(study, lo)
            c = paired.compare(d_hi, d_lo, score_margin(study, what))
            if c is None:
                continue
            rows.append({"sweep": name, "rank": int(rank), "from": int(lo[axis]), "to": int(hi[axis]),
                         "gap_from": float(lo.gap), "gap_to": float(hi.gap), "change": c["diff"],
                         "ci_low": c["ci95"][0], "ci_high": c["ci95"][1], "p_difference": c["p_difference"],
                         "p_tost": c["p_tost"], "verdict": c["verdict"], "seeds": len(c["seeds"]),
                         "examples": c["n_examples"]})
    return pd.DataFrame(rows)


def _gap_scores(study: Study, row) -> tuple:
    """{seed: per-example LoRA − reference score} of one row of the regret table."""
    runs = [r for r in study.runs if r.arm == row.arm and r.value == row["rank"]]
    own, what = scores(runs)
    ref, _ = scores(reference_runs(study, runs))
    return {s: own[s] - ref[s] for s in own if s in ref and len(own[s]) == len(ref[s])}, what


def loss_table(study: Study, t: pd.DataFrame) -> pd.DataFrame:
    """The training loss every run of the data sweep (LoRA at its ranks and their references) logged, against the
    examples seen."""
    s = sweeps(t, study).get("data")
    if s is None:
        return pd.DataFrame()
    rows = []
    arms = set(s.arm) | set(s.reference)
    for r in study.runs:
        if r.arm not in arms or (r.axis == "rank" and r.value not in set(s["rank"])):
            continue
        st = setting(study, r)
        for e in r.dir.metrics():
            if e.get("split") == "train" and e.get("loss") is not None:
                rows.append({"member": r.member, "arm": r.arm, "label": "full FT" if r.value is None else
                             f"LoRA r={r.value}", "rank": r.value, "seed": r.seed, "size": st["examples_seen"],
                             "step": int(e["step"]), "examples_seen": int(e["step"]) * st["batch"],
                             "loss": float(e["loss"])})
    return pd.DataFrame(rows)


# -- claims --------------------------------------------------------------------------------------

def _too_little(seeds: int, *intervals) -> Optional[str]:
    """Why a claim's evidence cannot decide it (too few seeds, or an interval of zero width: every run of both sides
    answered the same on every example), or None."""
    if seeds < MINIMUM["seeds"]:
        return f"a verdict over training runs needs at least {MINIMUM['seeds']} seeds; this has {seeds}"
    if any(degenerate(lo, hi) for lo, hi in intervals):
        return "an interval of zero width decides nothing (the runs compared answered alike on every example)"
    return None


def _row_text(r) -> str:
    return f"{r.gap:+.3f} {fmt_interval((r.ci_low, r.ci_high))}"


def _dnl(rows: pd.DataFrame) -> List[str]:
    return sorted({m.strip() for v in rows.get("did_not_learn", pd.Series(dtype=str)) for m in str(v).split(",")
                   if m.strip()})


def placement_claim(study: Study, t: pd.DataFrame) -> Claim:
    claim, rule, published = CLAIMS["placement"]
    own = t[t.own_setting] if not t.empty else t
    everywhere = own[(own.targets == ALL_LINEAR) & own.matched_to.isna()] if not own.empty else own
    matched = own[own.targets.isin(ATTENTION) & (own.matched_to == ALL_LINEAR)] if not own.empty else own
    if everywhere.empty or matched.empty:
        return _not_measured("regret:placement", claim, rule, published,
                             "needs a LoRA arm on every linear layer and an attention-only arm at its parameter count "
                             "(method option match_params: all_linear)")
    a = everywhere.iloc[0]
    b = matched[matched["rank"] == a["rank"]]
    b = b.iloc[0] if len(b) else matched.iloc[0]
    d_b, what = _gap_scores(study, b)
    d_a, _ = _gap_scores(study, a)
    c = paired.compare(d_b, d_a, score_margin(study, what))
    seeds = min(int(a.seeds), int(b.seeds))
    others = own[~own.index.isin([a.name, b.name])]
    measured = (f"all linear r={int(a['rank'])} ({a.trainable:,} trainable) − full FT {_row_text(a)} ({a.verdict}); "
                f"attention r={int(b.rank_used)} ({b.trainable:,}) − all linear "
                f"{c['diff']:+.3f} {fmt_interval(c['ci95'])}; " +
                "; ".join(f"{r.title} r={int(r.rank_used)} ({r.trainable:,}) − full FT {_row_text(r)}"
                          for _, r in others.iterrows()))
    dnl = _dnl(pd.DataFrame([a, b]))
    little = _too_little(seeds, (a.ci_low, a.ci_high), c["ci95"])
    if little:
        verdict, why = TOO_LITTLE, little
    elif a.verdict == DIFFERENT:
        verdict, why = FAILS, "all-linear LoRA is shown different from full FT"
    elif c["verdict"] == EQUIVALENT or c["ci95"][0] > 0:
        verdict, why = FAILS, ("attention-only LoRA at all-linear's parameter count is "
                               + ("shown equivalent to" if c["verdict"] == EQUIVALENT else "shown better than")
                               + " all-linear LoRA")
    elif a.verdict == EQUIVALENT and c["ci95"][1] < 0:
        verdict, why = HOLDS, ("all-linear LoRA is shown equivalent to full FT and attention-only LoRA at its "
                               "parameter count is shown worse")
    else:
        parts = []
        if a.verdict != EQUIVALENT:
            parts.append("all-linear LoRA's interval reaches past the margin")
        if not c["ci95"][1] < 0:
            parts.append("attention-only's difference from all-linear has an interval that includes 0")
        verdict, why = UNRESOLVED, " and ".join(parts)
    return Claim("regret:placement", claim, FINDING, verdict, measured, rule, why, published=published,
                 source=SOURCE, estimate=float(c["diff"]), low=float(c["ci95"][0]), high=float(c["ci95"][1]),
                 interval="95 % interval over seeds and examples (Banerjee)", seeds=seeds,
                 examples=int(a.examples), did_not_learn=dnl, section="regret")


def _sweep_rows(t: pd.DataFrame, name: str, axis: str) -> str:
    parts = []
    for rank, g in t.groupby("rank"):
        parts.append(f"r={int(rank)}: " + ", ".join(f"{_axis_text(axis, v)} {gap:+.3f}"
                                                     for v, gap in zip(g[axis], g.gap)))
    return "; ".join(parts)


def _left_out(s: pd.DataFrame, axis: str) -> str:
    """' (480 examples: full FT did not learn, left out of the change)' for the settings gap_changes skips."""
    out = sorted({int(v) for v in s[s.reference_did_not_learn > 0][axis]})
    return (f" ({', '.join(_axis_text(axis, v) for v in out)}: full FT did not learn, left out of the change)"
            if out else "")


def _axis_text(axis: str, v) -> str:
    return f"{int(v):,} examples" if axis == "examples_seen" else f"batch {int(v)}"


NEEDS = {"capacity": "needs LoRA and full FT at two or more numbers of examples seen, at the study's batch size",
         "batch": "needs LoRA and full FT at two or more batch sizes with the same examples seen"}


def _sweep_evidence(study: Study, t: pd.DataFrame, changes: pd.DataFrame, name: str, key: str) -> tuple:
    """(the sweep's rows of the regret table, its rows of the gap changes, None), or (None, None, the claim ``key``
    not measured) when the sweep has no change to test."""
    s = sweeps(t, study).get(name)
    ch = changes[changes.sweep == name] if not changes.empty else changes
    if s is None or ch.empty:
        return None, None, _not_measured(f"regret:{key}", *CLAIMS[key], NEEDS[key])
    return s, ch, None


def _not_measured(key: str, claim: str, rule: str, published: str, need: str) -> Claim:
    return Claim(key, claim, FINDING, NOT_MEASURED, "—", rule, need, published=published, source=SOURCE,
                 section="regret")


def capacity_claim(study: Study, t: pd.DataFrame, changes: pd.DataFrame) -> Claim:
    s, ch, absent = _sweep_evidence(study, t, changes, "data", "capacity")
    if absent is not None:
        return absent
    claim, rule, published = CLAIMS["capacity"]
    low_rank = int(s["rank"].min())
    big = s[s["rank"] == low_rank].sort_values("examples_seen").iloc[-1]
    change = ch[ch["rank"] == low_rank].iloc[0]
    measured = ("gap (LoRA − full FT) by examples seen: " + _sweep_rows(s, "data", "examples_seen") +
                _left_out(s, "examples_seen") +
                f"; r={low_rank} at {int(big.examples_seen):,}: {_row_text(big)}, its change from "
                f"{int(change['from']):,}: {change.change:+.3f} {fmt_interval((change.ci_low, change.ci_high))}")
    seeds = int(min(s.seeds.min(), ch.seeds.min()))
    dnl = _dnl(s)
    little = _too_little(seeds, (big.ci_low, big.ci_high), (change.ci_low, change.ci_high))
    if little:
        verdict, why = TOO_LITTLE, little
    elif big.ci_high < 0 and change.ci_high < 0:
        verdict, why = HOLDS, f"r={low_rank}'s gap at the most data is shown below 0 and shown to grow with the data"
    elif big.verdict == EQUIVALENT or change.ci_low > 0:
        verdict, why = FAILS, (f"r={low_rank}'s gap at the most data is shown equivalent to 0 within the margin"
                               if big.verdict == EQUIVALENT else f"r={low_rank}'s gap is shown to shrink with the data")
    else:
        verdict, why = UNRESOLVED, (f"r={low_rank}'s gap at the most data, or its change with the data, has an "
                                    "interval that includes 0 without being shown within the margin")
    return Claim("regret:capacity", claim, FINDING, verdict, measured, rule, why, published=published, source=SOURCE,
                 estimate=float(change.change), low=float(change.ci_low), high=float(change.ci_high),
                 interval="95 % interval over seeds and examples (Banerjee)", seeds=seeds,
                 examples=int(change.examples), did_not_learn=dnl, section="regret")


def batch_claim(study: Study, t: pd.DataFrame, changes: pd.DataFrame) -> Claim:
    s, ch, absent = _sweep_evidence(study, t, changes, "batch", "batch")
    if absent is not None:
        return absent
    claim, rule, published = CLAIMS["batch"]
    measured = ("gap (LoRA − full FT) by batch: " + _sweep_rows(s, "batch", "batch") + _left_out(s, "batch") +
                "; change from batch "
                f"{int(ch['from'].iloc[0])} to {int(ch['to'].iloc[0])}: " +
                ", ".join(f"r={int(r['rank'])} {r.change:+.3f} {fmt_interval((r.ci_low, r.ci_high))}"
                          for _, r in ch.iterrows()))
    seeds = int(min(s.seeds.min(), ch.seeds.min()))
    absent = ch[(ch.verdict == EQUIVALENT) | (ch.ci_low > 0)]
    little = _too_little(seeds, *zip(ch.ci_low, ch.ci_high))
    if little:
        verdict, why = TOO_LITTLE, little
    elif len(absent):
        verdict, why = FAILS, ("the penalty is shown absent (no change within the margin, or a gain) at " +
                               ", ".join(f"r={int(r)}" for r in absent["rank"]))
    elif (ch.ci_high < 0).all():
        verdict, why = HOLDS, "the gap is shown to widen at the largest batch at every rank"
    else:
        verdict, why = UNRESOLVED, ("at " + ", ".join(f"r={int(r)}" for r in ch[~(ch.ci_high < 0)]["rank"]) +
                                    " the change's interval includes 0 without being shown within the margin")
    return Claim("regret:batch", claim, FINDING, verdict, measured, rule, why, published=published, source=SOURCE,
                 estimate=float(ch.change.min()), low=float(ch.ci_low.min()), high=float(ch.ci_high.max()),
                 interval="95 % intervals over seeds and examples (Banerjee), the extremes over ranks", seeds=seeds,
                 examples=int(ch.examples.min()), did_not_learn=_dnl(s), section="regret")


# -- figures -------------------------------------------------------------------------------------

def gap_figure(study: Study, s: pd.DataFrame, axis: str, xlabel: str):
    fig, axes = plotting.subplots(1, 1, width=6.0, height=3.4)
    ax = axes[0][0]
    colors = plotting.rank_colors(sorted(s["rank"].unique()))
    m = float(s.margin.iloc[0])
    ax.axhspan(-m, m, color="0.92", zorder=0, label=f"±{m:g} (the margin)")
    ax.axhline(0, color=plotting.GUIDE_COLOR, ls=":", lw=0.8)
    ranks = sorted(s["rank"].unique())
    for i, rank in enumerate(ranks):
        g = s[s["rank"] == rank].sort_values(axis)
        x = g[axis].to_numpy(float) * (1.0 + 0.04 * (i - (len(ranks) - 1) / 2))  # dodge the bars apart
        ax.plot(x, g.gap, color=colors[rank], marker="o", ms=4, lw=1.2, label=f"LoRA r={int(rank)} − full FT")
        plotting.errorbar(ax, x, g.gap.to_numpy(), g.ci_low.to_numpy(), g.ci_high.to_numpy(), color=colors[rank],
                          fmt="none", lw=1.0)
        collapsed = (g.reference_did_not_learn > 0).to_numpy()
        if collapsed.any():  # full FT did not learn there: an open marker
            ax.plot(x[collapsed], g.gap.to_numpy()[collapsed], ls="none", marker="o", ms=7, mfc="white",
                    color=colors[rank], label="full FT did not learn" if i == 0 else None)
    ax.set_xscale("log", base=2)
    values = sorted(s[axis].unique())
    ax.set_xticks(values)
    ax.set_xticklabels([f"{int(v):,}" for v in values])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"test {s.score.iloc[0]}: LoRA − full FT")
    ax.legend(loc="lower left", fontsize=plotting.LEGEND)
    return plotting.finish(fig, study)


def loss_figure(study: Study, lt: pd.DataFrame):
    sizes = sorted(lt["size"].unique())
    fig, axes = plotting.subplots(1, len(sizes), width=8.0, height=3.2, sharey=True)
    ranks = sorted(r for r in lt["rank"].dropna().unique())
    colors = plotting.rank_colors(ranks)
    for ax, size in zip(axes[0], sizes):
        g = lt[lt["size"] == size]
        for rank in [None] + ranks:
            h = g[g["rank"].isna()] if rank is None else g[g["rank"] == rank]
            if h.empty:
                continue
            mean = h.groupby("examples_seen").loss.mean().sort_index()
            window = max(1, len(mean) // 12)
            smooth = mean.rolling(window, center=True, min_periods=1).mean()
            ax.plot(smooth.index, smooth.values, lw=1.3,
                    color=plotting.REFERENCE_COLOR if rank is None else colors[rank],
                    ls="--" if rank is None else "-", label="full FT" if rank is None else f"LoRA r={int(rank)}")
        ax.set_title(f"{int(size):,} examples seen", fontsize=plotting.LABEL)
        ax.set_xlabel("examples seen")
    axes[0][0].set_ylabel("training loss (mean over seeds, smoothed)")
    plotting.figure_legend(fig, [axes[0][0]], ncol=len(ranks) + 1)
    return plotting.finish(fig, study)


# -- the measure ---------------------------------------------------------------------------------

def _formatted(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "arm": t.title, "targets": t.targets.str.replace("_", " "), "rank": [
            f"{int(a)}" if a == b else f"{int(b)} (matched to r={int(a)})" for a, b in zip(t["rank"], t.rank_used)],
        "trainable": [f"{int(x):,}" for x in t.trainable], "lr": [f"{x:g}" for x in t.lr],
        "batch": t.batch.astype(int), "examples seen": [f"{int(x):,}" for x in t.examples_seen],
        "full FT (its lr)": [f"{m:.3f} ({lr:g})" for m, lr in zip(t.reference_mean, t.reference_lr)],
        "LoRA": [f"{m:.3f}" for m in t["mean"]],
        "LoRA − full FT [95 %]": [f"{g:+.3f} {fmt_interval((lo, hi))}"
                                  for g, lo, hi in zip(t.gap, t.ci_low, t.ci_high)],
        "TOST p": [f"{p:.3g}" for p in t.p_tost], "verdict": t.verdict,
        "seeds": t.seeds.astype(int)})


class Regret(Measure):
    name = "regret"
    tables = ("regret", "regret_gaps", "regret_loss")

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        t = regret_table(ctx.study)
        if t.empty or not (t.own_setting.eq(False).any() or (t.targets != "attn_qv").any()):
            return {}  # only the default arm at the study's own setting: the reach section covers it
        out = {"regret": t, "regret_gaps": gap_changes(ctx.study, t)}
        lt = loss_table(ctx.study, t)
        if not lt.empty:
            out["regret_loss"] = lt
        return out

    def claims(self, ctx: Context) -> list:
        t = ctx.table("regret")
        if t.empty:
            return []
        ch = ctx.table("regret_gaps")
        return [placement_claim(ctx.study, t), capacity_claim(ctx.study, t, ch), batch_claim(ctx.study, t, ch)]

    def figures(self, ctx: Context) -> Dict[str, object]:
        t = ctx.table("regret")
        if t.empty:
            return {}
        out = {}
        sw = sweeps(t, ctx.study)
        if "data" in sw:
            out["regret_data"] = gap_figure(ctx.study, sw["data"], "examples_seen",
                                            f"training examples seen (batch {int(sw['data'].batch.iloc[0])})")
        if "batch" in sw:
            out["regret_batch"] = gap_figure(ctx.study, sw["batch"], "batch",
                                             f"batch size ({int(sw['batch'].examples_seen.iloc[0]):,} examples seen)")
        if ctx.has("regret_loss"):
            out["regret_loss"] = loss_figure(ctx.study, ctx.table("regret_loss"))
        return out

    def formatted(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        t = ctx.table("regret")
        if t.empty:
            return {}
        own = t[t.own_setting]
        out = {"regret_placement": _formatted(own)}
        sw = sweeps(t, ctx.study)
        if sw:
            both = pd.concat([sw[k] for k in ("data", "batch") if k in sw]).drop_duplicates(["arm", "rank"])
            out["regret_settings"] = _formatted(both.sort_values(["rank", "batch", "examples_seen"]))
        ch = ctx.table("regret_gaps")
        if not ch.empty:
            out["regret_gaps"] = pd.DataFrame({
                "sweep": ch.sweep.map({"data": "examples seen", "batch": "batch size"}), "rank": ch["rank"],
                "from → to": [f"{int(a):,} → {int(b):,}" for a, b in zip(ch["from"], ch["to"])],
                "gap there": [f"{a:+.3f} → {b:+.3f}" for a, b in zip(ch.gap_from, ch.gap_to)],
                "change [95 %]": [f"{c:+.3f} {fmt_interval((lo, hi))}" for c, lo, hi in
                                  zip(ch.change, ch.ci_low, ch.ci_high)],
                "p (change ≠ 0)": [f"{p:.3g}" for p in ch.p_difference], "verdict": ch.verdict,
                "seeds": ch.seeds.astype(int)})
        return out

    def sections(self, ctx: Context) -> List[Section]:
        t = ctx.table("regret")
        if t.empty:
            return []
        seeds = seeds_phrase(sorted({r.seed for r in ctx.study.runs if r.arm in set(t.arm)}))
        out = [Section("LoRA Without Regret at small scale", [
            "Each LoRA arm beside full FT trained in the same setting (batch size and examples seen), paired seed "
            "by seed on the same test examples; the difference's interval is Banerjee's over seeds and examples, "
            "each row's verdict TOST at the margin at 5 %. Schulman et al.'s findings are on Llama 3 and Qwen 3 "
            "finetuned on Tulu3 and OpenThoughts3; this is the study's model and task."], level=2)]
        out.append(Section("Where LoRA goes", [
            *ctx.sentences("regret:placement"),
            "Every arm here trained in the study's own setting, each at the rate its own search chose (the "
            "learning-rate section); the matched arm adapts every attention matrix at the rank whose trainable "
            "count is closest to all-linear LoRA's."], table="regret_placement",
            table_caption=f"LoRA by where it adapts, against full FT ({seeds}).", level=3))
        sw = sweeps(t, ctx.study)
        if "data" in sw:
            out.append(Section("Capacity: examples seen", [*ctx.sentences("regret:capacity")],
                               figure="regret_data" if ctx.drew("regret_data") else None,
                               caption=f"LoRA's gap to full FT by training examples seen, with 95 % intervals; the "
                                       f"grey band is the margin, an open marker a setting where full FT did not "
                                       f"learn ({seeds}).", level=3))
            if ctx.drew("regret_loss"):
                out.append(Section("Training loss by examples seen", [
                    "Where a rank's curve leaves full FT's, and whether it flattens (a floor) or keeps falling more "
                    "slowly (slower training)."], figure="regret_loss",
                    caption=f"Training loss against examples seen, one panel per training length (mean over "
                            f"{seeds}, a running mean over a twelfth of each run).", level=3))
        if "batch" in sw:
            out.append(Section("Batch size", [*ctx.sentences("regret:batch")],
                               figure="regret_batch" if ctx.drew("regret_batch") else None,
                               caption=f"LoRA's gap to full FT by batch size at the same examples seen, with 95 % "
                                       f"intervals ({seeds}).", level=3))
        if sw:
            out.append(Section("Every setting", [
                "The runs of both sweeps, each against full FT in its own setting; rates not searched in a setting "
                "are the ones searched at the study's own batch size and length (the lr column)."],
                table="regret_settings", table_caption=f"LoRA against full FT per setting ({seeds}).", level=3))
        if not ctx.table("regret_gaps").empty:
            out.append(Section("How the gap moves", [
                "The change of each rank's gap between the ends of each sweep, paired per seed and example."],
                table="regret_gaps", table_caption=f"The gap's change along each sweep ({seeds}).", level=3))
        return out
