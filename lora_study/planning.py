"""Study planning: which runs a paired study holds, at which learning rates, which are already complete.

A study pairs, on one model, task, training budget and seed, every method of ``study.methods`` — each
contributes its members through the registry (``Method.variants``: LoRA one per rank, subspace training one
per d and variant, the baselines one each) — and repeats them per seed. Each member is one run with its own
overrides; the Hydra sweeper (``hydra_plugins/lora_study_sweeper``) launches the members that are not complete.

Learning rates, most specific first: the value a validation search chose (``study.lr_search``: for a
rank-swept method the searched rank, else the nearest searched rank on a log scale), then ``study.lr_by_rank``
(rank-swept methods), then ``study.lr[method]``. The test split is never read to choose a rate.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

from . import methods
from .artifacts import AXIS_PREFIX, RunDir, StudyDir, arm_key, member_id, search_id
from .methods.base import Variant
from .schema import ConfigError

SHARED_KEYS = ("model", "task")
BUDGET_KEYS = ("max_steps", "batch_size", "grad_accum", "max_length")
# the search's runs are validation runs: nothing else is measured or saved
SEARCH_EXTRA = ["run.latency=false", "run.truncation_ranks=[]", "run.save_delta=false", "run.save_spectrum=false"]


def _override(value: Any) -> str:
    """A value as Hydra's override grammar writes it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override(v) for v in value) + "]"
    return "null" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def method_options(study, method: str) -> List[str]:
    """``study.method_options[method]`` as overrides of that method's members."""
    opts = dict((OmegaConf.to_container(study.method_options) if OmegaConf.is_config(study.method_options)
                 else study.method_options or {}).get(method) or {})
    return [f"method.{k}={_override(v)}" for k, v in opts.items()]


@dataclass
class Member:
    method: str
    seed: int
    lr: float
    variant: Variant
    axis: Optional[str] = None
    phase: str = "main"  # main | lr_search
    extra: List[str] = field(default_factory=list)  # further overrides (method options, search settings)

    @property
    def id(self) -> str:
        v = self.variant
        if self.phase == "lr_search":
            return search_id(v.arm, self.lr, self.axis, v.value)
        return member_id(v.arm, self.seed, self.axis, v.value)

    @property
    def search_key(self) -> str:
        """The learning-rate search's key: the arm and its swept value (``lora_r8``), or the method."""
        return arm_key(self.variant.arm, self.axis, self.variant.value) if self.axis == "rank" else self.method

    def overrides(self) -> List[str]:
        return [f"method={self.method}", f"train.seed={self.seed}", f"optim.lr={self.lr:g}", f"run.member={self.id}",
                f"hydra.sweep.subdir={StudyDir.subdir(self.id, self.phase)}"] + self.variant.overrides + self.extra

    def record(self) -> Dict[str, Any]:
        return {"id": self.id, "method": self.method, "arm": self.variant.arm, "axis": self.axis,
                "value": self.variant.value, "rank": None, "alpha": None, "d": None, **self.variant.record,
                "seed": self.seed, "lr": self.lr, "phase": self.phase}


def _searched(chosen: Dict[str, float], arm: str) -> Dict[int, float]:
    prefix = f"{arm}_{AXIS_PREFIX['rank']}"
    return {int(k[len(prefix):]): v for k, v in chosen.items() if k.startswith(prefix) and k[len(prefix):].isdigit()}


def lr_for(method: str, variant: Variant, study, chosen: Dict[str, float]) -> float:
    """The learning rate of a member: searched value if any, then study.lr_by_rank, then study.lr."""
    m = methods.get(method)
    if m.axis == "rank" and variant.value is not None:
        rank = int(variant.value)
        searched = _searched(chosen, variant.arm)
        if rank in searched:
            return searched[rank]
        if searched:  # nearest searched rank on a log scale
            return searched[min(searched, key=lambda r: abs(math.log(r) - math.log(rank)))]
        by_rank = {int(k): float(v) for k, v in dict(study.lr_by_rank or {}).items()}
        if rank in by_rank:
            return by_rank[rank]
    if method in chosen:
        return chosen[method]
    lrs = dict(study.lr)
    if method not in lrs:
        raise ConfigError(f"study.lr has no learning rate for method {method!r}; it has {', '.join(lrs)}.")
    return float(lrs[method])


def validate_study(study) -> None:
    """Checks that relate the study's fields (each field's own rule is checked with the rest of the config)."""
    for name, opts in dict(study.method_options or {}).items():
        fields = {f.name for f in dataclasses.fields(methods.get(name).schema)}
        unknown = [k for k in dict(opts or {}) if k not in fields]
        if unknown:
            raise ConfigError(f"study.method_options.{name}.{unknown[0]} is not a field of method {name}; it has "
                              f"{', '.join(sorted(fields - {'name'}))}.")
    for name in study.methods:
        m = methods.get(name)
        if m.axis == "d" and not study.dims:
            raise ConfigError(f"study.dims is empty; method {name} is swept over d and needs dimensions, "
                              "e.g. [100,1000,10000].")
        grid = dict(study.lr_grid or {}) if study.lr_search else {}
        if name not in dict(study.lr) and name not in grid and not (m.axis == "rank" and study.lr_by_rank):
            raise ConfigError(f"study.lr has no learning rate for method {name!r}; it has {', '.join(dict(study.lr))}.")


def main_members(study, chosen: Dict[str, float]) -> List[Member]:
    members = []
    for seed in study.seeds:
        for name in study.methods:
            m = methods.get(name)
            for v in m.variants(study):
                members.append(Member(name, int(seed), lr_for(name, v, study, chosen), v, m.axis,
                                      extra=method_options(study, name)))
    return members


def search_members(study) -> List[Member]:
    """Short validation runs, one per (method, swept value, lr) in study.lr_grid, on the first seed."""
    grid = dict(study.lr_grid or {})
    seed = int(study.seeds[0])
    members = []
    for name in study.methods:
        m = methods.get(name)
        for v in m.search_variants(study):
            for lr in [float(x) for x in grid.get(name, [])]:
                members.append(Member(name, seed, lr, v, m.axis, phase="lr_search",
                                      extra=method_options(study, name) + SEARCH_EXTRA))
    return members


def choose_lrs(sdir: StudyDir, members: List[Member]) -> Dict[str, Dict[str, Any]]:
    """Per method (and swept rank) the lr with the best validation score; the test split is never read."""
    best: Dict[str, Dict[str, Any]] = {}
    for m in members:
        run = sdir.run(m.id, m.phase)
        if run.check_complete() is not None:
            continue
        metrics = run.summary()["metrics"]
        acc = metrics["best_validation_accuracy"]
        if acc is None:  # a perplexity-only LM task: lower perplexity is better
            acc = -float(metrics["best_validation_perplexity"])
        if m.search_key not in best or acc > best[m.search_key]["validation_accuracy"]:
            best[m.search_key] = {"lr": m.lr, "validation_accuracy": acc}
    return best


def shared_settings(cfg) -> Dict[str, Any]:
    """What every member shares and a resumed study must keep: model, task and budget. The budget includes
    ``processes`` (it multiplies the global batch) and the model its ``dropout`` override only when they are set
    away from their defaults, so a study begun before those settings existed resumes."""
    shared = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in SHARED_KEYS}
    shared["budget"] = {k: cfg.train[k] for k in BUDGET_KEYS}
    if shared.get("model", {}).get("dropout", 0) is None:
        del shared["model"]["dropout"]
    if int(cfg.train.processes) > 1:
        shared["budget"]["processes"] = int(cfg.train.processes)
    return shared


def check_shared(sdir: StudyDir, shared: Dict[str, Any]) -> None:
    """Refuse to mix runs of a different model, task or budget into an existing study."""
    if not sdir.exists():
        return
    old = sdir.index().get("shared")
    if old != shared:
        diffs = [k for k in shared if old.get(k) != shared.get(k)] if old else ["all"]
        raise ConfigError(
            f"study {sdir.path} was run with different {', '.join(diffs)} settings; rerun with the same settings, "
            f"choose another study.name, or delete that directory.")


def member_status(sdir: StudyDir, m: Member) -> Optional[str]:
    """None if the member's run is complete and matches the plan, else why it must (re)run."""
    run: RunDir = sdir.run(m.id, m.phase)
    reason = run.check_complete()
    if reason is not None:
        return reason
    s = run.summary()
    if not math.isclose(float(s["lr"]), m.lr, rel_tol=1e-9) or int(s["seed"]) != m.seed:
        return f"its lr/seed ({s['lr']}, {s['seed']}) differ from the plan ({m.lr}, {m.seed})"
    return None
