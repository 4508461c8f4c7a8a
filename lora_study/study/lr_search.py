"""A study's learning-rate search (``study.lr_search=true``): short validation runs of every arm at the rates of its
grid, extended while the best rate is on an edge; the study's members then train at the chosen rates.

Keys. A rank-swept arm is searched per rank of ``study.lr_search_ranks`` (``all``: every rank of the arm), keyed
``<arm>_r<rank>`` (``lora_r8``, ``lora_all_r16``); a subspace arm (swept over d) at each d of ``study.lr_search_dims``
as DID, keyed ``<arm>_d<d>`` (``subspace_d10000``), or once at the configured d when that list is empty; other arms
once, keyed by the arm (``full``). Every rate runs at the study's first ``study.lr_search_seeds`` seeds (more seeds
than the study has continue after its last), with the main runs' budget, and measures nothing but validation
(``SEARCH_EXTRA``): a rate chosen on one seed can sit on that seed's side of a cliff and collapse on the next.

Rounds. The first round runs the arm's grid, ``study.lr_grid[arm]``, else ``study.lr_grid[method]``. After each
round, a key whose best validation score is at the smallest or the largest rate tried gets the next rate beyond
that edge, and another round runs. The next rate is one geometric step further, the step being the ratio of the edge
rate to its neighbour (the grid's own spacing: 5e-4, 1.5e-3, 5e-3 continue with 1.5e-2), or
``study.lr_extend_factor`` when only one rate was tried, rounded to three significant digits. At most
``study.lr_search_max_extensions`` rates are added per key (the lower one first when both edges tie for best).

Choice. A rate's score is its mean validation score over the search seeds (accuracy; −perplexity for a perplexity-only
task). A rate at which any seed's run diverged (the loss became NaN) or did not learn (``lora_study.run.learning``: one
class, the majority's accuracy, an exploding loss) counts as tried with no score: it bounds the search on its side
and is not a failure of the study. The chosen rate has the best mean score among the others, the lower rate on a
tie. The test split is never evaluated (``run.evaluate_test=false``). A chosen rate
still on an edge of what was tried after the last extension is flagged (``on_edge``): the optimum was not bracketed, so
it is not a searched optimum. ``study.json`` holds every tried rate's mean score (``lr_search.grid``, {key: {lr:
score}}), each seed's score and which seeds did not learn (``lr_search.per_seed``, ``lr_search.collapsed``), and the
choice.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional

from .arms import Arm, arm_variants, find_arm, plain, study_arms
from ..artifacts import RunDir, StudyDir
from .planning import Member, member_of

# the search's runs are validation runs: nothing else is measured or saved
SEARCH_EXTRA = ["run.evaluate_test=false", "run.latency=false", "run.truncation_ranks=[]", "run.save_delta=false",
                "run.save_spectrum=false", "run.intruder_scaling=false", "heldout.enabled=false"]
Scores = Dict[str, Dict[float, Optional[float]]]  # key -> {lr: validation score, None when the run has none}


def grid_rates(study, arm: Arm) -> List[float]:
    grid = plain(study.lr_grid) or {}
    return [float(x) for x in grid.get(arm.name, grid.get(arm.method)) or []]


def search_seeds(study) -> List[int]:
    """The seeds every searched rate runs at: the study's first ``study.lr_search_seeds``, continued past its last."""
    seeds = [int(s) for s in study.seeds][:int(study.lr_search_seeds)]
    while len(seeds) < int(study.lr_search_seeds):
        seeds.append(max(seeds) + 1)
    return seeds


def search_members(study) -> List[Member]:
    """The first round: one run per (arm, searched value, rate of its grid, search seed)."""
    return [member_of(arm, v, seed, lr, "lr_search", SEARCH_EXTRA, order=k) for k, arm in enumerate(study_arms(study))
            for v in arm_variants(study, arm, search=True) for lr in grid_rates(study, arm)
            for seed in search_seeds(study)]


def at_seeds(study, m: Member, lr: float) -> List[Member]:
    """``m``'s run at rate ``lr``, at every search seed."""
    return [dataclasses.replace(m, lr=lr, seed=seed) for seed in search_seeds(study)]


def collapsed(run: RunDir) -> bool:
    """Whether a complete run was flagged as not having learned (``lora_study.run.learning``)."""
    return run.check_complete() is None and bool((run.summary().get("learning") or {}).get("did_not_learn"))


def score(run: RunDir) -> Optional[float]:
    """The run's best validation score (higher is better), None unless it completed."""
    if run.check_complete() is not None:
        return None
    metrics = run.summary()["metrics"]
    if metrics.get("best_validation_accuracy") is not None:
        return float(metrics["best_validation_accuracy"])
    ppl = metrics.get("best_validation_perplexity")
    return None if ppl is None else -float(ppl)  # a perplexity-only LM task: lower perplexity is better


def metric(sdir: StudyDir, members: List[Member]) -> Optional[str]:
    """What the scores are: the validation accuracy, or the negated validation perplexity."""
    for m in members:
        run = sdir.run(m.id, m.phase)
        if run.check_complete() is None:
            acc = run.summary()["metrics"].get("best_validation_accuracy")
            return "best_validation_accuracy" if acc is not None else "-best_validation_perplexity"
    return None


def diverged(sdir: StudyDir, m: Member) -> Optional[str]:
    """Why the member's run diverged (its loss became NaN), or None if it did not."""
    run = sdir.run(m.id, m.phase)
    try:
        s = run.summary()
    except Exception:  # noqa: BLE001 - no readable summary: it did not diverge, it failed otherwise
        return None
    return s.get("reason") if s.get("status") == "failed" and s.get("failed_step") is not None else None


def seed_scores(sdir: StudyDir, members: List[Member]) -> Dict[str, Dict[float, Dict[int, Dict[str, Any]]]]:
    """{key: {lr: {seed: {score, collapsed}}}} of the search's runs (score None: not complete, or diverged)."""
    out: Dict[str, Dict[float, Dict[int, Dict[str, Any]]]] = {}
    for m in members:
        run = sdir.run(m.id, m.phase)
        out.setdefault(m.search_key, {}).setdefault(m.lr, {})[m.seed] = {"score": score(run),
                                                                          "collapsed": collapsed(run)}
    return out


def scores(sdir: StudyDir, members: List[Member]) -> Scores:
    """{key: {lr: mean validation score over the search seeds}}; None where a seed's run has no score or did not
    learn."""
    out: Scores = {}
    for key, by_lr in seed_scores(sdir, members).items():
        for lr, by_seed in by_lr.items():
            usable = all(v["score"] is not None and not v["collapsed"] for v in by_seed.values())
            out.setdefault(key, {})[lr] = (sum(v["score"] for v in by_seed.values()) / len(by_seed)) if usable else None
    return out


def _best(tried: Dict[float, Optional[float]]):
    """(best score, rates scoring it in increasing order, the edges among them: 'low', 'high'), or None."""
    scored = {lr: s for lr, s in tried.items() if s is not None}
    if not scored:
        return None
    rates = sorted(tried)
    top = max(scored.values())
    best = [lr for lr in rates if scored.get(lr) == top]
    edges = [e for e, lr in (("low", rates[0]), ("high", rates[-1])) if lr in best]
    return top, best, edges


def _round(lr: float) -> float:
    return float(f"{lr:.3g}")


def _beyond(rates: List[float], edge: str, factor: float) -> float:
    """The next rate past ``edge`` of the sorted ``rates``: one step of the spacing there, or ``factor``."""
    if edge == "low":
        step = rates[1] / rates[0] if len(rates) > 1 else factor
        new = _round(rates[0] / step)
    else:
        step = rates[-1] / rates[-2] if len(rates) > 1 else factor
        new = _round(rates[-1] * step)
    if any(math.isclose(new, r, rel_tol=1e-6) for r in rates):  # rates too close to step from
        new = _round(rates[0] / factor if edge == "low" else rates[-1] * factor)
    return new


def _added(study, m: Member, tried) -> int:
    grid = grid_rates(study, find_arm(study, m.arm or m.method))
    return sum(not any(math.isclose(lr, g, rel_tol=1e-9) for g in grid) for lr in tried)


def extensions(study, members: List[Member], found: Scores) -> List[Member]:
    """The next round: a run one step beyond each edge where a key's best rate lies, within its extension budget."""
    first = {}
    for m in members:
        first.setdefault(m.search_key, m)
    budget = int(study.lr_search_max_extensions)
    out = []
    for key, tried in found.items():
        best = _best(tried)
        if best is None or not best[2]:
            continue
        left = budget - _added(study, first[key], tried)
        rates = sorted(tried)
        for edge in best[2][:max(0, left)]:
            out += at_seeds(study, first[key], _beyond(rates, edge, float(study.lr_extend_factor)))
    return out


def choose(study, members: List[Member], found: Scores) -> Dict[str, Dict[str, Any]]:
    """Per key: the chosen rate, its validation score, the edges it still lies on and the rates added."""
    first = {}
    for m in members:
        first.setdefault(m.search_key, m)
    out = {}
    for key, tried in found.items():
        best = _best(tried)
        added = _added(study, first[key], tried)
        if best is None:
            out[key] = {"lr": None, "validation_score": None, "on_edge": None, "extensions": added,
                        "note": "no run of this key completed"}
            continue
        top, rates, edges = best
        out[key] = {"lr": rates[0], "validation_score": top, "on_edge": " and ".join(edges) or None,
                    "extensions": added}
    return out


def grid_record(found: Scores) -> Dict[str, Dict[str, Optional[float]]]:
    """{key: {lr: score}} with the rates in increasing order, written as Hydra and JSON both read them back."""
    return {key: {f"{lr:g}": tried[lr] for lr in sorted(tried)} for key, tried in found.items()}


def seed_record(sdir: StudyDir, members: List[Member]) -> Dict[str, Any]:
    """``per_seed`` ({key: {lr: {seed: score}}}) and ``collapsed`` ({key: {lr: [seeds that did not learn]}})."""
    per_seed, fell = {}, {}
    for key, by_lr in seed_scores(sdir, members).items():
        for lr in sorted(by_lr):
            per_seed.setdefault(key, {})[f"{lr:g}"] = {str(s): v["score"] for s, v in sorted(by_lr[lr].items())}
            seeds = [s for s, v in sorted(by_lr[lr].items()) if v["collapsed"]]
            if seeds:
                fell.setdefault(key, {})[f"{lr:g}"] = seeds
    return {"per_seed": per_seed, "collapsed": fell}


def evidence(study) -> Optional[Dict[str, Dict[str, Optional[float]]]]:
    """``study.lr_evidence`` (the grid that chose the shipped rates) in the form of ``grid_record``."""
    ev = plain(study.lr_evidence)
    if not ev:
        return None
    return {key: {f"{float(lr):g}": None if s is None else float(s)
                  for lr, s in sorted(per.items(), key=lambda x: float(x[0]))} for key, per in ev.items()
            if per is not None}


def on_edge_notes(chosen: Dict[str, Dict[str, Any]]) -> List[str]:
    """One sentence per key whose chosen rate is still on an edge of the rates tried."""
    return [f"{key}: the best rate {c['lr']:g} is still the {c['on_edge']} edge of the rates tried after "
            f"{c['extensions']} extension(s), so it is not a searched optimum; widen study.lr_grid or raise "
            f"study.lr_search_max_extensions" for key, c in chosen.items() if c.get("on_edge")]
