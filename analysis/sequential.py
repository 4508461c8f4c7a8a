"""Seeds until resolved (``study.until_resolved=true``): a study adds seeds in rounds, only to the comparisons whose
verdict is still unresolved, and controls the error rates across its looks by alpha spending.

Look k happens when the comparisons still in play have S_k seeds (S_1 = the study's seeds); it tests each of them at
the increment alpha_k of a Pocock-type spending function over the information fraction S_k / max_seeds
(``crossed.look_alphas``): equivalent when the (1 − 2 alpha_k) interval lies inside the margin, different when the
(1 − alpha_k) interval excludes 0, else unresolved. The ranks of one family make one claim ("the smallest rank
equivalent to full FT"), so the sweeper spends 5 % / the family's ranks per rank (Bonferroni over the ranks). A comparison resolved at a look keeps that verdict, its seeds
and its alpha; the others get ``study.seeds_per_round`` more seeds (the reference gets them too, so every
comparison stays paired by seed), until ``study.max_seeds``. By the union bound over the looks, a false
"equivalent" (a true difference on the margin) and a false "different" (a true difference of 0) each stay at most
alpha, however the looks correlate (``tests/test_sequential.py`` simulates both).

The sweeper (``hydra_plugins/lora_study_sweeper``) runs the rounds and records every look in study.json
(``sequential``); the analyses read each comparison's final look from there."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from . import crossed, paired
from .loader import Study

UNRESOLVED = crossed.UNRESOLVED


def schedule(initial: int, per_round: int, max_seeds: int) -> List[int]:
    """The seed counts at the looks: initial, initial + per_round, ..., max_seeds."""
    counts = [int(initial)]
    while counts[-1] < max_seeds:
        counts.append(min(max_seeds, counts[-1] + int(per_round)))
    return counts


def alphas(initial: int, per_round: int, max_seeds: int, alpha: float = 0.05) -> List[float]:
    """The alpha of each look of ``schedule``."""
    return crossed.look_alphas(schedule(initial, per_round, max_seeds), max_seeds, alpha)


def verdict_at(a: np.ndarray, b: np.ndarray, margin: float, alpha: float) -> str:
    """The verdict of mean(a) − mean(b) at one look, tested at ``alpha``."""
    return crossed.compare(a, b, margin, alpha=alpha)["verdict"]


def run(a: np.ndarray, b: np.ndarray, margin: float, initial: int, per_round: int, alpha: float = 0.05) -> dict:
    """The sequential procedure on (max_seeds × examples) arrays whose rows are seeds in the order they would be
    added: {verdict, seeds, look, alpha}. For simulations and for the looks of one comparison."""
    counts = schedule(initial, per_round, a.shape[0])
    looks = crossed.look_alphas(counts, a.shape[0], alpha)
    v = UNRESOLVED
    for k, (s, al) in enumerate(zip(counts, looks), 1):
        v = verdict_at(a[:s], b[:s], margin, al)
        if v != UNRESOLVED:
            return {"verdict": v, "seeds": s, "look": k, "alpha": al}
    return {"verdict": v, "seeds": counts[-1], "look": len(counts), "alpha": looks[-1]}


def look(study_dir, keys: Sequence[str], reference: str, seeds: Sequence[int], alpha: float) -> Dict[str, str]:
    """{key: verdict} of each key's test score against the reference's on ``seeds`` (keys are arm keys: ``lora_r4``,
    ``full``), tested at ``alpha`` against the study's margin; a key without runs at all those seeds is left out."""
    from lora_study.artifacts import arm_key
    from .measures.reach import score_margin, scores
    study = Study(study_dir)

    def runs_of(key: str):
        return [r for r in study.runs if arm_key(r.arm, r.axis, r.value) == key and r.seed in set(seeds)]

    ref, what = scores(runs_of(reference))
    margin = score_margin(study, what)
    out = {}
    for key in keys:
        own, _ = scores(runs_of(key))
        common, arrays = paired.aligned(own, ref)
        if len(common) == len(seeds):
            out[key] = verdict_at(arrays[0], arrays[1], margin, alpha)
    return out


def final(record: Optional[dict], key: str) -> Optional[dict]:
    """A comparison's final look in a study.json ``sequential`` record: {verdict, seeds, look, alpha}, or None."""
    return ((record or {}).get("final") or {}).get(key)
