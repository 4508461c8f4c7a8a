"""A study's artifacts, read lazily: runs, their summaries and metrics, ΔW per module and spectra.

    from lora_study.analysis import load_study
    st = load_study("results/studies/rank_sweep")
    st.runs_frame()                        # one row per complete run
    st.delta("lora_r8_s0", "bert.encoder.layer.5.attention.self.value")
    st.spectrum("full_s0")                 # {module: singular values}

What a run is to the analyses comes from its placement in the study index (``lora_study.artifacts.PLACEMENT``),
never from its name or from the code that trained it: its family, arm, title and label, whether it is the baseline
(the frozen base) or the reference (full finetuning), and the axis it is swept over (LoRA's rank, subspace
training's d) with its value there. A study written by an older version is migrated on read, and a run of a method
this installation does not have is analysed like any other. Runs that are incomplete or corrupt are listed in
``st.skipped`` with the reason, never silently dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd

from lora_study.artifacts import (
    BASELINE,
    REFERENCE,
    ArtifactError,
    BaseWeights,
    RunDir,
    StudyDir,
    member_id,
    module_kind,
    module_layer,
    placement,
)


@dataclass
class Run:
    member: str
    record: Dict[str, Any]  # the study index's entry for this member
    dir: RunDir
    summary: dict
    _predictions: Optional[Dict[str, Any]] = field(default=None, repr=False)

    @property
    def method(self) -> str:
        return self.record["method"]

    @property
    def seed(self) -> int:
        return int(self.record["seed"])

    @property
    def lr(self) -> float:
        return float(self.record["lr"])

    @property
    def family(self) -> str:
        return self.record["family"]

    @property
    def arm(self) -> str:
        return self.record["arm"]

    @property
    def title(self) -> str:
        """The arm's title: 'LoRA', 'LoRA (all linear)', 'full FT'."""
        return self.record["title"]

    @property
    def label(self) -> str:
        """The member's name in tables: 'LoRA r=8', 'subspace SAID d=1000', 'full FT'."""
        return self.record["label"]

    @property
    def axis(self) -> Optional[str]:
        return self.record["axis"]

    @property
    def value(self) -> Optional[int]:
        """The swept value: the rank of a rank-swept method, d of a d-swept one, None for the others."""
        v = self.record["value"]
        return None if v is None else int(v)

    @property
    def rank(self) -> Optional[int]:
        return self.value if self.axis == "rank" else None

    @property
    def rank_used(self) -> Optional[int]:
        """The rank LoRA trained at: the swept rank, or the one a matched-parameter arm chose to match its target."""
        return (self.summary.get("matched_params") or {}).get("rank") or self.rank

    @property
    def d(self) -> Optional[int]:
        return self.value if self.axis == "d" else None

    @property
    def role(self) -> str:
        return self.record["role"]

    @property
    def is_baseline(self) -> bool:
        return self.role == BASELINE

    @property
    def is_reference(self) -> bool:
        return self.role == REFERENCE

    @property
    def variant(self) -> Optional[str]:
        """The member's variant within its arm ('SAID', 'DID'), if any."""
        return self.record.get("variant")

    @property
    def order(self) -> int:
        return int(self.record.get("order") or 0)

    @property
    def reference_arm(self) -> Optional[str]:
        """The arm this run is compared with when its arm names one (``study.arms.<arm>.reference``), else None: the
        study's reference."""
        return self.record.get("reference_arm")

    @property
    def train(self) -> Dict[str, Any]:
        """The training settings of its arm that differ from the study's (batch size, steps, ...); {} for none."""
        return dict(self.record.get("train") or {})

    @property
    def own_setting(self) -> bool:
        """Whether it trained in the study's own setting and is compared with the study's reference."""
        return not self.train and not self.reference_arm

    @property
    def did_not_learn(self) -> bool:
        return bool((self.summary.get("learning") or {}).get("did_not_learn"))

    @property
    def saved(self) -> Dict[str, bool]:
        return self.summary.get("saved", {})

    def predictions(self) -> Dict[str, Any]:
        """Per-example outputs (``predictions.safetensors``), read once; ArtifactError when the run has none."""
        if self._predictions is None:
            if not self.saved.get("predictions"):
                raise ArtifactError(f"run {self.member} saved no per-example outputs.")
            self._predictions = self.dir.predictions()
        return self._predictions


def label_key(run_or_row) -> tuple:
    """Sort key: the baseline, the reference, then the arms in the study's order, each by variant and then the swept
    value numerically (so r=2 comes before r=16)."""
    get = run_or_row.get if isinstance(run_or_row, dict) else lambda k, d=None: getattr(run_or_row, k, d)
    value = get("value")
    role = get("role") or (BASELINE if get("baseline") else REFERENCE if get("reference") else "treatment")
    order = get("order")
    return ({BASELINE: 0, REFERENCE: 1}.get(role, 2), 0 if order is None or order != order else int(order),
            str(get("arm") or ""), str(get("variant") or ""), -1 if value is None or value != value else float(value))


class Study:
    def __init__(self, path):
        self.dir = StudyDir(Path(path))
        self.index = self.dir.index()  # raises ArtifactError with one sentence if this is not a study
        self.path = self.dir.path
        self.runs: List[Run] = []
        self.skipped: Dict[str, str] = {}
        for m in self.index.get("members", []):
            placement(m)  # a member without its placement is a damaged index: one sentence, before any work
            run = RunDir(self.path / m["dir"])
            reason = run.check_complete()
            if reason is not None:
                self.skipped[m["id"]] = reason
                continue
            self.runs.append(Run(m["id"], m, run, run.summary()))
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

    def find(self, arm: str, seed: int, value: Optional[int] = None) -> Optional[Run]:
        """The run of ``arm`` at swept ``value`` and ``seed``, or None."""
        for r in self.runs:
            if r.arm == arm and r.seed == seed and r.value == value:
                return r
        return None

    def baselines(self) -> List[Run]:
        return [r for r in self.runs if r.is_baseline]

    def references(self) -> List[Run]:
        return [r for r in self.runs if r.is_reference]

    def reference(self, seed: int) -> Optional[Run]:
        """The reference run (full finetuning) of one seed, or None."""
        return next((r for r in self.references() if r.seed == seed), None)

    def swept(self, axis: str, settings: bool = False) -> List[Run]:
        """Runs of methods swept over ``axis`` ("rank" or "d") in the study's own setting; ``settings``: those of arms
        with training settings or a reference of their own as well (``analysis.measures.regret`` reads them)."""
        return [r for r in self.runs if r.axis == axis and (settings or r.own_setting)]

    def arms(self, axis: str, family: Optional[str] = None, settings: bool = False) -> List[str]:
        """The arms swept over ``axis`` (of one family, when given), in the study's order; ``settings`` as in
        ``swept``."""
        firsts = {}
        for r in self.swept(axis, settings):
            if family is None or r.family == family:
                firsts.setdefault(r.arm, r)
        return [a for a, _ in sorted(firsts.items(), key=lambda kv: (kv[1].order, kv[0]))]

    def did_not_learn(self) -> List[str]:
        """The members flagged as runs that did not learn (complete, but collapsed), in study order."""
        return [r.member for r in self.runs if r.did_not_learn]

    def arm_method(self, arm: str) -> Optional[str]:
        return next((r.method for r in self.runs if r.arm == arm), None)

    def values(self, arm: str) -> List[int]:
        return sorted({r.value for r in self.runs if r.arm == arm and r.value is not None})

    def runs_frame(self) -> pd.DataFrame:
        rows = []
        for r in self.runs:
            s = r.summary
            rows.append({
                "member": r.member, "method": r.method, "family": r.family, "arm": r.arm, "title": r.title,
                "label": r.label, "axis": r.axis, "value": r.value, "rank": r.rank, "d": r.d, "seed": r.seed,
                "rank_used": r.rank_used,
                "variant": r.variant, "order": r.order, "role": r.role, "lr": r.lr,
                "baseline": r.is_baseline, "reference": r.is_reference, "did_not_learn": r.did_not_learn,
                "own_setting": r.own_setting, "reference_arm": r.reference_arm,
                "test_accuracy": s["metrics"]["test_accuracy"],
                "validation_accuracy": s["metrics"].get("validation_accuracy"),
                "n_test": (s.get("examples") or {}).get("test"),
                "trainable_params": s["params"]["trainable"], "total_params": s["params"]["total"],
                "head_params": s["params"]["head"],
                "optimizer_state_bytes": s["memory"]["optimizer_state_bytes"],
                "training_bytes": s["memory"].get("training_bytes"),
                "activation_bytes": s["memory"].get("activation_bytes"),
                "parameter_bytes": s["memory"].get("parameter_bytes"),
                "gradient_bytes": s["memory"]["gradient_bytes"], "peak_memory_bytes": s["memory"]["peak_bytes"],
                "mean_step_s": s["time"]["mean_step_s"], "tokens_per_s": s["time"]["tokens_per_s"],
                "storage_bytes": s["storage"]["bytes"], "wall_time_s": s.get("wall_time_s"),
                **_heldout_columns(s.get("heldout")),
                **{f"latency_{k[:-2]}_s": v for k, v in (s.get("latency") or {}).items() if k.endswith("_s")},
                **{k: v for k, v in (s.get("merge") or {}).items()},
            })
        df = pd.DataFrame(rows)
        if df.empty:
            return df
        order = sorted(range(len(df)), key=lambda i: (label_key(df.iloc[i].to_dict()), df.seed.iloc[i]))
        return df.iloc[order].reset_index(drop=True)

    def metrics(self, member: str) -> pd.DataFrame:
        return pd.DataFrame(self.run(member).dir.metrics())

    def member(self, arm: str, seed: int, axis: Optional[str] = None, value: Optional[int] = None) -> str:
        return member_id(arm, seed, axis, value)

    # -- matrices ------------------------------------------------------------------------------
    def modules(self, member: Optional[str] = None) -> pd.DataFrame:
        """Analysed modules of a run (default: the first run with saved spectra) with layer and kind."""
        runs = [self.run(member)] if member else [r for r in self.runs if r.saved.get("spectrum")]
        if not runs:
            return pd.DataFrame(columns=["module", "layer", "kind"])
        names = list(runs[0].dir.spectra())
        return pd.DataFrame({"module": names, "layer": [module_layer(n) for n in names],
                             "kind": [module_kind(n) for n in names]})

    def delta(self, member: str, module: str):
        return self.run(member).dir.delta(module)

    def spectrum(self, member: str) -> Dict[str, Any]:
        return self.run(member).dir.spectra()

    def _base_weights(self) -> BaseWeights:
        if self._base is None:
            src = self.runs[0].summary["base_model"] if self.runs else {}
            self._base = BaseWeights(src.get("path"), src.get("name"))
        return self._base

    def base_weight(self, module: str):
        return _cached_base(self._base_weights(), module)

    def check_deltas(self) -> None:
        """Skip, before any measure reads them, the runs whose saved ΔW cannot be read or names a module the base
        model lacks (reading file headers only), so every table leaves out the same runs."""
        for r in self.runs:
            if r.member in self.skipped or not r.saved.get("delta"):
                continue
            try:
                for name in r.dir.delta_names():
                    self._base_weights().key(name)
            except ArtifactError as e:
                self.skipped[r.member] = str(e)


def _heldout_columns(h: Optional[dict]) -> Dict[str, float]:
    if not h:
        return {}
    cols = {"forgetting_mean": h.get("forgetting_mean"), "cka": h.get("cka"), "cka_biased": h.get("cka_biased"),
            "cka_n": h.get("cka_n"),
            # the probes' size, for their binomial noise; not for perplexity tasks, whose noise is not binomial
            "probe_n_test": None if any(t.get("metric") == "perplexity" for t in (h.get("tasks") or {}).values())
            else (h.get("probe") or {}).get("n_test")}
    for name, t in (h.get("tasks") or {}).items():
        cols[f"heldout_{name}"] = t["finetuned"]
        cols[f"forgetting_{name}"] = t["forgetting"]
        cols[f"metric_{name}"] = t.get("metric", "accuracy")
    return cols


@lru_cache(maxsize=64)
def _cached_base(base: BaseWeights, module: str):
    return base.get(module)


def load_study(path) -> Study:
    return Study(path)
