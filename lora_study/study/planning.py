"""Study planning: which runs a paired study holds, at which learning rates, which are already complete.

A study pairs, on one model, task, training budget and seed, every arm (``lora_study.study.arms``: a method with settings
of its own; each method of ``study.methods`` is one, ``study.arms`` adds more) — each contributes its members through
the method registry (``Method.variants``: LoRA one per rank, subspace training one per d and variant, the baselines
one each) — and repeats them per seed. Each member is one run with its own overrides; the Hydra sweeper
(``hydra_plugins/lora_study_sweeper``) launches the members that are not complete.

Learning rates of a member of arm A (method M), most specific first: the value a validation search chose
(``lora_study.study.lr_search``; for a rank-swept arm the searched rank, else the nearest searched rank of A on a log scale;
for a d-swept arm the nearest d of ``study.lr_search_dims``, DID and SAID alike), then ``study.lr_by_rank`` (rank-swept
arms: A's own {rank: lr} if it has one, else the flat {rank: lr}), then ``study.lr[A]``, then ``study.lr[M]``. The test
split is never read to choose a rate.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import torch
from omegaconf import OmegaConf

from .. import methods
from .arms import Arm, arm_variants, arm_view, check_options, find_arm, plain, study_arms, validate_arms
from ..artifacts import AXIS_PREFIX, RunDir, StudyDir, arm_key, member_id, search_id
from ..methods.base import Variant
from ..schema import ConfigError

SHARED_KEYS = ("model", "task")
BUDGET_KEYS = ("max_steps", "batch_size", "grad_accum", "max_length")


@dataclass
class Member:
    method: str
    seed: int
    lr: float
    variant: Variant
    axis: Optional[str] = None
    phase: str = "main"  # main | lr_search
    extra: List[str] = field(default_factory=list)  # further overrides (the arm's options, search settings)
    arm: Optional[str] = None  # the study arm it belongs to (None: its method's own)
    title: Optional[str] = None  # how reports name its arm (None: the method's title)
    options: Dict[str, Any] = field(default_factory=dict)  # the arm's options
    order: int = 0  # the arm's place among the study's arms
    reference: Optional[str] = None  # the arm it is compared with (None: the study's reference)
    train: Dict[str, Any] = field(default_factory=dict)  # the arm's own training settings (batch, steps, ...)

    @property
    def id(self) -> str:
        v = self.variant
        if self.phase == "lr_search":
            return search_id(v.arm, self.lr, self.axis, v.value, self.seed)
        return member_id(v.arm, self.seed, self.axis, v.value)

    @property
    def search_key(self) -> str:
        """The learning-rate search's key: the arm and its swept value (``lora_all_r16``, ``subspace_d10000``), or the
        arm (``full``, ``subspace`` searched at the configured d)."""
        return arm_key(self.variant.arm, self.axis, self.variant.value) if self.axis is not None and \
            self.variant.value is not None else self.arm or self.method

    def overrides(self) -> List[str]:
        title = [f"run.arm_title={_quoted(self.title)}"] if self.title else []
        return [f"method={self.method}", f"train.seed={self.seed}", f"optim.lr={self.lr:g}", f"run.member={self.id}",
                f"run.arm={self.variant.arm}", f"run.arm_order={self.order}", *title,
                f"hydra.sweep.subdir={StudyDir.subdir(self.id, self.phase)}"] + self.variant.overrides + self.extra

    def record(self) -> Dict[str, Any]:
        """The member's entry in study.json: its id, placement (``lora_study.artifacts.PLACEMENT``), options, the
        swept fields of its method, seed, rate and phase."""
        fields = {"rank": None, "alpha": None, "d": None, **self.variant.record}
        place = methods.get(self.method).placement({**fields, "value": self.variant.value}, self.variant.arm,
                                                   self.title, self.order)
        own = {**({"reference_arm": self.reference} if self.reference else {}),
               **({"train": dict(self.train)} if self.train else {})}
        return {"id": self.id, **place, "options": dict(self.options), **fields, "seed": self.seed, "lr": self.lr,
                "phase": self.phase, **own}


def _quoted(text: str) -> str:
    """A string as a quoted value of Hydra's override grammar."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def member_of(arm: Arm, variant: Variant, seed: int, lr: float, phase: str = "main", extra: List[str] = (),
              order: int = 0) -> Member:
    return Member(arm.method, int(seed), float(lr), variant, arm.spec.axis, phase, arm.overrides() + list(extra),
                  arm.name, arm.title, dict(arm.options), order, arm.reference,
                  dict(arm.train))


def method_options(study, method: str) -> List[str]:
    """``study.method_options[method]`` as overrides of that method's members."""
    return Arm(method, method, options=dict((plain(study.method_options) or {}).get(method) or {})).overrides()


def _searched(chosen: Dict[str, float], arm: str, axis: str = "rank") -> Dict[int, float]:
    """{swept value: rate} of the search's keys for ``arm`` along ``axis`` (``lora_r8``, ``subspace_d10000``)."""
    prefix = f"{arm}_{AXIS_PREFIX[axis]}"
    return {int(k[len(prefix):]): v for k, v in chosen.items() if k.startswith(prefix) and k[len(prefix):].isdigit()}


def rates_by_rank(study, arm: str) -> Dict[int, float]:
    """``study.lr_by_rank`` for one arm: its own {rank: lr} if it has one, else the flat {rank: lr}."""
    table = plain(study.lr_by_rank) or {}
    own = table.get(arm)
    if isinstance(own, dict):
        return {int(k): float(v) for k, v in own.items()}
    return {int(k): float(v) for k, v in table.items() if not isinstance(v, dict)}


def lr_for(arm: Union[str, Arm], variant: Variant, study, chosen: Dict[str, float]) -> float:
    """The learning rate of a member of ``arm`` (an arm, or the name of an arm or method): searched value if any,
    then study.lr_by_rank, then study.lr[arm], then study.lr[method]. A swept member without a searched rate of its
    own takes the nearest searched value's on a log scale (the smaller on a tie)."""
    arm = find_arm(study, arm) if isinstance(arm, str) else arm
    axis = arm.spec.axis
    if axis in AXIS_PREFIX and variant.value is not None:
        value = int(variant.value)
        # the keys the search wrote: a rank's under the variant's arm; a d's under the arm (DID and SAID share it)
        searched = _searched(chosen, variant.arm if axis == "rank" else arm.name, axis)
        if value in searched:
            return searched[value]
        if searched:
            return searched[min(sorted(searched), key=lambda v: abs(math.log(v) - math.log(value)))]
    if axis == "rank" and variant.value is not None:
        by_rank = rates_by_rank(study, arm.name)
        rank = int(variant.value)
        if rank in by_rank:
            return by_rank[rank]
    if arm.name in chosen:
        return chosen[arm.name]
    lrs = dict(study.lr)
    for key in (arm.name, arm.method):
        if key in lrs:
            return float(lrs[key])
    what = f"method {arm.method!r}" if arm.name == arm.method else f"arm {arm.name!r} or its method {arm.method}"
    raise ConfigError(f"study.lr has no learning rate for {what}; it has {', '.join(map(str, lrs)) or 'none'}.")


def validate_study(study) -> None:
    """Checks that relate the study's fields (each field's own rule is checked with the rest of the config)."""
    for name, opts in (plain(study.method_options) or {}).items():
        check_options(f"study.method_options.{name}", methods.get(name), opts or {})
    validate_arms(study)
    check_sequential(study)
    arms = study_arms(study)
    names = [a.name for a in arms]
    known = set(names) | set(methods.names())
    for key in ("lr", "lr_grid"):
        for k in plain(study[key]) or {}:
            if k not in known:
                raise ConfigError(f"study.{key}.{k} names neither a method nor an arm of this study; its arms are "
                                  f"{', '.join(names)}.")
    ranked = [a.name for a in arms if a.spec.axis == "rank"]
    for k, v in (plain(study.lr_by_rank) or {}).items():
        if isinstance(v, dict) and k not in ranked:
            raise ConfigError(f"study.lr_by_rank.{k} is not a rank-swept arm of this study; "
                              f"{'those are ' + ', '.join(ranked) if ranked else 'it has none'}.")
    grid = (plain(study.lr_grid) or {}) if study.lr_search else {}
    for arm in arms:
        if arm.spec.axis == "d" and not arm_view(study, arm).dims:
            raise ConfigError(f"study.dims is empty; {'method' if not arm.declared else 'arm ' + arm.name + ' of'} "
                              f"{arm.method} is swept over d and needs dimensions, e.g. [100,1000,10000].")
        if grid.get(arm.name) or grid.get(arm.method):
            continue  # the search gives it rates
        for v in arm_variants(study, arm):
            lr_for(arm, v, study, {})


def check_sequential(study) -> None:
    """``study.until_resolved`` needs room to add seeds: max_seeds above the study's own seed count."""
    if study.until_resolved and int(study.max_seeds) <= len(study.seeds):
        raise ConfigError(f"study.until_resolved=true needs study.max_seeds above the study's {len(study.seeds)} "
                          f"seeds, got {study.max_seeds}; raise study.max_seeds or list fewer seeds.")


def main_members(study, chosen: Dict[str, float]) -> List[Member]:
    """Every arm's members per seed; the first seed's also get ``study.first_seed_overrides`` (measurements one
    seed suffices for, such as latency, which do not change what training computes)."""
    arms = study_arms(study)
    once = [str(o) for o in (study.first_seed_overrides or [])]
    return [member_of(arm, v, int(seed), lr_for(arm, v, study, chosen), extra=once if i == 0 else [], order=k)
            for i, seed in enumerate(study.seeds) for k, arm in enumerate(arms) for v in arm_variants(study, arm)]


def member_threads(cfg) -> Optional[int]:
    """``train.threads`` for every member when the launcher runs several side by side (joblib's ``n_jobs`` other
    than 1): torch's default thread count shared out, at least one each. None (leave it) when the user set
    ``train.threads`` or members run one at a time."""
    if cfg.train.threads is not None:
        return None
    n_jobs = OmegaConf.select(cfg, "hydra.launcher.n_jobs", default=None)
    if n_jobs is None or int(n_jobs) == 1:
        return None
    cores = torch.get_num_threads()
    at_once = int(n_jobs) if int(n_jobs) > 0 else max(1, (os.cpu_count() or 1) + 1 + int(n_jobs))  # joblib's -1: all
    return max(1, cores // at_once)


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
