"""Do two ranks of one method learn the same directions? Hu et al.'s subspace similarity φ between the smallest
and largest rank of every rank-swept arm (and r = 8 vs 64, as they did, when both were run), beside a random
Gaussian control (table ``similarity``, heatmaps, finding); and the share of full finetuning's ΔW energy that lies
inside each rank-swept run's column and row spaces (table ``full_energy_in_lora``).

φ is computed on the right singular vectors of ΔW (its row space), which for i, j < r orders directions
differently from the A matrices Hu et al. compare (ANCHORS.md); the figure labels it as ΔW's."""
from __future__ import annotations

import sys
from typing import Dict, Iterable, List, Optional, Tuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lora_study.artifacts import ArtifactError
from lora_study.linalg import thin_svd
from lora_study.models.structure import module_kind

from .. import plotting
from ..loader import Run, Study
from ..plotting import KIND_TITLES
from ..roles import arm_title
from ..subspace import energy_in_subspace, random_subspace_control, subspace_similarity_grid, top_singular_vectors
from .base import Context, Measure, Section, per_run


def rank_pairs(ranks: List[int]) -> List[Tuple[int, int]]:
    """Rank pairs for φ: (smallest, largest) and, as Hu et al., (8, 64) when both exist."""
    ranks = sorted(ranks)
    if len(ranks) < 2:
        return []
    pairs = [(ranks[0], ranks[-1])]
    if 8 in ranks and 64 in ranks and (8, 64) not in pairs:
        pairs.append((8, 64))
    return pairs


def similarity(study: Study, arm: str, small: int, large: int, seed_a: int = 0, seed_b: Optional[int] = None,
               kinds: Iterable[str] = ("query", "value")) -> Dict[str, np.ndarray]:
    """φ(ΔW_small, ΔW_large, i, j) of ``arm`` at two ranks averaged over layers, per module kind; ``random`` is the
    control: the same grid for two random Gaussian subspaces of the same sizes."""
    seed_b = seed_a if seed_b is None else seed_b
    a, b = study.find(arm, seed_a, small), study.find(arm, seed_b, large)
    if a is None or b is None:
        missing = [f"r={v} seed {s}" for run, v, s in ((a, small, seed_a), (b, large, seed_b)) if run is None]
        raise ArtifactError(f"{arm} has no complete run at {' and '.join(missing)}.")
    grids: Dict[str, List[np.ndarray]] = {}
    n = None
    for module in a.dir.delta_names():
        kind = module_kind(module)
        if kind not in kinds or module not in b.dir.delta_names():
            continue
        da, db = a.dir.delta(module), b.dir.delta(module)
        n = da.shape[1]
        g = subspace_similarity_grid(top_singular_vectors(da.double(), small), top_singular_vectors(db.double(), large),
                                     small, large)
        grids.setdefault(kind, []).append(np.asarray(g))
    out = {k: np.mean(v, axis=0) for k, v in grids.items()}
    if n is not None:
        out["random"] = np.asarray(random_subspace_control(n, small, large, seed=0))
    return out


def similarity_table(study: Study) -> pd.DataFrame:
    """One row per rank-swept arm, rank pair, seed and module kind (and the random control): φ(1, 1), the mean of
    φ(i, i) and the mean over the grid."""
    rows = []
    for arm in study.arms("rank"):
        seeds = sorted({r.seed for r in study.runs if r.arm == arm})
        for small, large in rank_pairs(study.values(arm)):
            for seed in seeds:
                if study.find(arm, seed, small) is None or study.find(arm, seed, large) is None:
                    continue  # a pair missing in this seed
                try:
                    grids = similarity(study, arm, small, large, seed, seed)
                except ArtifactError:
                    continue
                for kind, g in grids.items():
                    rows.append({"arm": arm, "small": small, "large": large, "seed": seed, "kind": kind,
                                 "phi_1_1": float(g[0, 0]), "phi_diag_mean": float(np.mean(np.diag(g))),
                                 "phi_mean": float(g.mean())})
    return pd.DataFrame(rows)


def reference_energy_table(study: Study) -> pd.DataFrame:
    """Share of full-FT ΔW's energy ‖ΔW_full‖_F² inside each rank-swept run's column / row space (top r of its
    ΔW, same seed), averaged over its saved modules; ``random_*`` is the share a random r-dimensional space holds."""
    def rows(r: Run) -> List[dict]:
        full = study.reference(r.seed)
        if full is None or not (full.saved.get("delta") and r.saved.get("delta")):
            return []
        fr = []
        for module, dl in r.dir.iter_deltas():
            u, _, vh = thin_svd(dl.double())
            e = energy_in_subspace(full.dir.delta(module), u[:, :r.rank], vh[:r.rank].T)
            fr.append({**{k: float(v) for k, v in e.items()}, "random_col": r.rank / dl.shape[0],
                       "random_row": r.rank / dl.shape[1]})
        return [{"member": r.member, "arm": r.arm, "rank": r.rank, "seed": r.seed, "modules": len(fr),
                 **pd.DataFrame(fr).mean().to_dict()}]

    return pd.DataFrame(per_run(study, study.swept("rank"), rows))


# -- figure and finding ---------------------------------------------------------------------------

def heatmaps(study: Study, grids: Dict[str, np.ndarray], arm: str, small: int, large: int):
    """φ(r=small, r=large, i, j) of ``arm`` per module kind beside the random Gaussian control (Hu et al., Fig. 3)."""
    names = [k for k in grids if k != "random"] + (["random"] if "random" in grids else [])
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        g = grids[name]
        im = ax.imshow(g, vmin=0, vmax=1, cmap=plotting.SEQUENCE_CMAP, aspect="auto", origin="upper",
                       extent=(0.5, g.shape[1] + 0.5, g.shape[0] + 0.5, 0.5))
        ax.set_xlabel(f"j (top-j directions, r={large})")
        ax.set_ylabel(f"i (top-i directions, r={small})")
        ax.set_title("random Gaussian control" if name == "random" else f"ΔW {KIND_TITLES.get(name, name)}, layer mean")
    fig.colorbar(im, ax=axes[0].tolist(), label="φ(i, j)", shrink=0.85)
    fig.suptitle(f"Subspace similarity of {arm_title(study.runs_frame(), arm)} r={small} and r={large}")
    plotting.caption(fig, study)
    return fig


def similarity_finding(sim: pd.DataFrame) -> str:
    """φ(1, 1) against the random control, for one arm's rank pairs."""
    if sim.empty:
        return "Fewer than two LoRA ranks: no subspace similarity is measured."
    rnd = sim[sim.kind == "random"].phi_1_1.mean()
    real = sim[sim.kind != "random"]
    top = real.phi_1_1.mean()
    pairs = ", ".join(f"r={a} vs r={b}" for a, b in sorted(set(zip(real.small, real.large))))
    verdict = "shares its top direction" if top > 0.5 else "does not clearly share its top direction"
    return (f"For {pairs}, φ(1, 1) averaged over layers and module kinds is {top:.2f} against {rnd:.3f} for the random "
            f"Gaussian control: the smaller rank {verdict} with the larger one (Hu et al. report φ > 0.5 for r = 8 vs 64 "
            f"on GPT-3). Mean φ over the whole grid is {real.phi_mean.mean():.2f} (random {sim[sim.kind == 'random'].phi_mean.mean():.2f}).")


def _name(ctx: Context, arm: str, stem: str = "similarity") -> str:
    """The figure / formatted table of an arm: ``similarity`` for the first rank-swept arm, then ``similarity_<arm>``."""
    return stem if arm == ctx.study.arms("rank")[0] else f"{stem}_{arm}"


class Similarity(Measure):
    name = "similarity"
    tables = ("similarity", "full_energy_in_lora")

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        return {"similarity": similarity_table(ctx.study), "full_energy_in_lora": reference_energy_table(ctx.study)}

    def figures(self, ctx: Context) -> Dict[str, object]:
        study, out = ctx.study, {}
        for arm in study.arms("rank"):
            pairs = rank_pairs(study.values(arm))
            if not pairs:
                continue
            seed = min(r.seed for r in study.runs if r.arm == arm)
            small, large = pairs[-1]
            try:
                out[_name(ctx, arm)] = heatmaps(study, similarity(study, arm, small, large, seed), arm, small, large)
            except ArtifactError as e:
                print(f"warning: no similarity figure for {arm} ({e})", file=sys.stderr)
        return out

    def sections(self, ctx: Context) -> List[Section]:
        sim = ctx.table("similarity")
        return [Section(f"Subspace similarity between {arm_title(ctx.table('runs'), arm)} ranks",
                        [similarity_finding(sim[sim.arm == arm] if not sim.empty else sim)],
                        figure=_name(ctx, arm), table=_name(ctx, arm))
                for arm in ctx.study.arms("rank") if ctx.drew(_name(ctx, arm))]

    def formatted(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        sim = ctx.table("similarity")
        if sim.empty:
            return {}
        return {_name(ctx, arm): sim[sim.arm == arm].drop(columns="arm").round(3).reset_index(drop=True)
                for arm in ctx.study.arms("rank") if (sim.arm == arm).any()}
