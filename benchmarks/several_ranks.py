"""The several-ranks claim ("some rank of the sweep is equivalent to full FT") by simulation, at the default study's
design: four ranks, three seeds × 6,000 test examples, margin ±0.03, variance components close to its own (the seeds
carry about 75 % of a paired difference's variance, SE ≈ 0.008).

    .venv/bin/python benchmarks/several_ranks.py [--reps 2000]

Prints, per scenario, how often each procedure declares the claim ("holds": some rank shown equivalent):

- every rank truly on the margin (a false "holds"): each rank alone at 5 % and taking any; the fixed sequence from
  the largest rank down; Holm over the TOST p-values (the study's procedure); seeds until resolved up to 9 seeds with
  each rank at 5 % / 4 spent over the looks (``experiment=rank_sweep_sequential``);
- three ranks truly equivalent (difference 0) and the largest off by twice the margin (a rank order the fixed
  sequence presumes away): how often each procedure finds the smallest rank;
- every rank at a true difference of 0: power.
"""
from __future__ import annotations

import argparse

import numpy as np

from lora_study.analysis import crossed as C
from lora_study.analysis import sequential as Q

RANKS = (1, 4, 16, 64)
SEEDS, MAX_SEEDS, EXAMPLES, MARGIN = 3, 9, 6000, 0.03
SD_SEED, SD_EXAMPLE, SD_RESIDUAL = 0.012, 0.25, 0.3


def draw(rng, shift: float, seeds: int) -> np.ndarray:
    return shift + rng.normal(0, SD_SEED, (seeds, 1)) + rng.normal(0, SD_EXAMPLE, (1, EXAMPLES)) + \
        rng.normal(0, SD_RESIDUAL, (seeds, EXAMPLES))


def one_study(rng, shifts: dict, sequential: bool) -> dict:
    """{procedure: the smallest rank it shows equivalent, or None} for one simulated study."""
    arrays = {r: draw(rng, s, MAX_SEEDS if sequential else SEEDS) for r, s in shifts.items()}
    zero = np.zeros((SEEDS, EXAMPLES))
    tests = {r: C.compare(a[:SEEDS], zero, MARGIN) for r, a in arrays.items()}
    alone = [r for r, t in tests.items() if t["equivalent"]]
    out = {"each alone, any": min(alone) if alone else None,
           "fixed sequence": C.fixed_sequence({r: t["verdict"] for r, t in tests.items()})["smallest"],
           "Holm": C.holm({r: t["p_tost"] for r, t in tests.items()})["smallest"]}
    if sequential:
        shown = [r for r, a in arrays.items()
                 if Q.run(a, np.zeros_like(a), MARGIN, SEEDS, 2, alpha=0.05 / len(RANKS))["verdict"] == C.EQUIVALENT]
        out["until resolved (≤ 9 seeds, 5 % / 4)"] = min(shown) if shown else None
    return out


def rates(shifts: dict, reps: int, seed: int, sequential: bool, want=None) -> dict:
    rng = np.random.default_rng(seed)
    counts: dict = {}
    for _ in range(reps):
        for name, smallest in one_study(rng, shifts, sequential).items():
            hit = smallest is not None if want is None else smallest == want
            counts[name] = counts.get(name, 0) + hit
    return {k: v / reps for k, v in counts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=2000)
    a = ap.parse_args()
    scenarios = [
        ("every rank on the margin: false 'holds'", {r: MARGIN * (1 if i % 2 else -1) for i, r in enumerate(RANKS)},
         None),
        ("r = 1, 4, 16 at 0, r = 64 at 2 × margin: finds r = 1", {r: (2 * MARGIN if r == 64 else 0.0) for r in RANKS},
         1),
        ("every rank at 0: 'holds' (power)", {r: 0.0 for r in RANKS}, None),
    ]
    for i, (title, shifts, want) in enumerate(scenarios):
        r = rates(shifts, a.reps, seed=i, sequential=True, want=want)
        print(f"{title} ({a.reps} simulated studies; ± {2 * np.sqrt(0.25 / a.reps):.3f} at most, 2 MC SE)")
        for name, v in r.items():
            print(f"  {name:<40} {v:.3f}")


if __name__ == "__main__":
    main()
