"""Does ΔW amplify directions W barely uses? Hu et al.'s Table 7 on the last layer: ‖UᵀWVᵀ‖_F with U, V the top-r
left/right singular vectors of ΔW, of W itself, and random orthonormal ones, with ‖W‖_F, ‖ΔW‖_F and the factor
‖ΔW‖_F / ‖UᵀWVᵀ‖_F, for full finetuning (at every rank the study sweeps) and each rank-swept run at its own rank."""
from __future__ import annotations

from typing import Dict, List, Optional

import pandas as pd

from lora_study.models.structure import module_kind, module_layer

from ..loader import Run, Study
from ..subspace import amplification
from .base import Context, Measure, Section, delta_runs, per_run

DEFAULT_RANKS = (4, 64)  # Hu et al.'s, for full finetuning when the study sweeps no rank
COLUMNS = ["label", "kind", "layer", "r", "delta_dirs", "w_dirs", "random_dirs", "w_norm", "dw_norm", "factor"]


def amplification_table(study: Study, layer: Optional[int] = None, kinds=("query", "value")) -> pd.DataFrame:
    """Hu et al.'s Table 7 on the last layer (or ``layer``): ‖UᵀWVᵀ‖_F for ΔW's top-r directions, W's
    own top-r directions and random ones, with ‖W‖_F, ‖ΔW‖_F and the amplification factor."""
    swept_ranks = sorted({r.rank for r in study.swept("rank")})

    def rows(r: Run) -> List[dict]:
        out = []
        names = r.dir.delta_names()
        last = max(module_layer(n) for n in names) if layer is None else layer
        ranks = [r.rank] if r.axis == "rank" else (swept_ranks or list(DEFAULT_RANKS))
        for module in names:
            if module_layer(module) != last or module_kind(module) not in kinds:
                continue
            W, dW = study.base_weight(module), r.dir.delta(module)
            for k in ranks:
                if k > min(dW.shape):
                    continue
                a = amplification(W, dW, k)
                out.append({"member": r.member, "arm": r.arm, "label": r.label, "module": module,
                            "kind": module_kind(module), "layer": last, "r": k, **{key: float(v) for key, v in a.items()}})
        return out

    runs = [r for r in delta_runs(study) if r.is_reference or r.axis == "rank"]
    return pd.DataFrame(per_run(study, runs, rows))


class Amplification(Measure):
    name = "amplification"
    tables = ("amplification",)

    def compute(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        return {"amplification": amplification_table(ctx.study)}

    def sections(self, ctx: Context) -> List[Section]:
        if ctx.table("amplification").empty:
            return []
        return [Section("Amplification (Hu et al., Table 7)", [
            "‖UᵀWVᵀ‖_F with U, V the top-r left/right singular vectors of ΔW (ΔW directions), of W itself, and random "
            "orthonormal ones, on the last layer; factor = ‖ΔW‖_F / ‖UᵀWVᵀ‖_F. A large factor means ΔW amplifies "
            "directions that W barely uses."], table="amplification")]

    def formatted(self, ctx: Context) -> Dict[str, pd.DataFrame]:
        a = ctx.table("amplification")
        return {"amplification": a[COLUMNS].round(3)} if not a.empty else {}
