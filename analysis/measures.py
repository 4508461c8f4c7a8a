"""A study's measurements as tidy tables: spectra and ranks of ΔW per run and module, LoRA subspace
similarity (with a random control), amplification, intruder dimensions, the share of full-FT ΔW's
energy inside each LoRA run's subspaces, and the rank-truncation test. Pure functions of the artifacts."""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch

from lora_study.artifacts import ArtifactError, module_kind, module_layer

from .spectral import spectrum_row
from .study import Run, Study
from .subspace import amplification, energy_in_subspace, intruder_counts, random_subspace_control, \
    subspace_similarity_grid

EPS_GRID = tuple(round(x, 1) for x in np.arange(0.1, 0.91, 0.1))


def _delta_runs(study: Study) -> List[Run]:
    return [r for r in study.runs if r.summary.get("saved", {}).get("delta") and r.member not in study.skipped]


def per_run(study: Study, runs: Iterable[Run], fn) -> List[dict]:
    """rows of ``fn(run)`` for every run; a run whose artifacts cannot be read (a corrupt file, a module
    the base model lacks) is listed in ``study.skipped`` with the reason, and the others go on."""
    rows: List[dict] = []
    for r in runs:
        if r.member in study.skipped:
            continue
        try:
            rows += fn(r)
        except ArtifactError as e:
            study.skipped[r.member] = str(e)
    return rows


def spectral_table(study: Study) -> pd.DataFrame:
    """One row per run and module: rank at 90 % / 99 % energy, effective and stable rank, ‖ΔW‖_F/‖W‖_F."""
    w_info: Dict[str, tuple] = {}

    def rows(r: Run) -> List[dict]:
        out = []
        for module, s in r.dir.spectra().items():
            if module not in w_info:
                W = study.base_weight(module)
                w_info[module] = (float(W.norm()), W.shape[0], W.shape[1])
            norm, d_out, d_in = w_info[module]
            row = spectrum_row(s)
            out.append({"member": r.member, "method": r.method, "label": r.label, "rank": r.rank, "seed": r.seed,
                        "module": module, "layer": module_layer(module), "kind": module_kind(module),
                        "d_out": d_out, "d_in": d_in, **row,
                        "rel_norm": row["frob"] / norm if norm else float("nan")})
        return out

    return pd.DataFrame(per_run(study, [r for r in study.runs if r.summary.get("saved", {}).get("spectrum")], rows))


def _right_vectors(delta: torch.Tensor, r: int) -> torch.Tensor:
    """Top-r right singular vectors of ΔW as orthonormal columns (the row space, as A's in Hu et al.)."""
    _, _, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return vh[:r].T


def similarity(study: Study, small: int, large: int, seed_a: int = 0, seed_b: Optional[int] = None,
               kinds: Iterable[str] = ("query", "value")) -> Dict[str, np.ndarray]:
    """Hu et al.'s φ(A_small, A_large, i, j) averaged over layers, per module kind; ``random`` is the
    control: the same grid for two random Gaussian subspaces of the same sizes."""
    seed_b = seed_a if seed_b is None else seed_b
    a = study.run(f"lora_r{small}_s{seed_a}")
    b = study.run(f"lora_r{large}_s{seed_b}")
    grids: Dict[str, List[np.ndarray]] = {}
    n = None
    for module in a.dir.delta_names():
        kind = module_kind(module)
        if kind not in kinds or module not in b.dir.delta_names():
            continue
        da, db = a.dir.delta(module), b.dir.delta(module)
        n = da.shape[1]
        g = subspace_similarity_grid(_right_vectors(da, small), _right_vectors(db, large), small, large)
        grids.setdefault(kind, []).append(np.asarray(g))
    out = {k: np.mean(v, axis=0) for k, v in grids.items()}
    if n is not None:
        out["random"] = np.asarray(random_subspace_control(n, small, large, seed=0))
    return out


def similarity_table(study: Study, pairs: List[Tuple[int, int]]) -> pd.DataFrame:
    rows = []
    for small, large in pairs:
        for seed in sorted({r.seed for r in study.by_method("lora")}):
            try:
                grids = similarity(study, small, large, seed, seed)
            except Exception:  # noqa: BLE001 - a pair missing in this seed
                continue
            for kind, g in grids.items():
                rows.append({"small": small, "large": large, "seed": seed, "kind": kind,
                             "phi_1_1": float(g[0, 0]), "phi_diag_mean": float(np.mean(np.diag(g))),
                             "phi_mean": float(g.mean())})
    return pd.DataFrame(rows)


def amplification_table(study: Study, layer: Optional[int] = None, kinds=("query", "value")) -> pd.DataFrame:
    """Hu et al.'s Table 7 on the last layer (or ``layer``): ‖UᵀWVᵀ‖_F for ΔW's top-r directions, W's
    own top-r directions and random ones, with ‖W‖_F, ‖ΔW‖_F and the amplification factor."""
    def rows(r: Run) -> List[dict]:
        out = []
        names = r.dir.delta_names()
        last = max(module_layer(n) for n in names) if layer is None else layer
        ranks = [r.rank] if r.method == "lora" else (study.lora_ranks() or [4, 64])
        for module in names:
            if module_layer(module) != last or module_kind(module) not in kinds:
                continue
            W, dW = study.base_weight(module), r.dir.delta(module)
            for k in ranks:
                if k > min(dW.shape):
                    continue
                a = amplification(W, dW, k)
                out.append({"member": r.member, "label": r.label, "module": module, "kind": module_kind(module),
                            "layer": last, "r": k, **{key: float(v) for key, v in a.items()}})
        return out

    return pd.DataFrame(per_run(study, [r for r in _delta_runs(study) if r.method in ("lora", "full")], rows))


def intruder_table(study: Study, k: int = 10, eps_grid=EPS_GRID) -> pd.DataFrame:
    """Intruder dimensions (Shuttleworth et al.) among the top-k singular vectors of W_pre + ΔW, summed
    over the run's modules, for each ε."""
    def rows(r: Run) -> List[dict]:
        totals = {e: 0 for e in eps_grid}
        n_modules = 0
        for module, dW in r.dir.iter_deltas():
            W = study.base_weight(module)
            counts = intruder_counts(W, W + dW, k=k, eps_grid=eps_grid)
            for e in eps_grid:
                totals[e] += int(counts[e])
            n_modules += 1
        return [{"member": r.member, "method": r.method, "label": r.label, "rank": r.rank, "seed": r.seed,
                 "eps": e, "intruders": totals[e], "modules": n_modules} for e in eps_grid]

    return pd.DataFrame(per_run(study, _delta_runs(study), rows))


def full_energy_in_lora(study: Study) -> pd.DataFrame:
    """Share of full-FT ΔW's energy ‖ΔW_full‖_F² inside each LoRA run's column / row space (top r of its
    ΔW), averaged over the adapted modules; ``random`` is the share a random r-dimensional space holds."""
    def rows(r: Run) -> List[dict]:
        try:
            full = study.run(f"full_s{r.seed}")
        except ArtifactError:  # no full FT for this seed
            return []
        if not (full.summary.get("saved", {}).get("delta") and r.summary.get("saved", {}).get("delta")):
            return []
        fr = []
        for module, dl in r.dir.iter_deltas():
            u, _, vh = torch.linalg.svd(dl.double(), full_matrices=False)
            e = energy_in_subspace(full.dir.delta(module), u[:, :r.rank], vh[:r.rank].T)
            fr.append({**{k: float(v) for k, v in e.items()}, "random_col": r.rank / dl.shape[0],
                       "random_row": r.rank / dl.shape[1]})
        return [{"member": r.member, "rank": r.rank, "seed": r.seed, "modules": len(fr),
                 **pd.DataFrame(fr).mean().to_dict()}]

    return pd.DataFrame(per_run(study, study.by_method("lora"), rows))


def truncation_table(study: Study) -> pd.DataFrame:
    """Test accuracy of W_pre + trunc_k(ΔW_full) beside LoRA trained at rank k and full FT."""
    rows = []
    lora = {(r.rank, r.seed): r.summary["metrics"]["test_accuracy"] for r in study.by_method("lora")}
    base = {r.seed: r.summary["metrics"]["test_accuracy"] for r in study.by_method("none")}
    for f in study.by_method("full"):
        full_acc = f.summary["metrics"]["test_accuracy"]
        for t in (f.summary.get("truncation") or {}).get("ranks", []):
            if t["k"] == "full":
                continue
            rows.append({"seed": f.seed, "k": int(t["k"]), "truncated_full_accuracy": t["test_accuracy"],
                         "lora_accuracy": lora.get((int(t["k"]), f.seed)), "full_accuracy": full_acc,
                         "base_accuracy": base.get(f.seed),
                         "gain_kept": _gain_kept(t["test_accuracy"], full_acc, base.get(f.seed))})
    return pd.DataFrame(rows)


def _gain_kept(acc: float, full: float, base: Optional[float]) -> Optional[float]:
    """Fraction of full FT's gain over the base that survives: (acc − base) / (full − base)."""
    if base is None or full == base:
        return None
    return (acc - base) / (full - base)
