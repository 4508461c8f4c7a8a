"""A study's artifacts, read lazily: runs, their summaries and metrics, ΔW per module and spectra.

    from analysis import load_study
    st = load_study("results/studies/rank_sweep")
    st.runs_frame()                        # one row per complete run
    st.delta("lora_r8_s0", "bert.encoder.layer.5.attention.self.value")
    st.spectrum("full_s0")                 # {module: singular values}

Runs that are incomplete or corrupt are listed in ``st.skipped`` with the reason, never silently dropped.
"""
from __future__ import annotations

import re

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd
import torch

from lora_study.artifacts import ArtifactError, BaseWeights, RunDir, StudyDir, module_kind, module_layer


_LABEL_ORDER = {"frozen base": 0, "full FT": 1, "LoRA": 2, "QLoRA": 3, "subspace": 4}


def label_key(label: str) -> tuple:
    """Sort key for run labels: frozen base, full FT, then LoRA / QLoRA by rank and subspace by variant and
    d, numerically (so r=2 comes before r=16)."""
    m = re.match(r"(LoRA|QLoRA) r=(\d+)$", label)
    if m:
        return (_LABEL_ORDER[m.group(1)], "", int(m.group(2)))
    m = re.match(r"subspace (\w+) d=(\d+)$", label)
    if m:
        return (_LABEL_ORDER["subspace"], m.group(1), int(m.group(2)))
    return (_LABEL_ORDER.get(label, 9), label, 0)


@dataclass
class Run:
    member: str
    method: str
    rank: Optional[int]
    d: Optional[int]
    seed: int
    lr: float
    dir: RunDir
    summary: dict

    @property
    def label(self) -> str:
        if self.method == "lora":
            return f"LoRA r={self.rank}"
        if self.method == "qlora":
            return f"QLoRA r={self.rank}"
        if self.method == "subspace":
            return f"subspace {self.variant} d={self.d}"
        return {"full": "full FT", "none": "frozen base"}.get(self.method, self.method)

    @property
    def variant(self) -> Optional[str]:
        """Subspace runs: 'SAID' (per-layer scales) or 'DID'; None for other methods."""
        if self.method != "subspace":
            return None
        return "SAID" if (self.summary.get("subspace") or {}).get("said") else "DID"


class Study:
    def __init__(self, path):
        self.dir = StudyDir(Path(path))
        self.index = self.dir.index()  # raises ArtifactError with one sentence if this is not a study
        self.path = self.dir.path
        self.runs: List[Run] = []
        self.skipped: Dict[str, str] = {}
        for m in self.index.get("members", []):
            run = RunDir(self.path / m["dir"])
            reason = run.check_complete()
            if reason is not None:
                self.skipped[m["id"]] = reason
                continue
            s = run.summary()
            self.runs.append(Run(m["id"], m["method"], m.get("rank"), m.get("d"), int(m["seed"]), float(m["lr"]), run, s))
        self._base: Optional[BaseWeights] = None

    # -- description ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.index.get("name", self.path.name)

    def describe(self) -> Dict[str, object]:
        first = self.runs[0].summary if self.runs else {}
        budget = self.index.get("shared", {}).get("budget", {})
        return {"study": self.name, "model": first.get("model"), "task": first.get("task"),
                "budget": budget, "seeds": sorted({r.seed for r in self.runs}),
                "device": first.get("device"), "precision": first.get("precision"),
                "versions": first.get("versions", {}), "runs": len(self.runs), "skipped": dict(self.skipped)}

    def caption(self) -> str:
        d = self.describe()
        b = d["budget"]
        return (f"{d['model']} on {d['task']}, {b.get('max_steps')} steps × batch {b.get('batch_size')}, "
                f"seeds {d['seeds']} (study {self.name})")

    # -- runs ----------------------------------------------------------------------------------
    def run(self, member: str) -> Run:
        for r in self.runs:
            if r.member == member:
                return r
        why = self.skipped.get(member)
        raise ArtifactError(f"run {member} is not a complete run of this study" + (f": {why}." if why else "."))

    def by_method(self, method: str) -> List[Run]:
        return [r for r in self.runs if r.method == method]

    def lora_ranks(self) -> List[int]:
        return sorted({r.rank for r in self.by_method("lora")})

    def runs_frame(self) -> pd.DataFrame:
        rows = []
        for r in self.runs:
            s = r.summary
            rows.append({
                "member": r.member, "method": r.method, "label": r.label, "rank": r.rank, "d": r.d, "seed": r.seed,
                "variant": r.variant, "lr": r.lr, "test_accuracy": s["metrics"]["test_accuracy"],
                "validation_accuracy": s["metrics"].get("validation_accuracy"),
                "n_test": (s.get("examples") or {}).get("test"),
                "trainable_params": s["params"]["trainable"], "total_params": s["params"]["total"],
                "head_params": s["params"]["head"],
                "optimizer_state_bytes": s["memory"]["optimizer_state_bytes"],
                "gradient_bytes": s["memory"]["gradient_bytes"], "peak_memory_bytes": s["memory"]["peak_bytes"],
                "mean_step_s": s["time"]["mean_step_s"], "tokens_per_s": s["time"]["tokens_per_s"],
                "storage_bytes": s["storage"]["bytes"], "wall_time_s": s.get("wall_time_s"),
                **_heldout_columns(s.get("heldout")),
                **{f"latency_{k[:-2]}_s": v for k, v in (s.get("latency") or {}).items()},
                **{k: v for k, v in (s.get("merge") or {}).items()},
            })
        return pd.DataFrame(rows)

    def metrics(self, member: str) -> pd.DataFrame:
        return pd.DataFrame(self.run(member).dir.metrics())

    # -- matrices ------------------------------------------------------------------------------
    def modules(self, member: Optional[str] = None) -> pd.DataFrame:
        """Analysed modules of a run (default: the first run with saved ΔW) with layer and kind."""
        runs = [self.run(member)] if member else [r for r in self.runs if r.summary.get("saved", {}).get("spectrum")]
        if not runs:
            return pd.DataFrame(columns=["module", "layer", "kind"])
        names = list(runs[0].dir.spectra())
        return pd.DataFrame({"module": names, "layer": [module_layer(n) for n in names],
                             "kind": [module_kind(n) for n in names]})

    def delta(self, member: str, module: str) -> torch.Tensor:
        return self.run(member).dir.delta(module)

    def spectrum(self, member: str) -> Dict[str, torch.Tensor]:
        return self.run(member).dir.spectra()

    def base_weight(self, module: str) -> torch.Tensor:
        if self._base is None:
            src = self.runs[0].summary["base_model"] if self.runs else {}
            self._base = BaseWeights(src.get("path"), src.get("name"))
        return _cached_base(self._base, module)


def _heldout_columns(h: Optional[dict]) -> Dict[str, float]:
    if not h:
        return {}
    cols = {"forgetting_mean": h.get("forgetting_mean"), "cka": h.get("cka"),
            # the probes' size, for their binomial noise; not for perplexity tasks, whose noise is not binomial
            "probe_n_test": None if any(t.get("metric") == "perplexity" for t in (h.get("tasks") or {}).values())
            else (h.get("probe") or {}).get("n_test")}
    for name, t in (h.get("tasks") or {}).items():
        cols[f"heldout_{name}"] = t["finetuned"]
        cols[f"forgetting_{name}"] = t["forgetting"]
        cols[f"metric_{name}"] = t.get("metric", "accuracy")
    return cols


@lru_cache(maxsize=64)
def _cached_base(base: BaseWeights, module: str) -> torch.Tensor:
    return base.get(module)


def load_study(path) -> Study:
    return Study(path)
