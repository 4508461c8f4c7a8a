"""Paired studies: which runs a study holds, which are already complete, and its index.

A study pairs the frozen base (head only), a full finetune and LoRA at every rank on the same model,
task, training budget, data order and seed. Each member is one run with its own overrides; the
Hydra sweeper (``hydra_plugins/lora_study_sweeper``) launches the members that are not complete.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

from .artifacts import RunDir, StudyDir
from .config import ConfigError, METHODS

SHARED_KEYS = ("model", "task")
BUDGET_KEYS = ("max_steps", "batch_size", "grad_accum", "max_length")


@dataclass
class Member:
    id: str
    method: str
    seed: int
    lr: float
    rank: Optional[int] = None
    alpha: Optional[float] = None
    d: Optional[int] = None
    phase: str = "main"  # main | lr_search
    extra: List[str] = field(default_factory=list)

    def overrides(self) -> List[str]:
        o = [f"method={self.method}", f"train.seed={self.seed}", f"optim.lr={self.lr:g}", f"run.member={self.id}",
             f"hydra.sweep.subdir={'lr_search' if self.phase == 'lr_search' else 'runs'}/{self.id}"]
        if self.rank is not None:
            o += [f"method.rank={self.rank}", f"method.alpha={self.alpha:g}"]
        if self.d is not None:
            o.append(f"method.d={self.d}")
        return o + self.extra

    def record(self) -> Dict[str, Any]:
        return {"id": self.id, "method": self.method, "rank": self.rank, "alpha": self.alpha, "d": self.d,
                "seed": self.seed, "lr": self.lr, "phase": self.phase}


def alpha_for(rank: int, study) -> float:
    """LoRA's α for a rank: α = 2r (Biderman et al.'s recipe), a fixed α, or a fixed α with rsLoRA's α/√r."""
    if study.alpha_rule == "two_r":
        return 2.0 * rank
    if study.alpha_rule in ("fixed", "rslora"):
        return float(study.alpha)
    raise ConfigError(f"study.alpha_rule={study.alpha_rule!r} is not valid; choose one of two_r, fixed, rslora.")


def lr_for(method: str, rank: Optional[int], study, chosen: Dict[str, float]) -> float:
    """The learning rate of a member: searched value if any, then study.lr_by_rank, then study.lr."""
    if method == "lora" and rank is not None:
        key = f"lora_r{rank}"
        if key in chosen:
            return chosen[key]
        searched = {int(k[len("lora_r"):]): v for k, v in chosen.items() if k.startswith("lora_r")}
        if searched:  # nearest searched rank on a log scale
            near = min(searched, key=lambda r: abs(math.log(r) - math.log(rank)))
            return searched[near]
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
    for m in study.methods:
        if m not in METHODS:
            raise ConfigError(f"study.methods contains {m!r}; valid methods are {', '.join(METHODS)}.")
    if "lora" in study.methods and (not study.ranks or any(int(r) <= 0 for r in study.ranks)):
        raise ConfigError(f"study.ranks={list(study.ranks)} is not valid; give positive LoRA ranks, e.g. [1,8,64].")
    if not study.seeds:
        raise ConfigError("study.seeds is empty; give at least one seed, e.g. [0].")
    if "subspace" in study.methods and not study.dims:
        raise ConfigError("study.dims is empty; the subspace method needs dimensions, e.g. [100,1000,10000].")
    for m, v in dict(study.lr).items():
        if float(v) <= 0:
            raise ConfigError(f"study.lr.{m}={v} is not valid; learning rates must be positive.")
    alpha_for(1, study)


def main_members(study, chosen: Dict[str, float]) -> List[Member]:
    members = []
    for seed in study.seeds:
        for method in study.methods:
            if method in ("lora", "qlora"):
                for r in study.ranks:
                    members.append(Member(f"{method}_r{r}_s{seed}", method, int(seed), lr_for(method, int(r), study, chosen),
                                          rank=int(r), alpha=alpha_for(int(r), study),
                                          extra=["method.use_rslora=true"] if study.alpha_rule == "rslora" else []))
            elif method == "subspace":
                for d in study.dims:
                    for said in study.said:
                        tag = "said" if said else "did"
                        members.append(Member(f"subspace_{tag}_d{d}_s{seed}", "subspace", int(seed),
                                              lr_for("subspace", None, study, chosen), d=int(d),
                                              extra=[f"method.said={str(bool(said)).lower()}"]))
            else:
                members.append(Member(f"{method}_s{seed}", method, int(seed), lr_for(method, None, study, chosen)))
    return members


SEARCH_EXTRA = ["run.latency=false", "run.truncation_ranks=[]", "run.save_delta=false", "run.save_spectrum=false"]


def search_members(study) -> List[Member]:
    """Short validation runs, one per (method, rank, lr) in study.lr_grid, on the first seed."""
    grid = dict(study.lr_grid or {})
    seed = int(study.seeds[0])
    members = []
    for method in study.methods:
        lrs = [float(x) for x in grid.get(method, [])]
        ranks = [int(r) for r in study.lr_search_ranks] if method == "lora" else [None]
        for r in ranks:
            for lr in lrs:
                tag = f"lora_r{r}" if r else method
                members.append(Member(f"{tag}_lr{lr:g}", method, seed, lr, rank=r,
                                      alpha=alpha_for(r, study) if r else None, phase="lr_search",
                                      extra=list(SEARCH_EXTRA)))
    return members


def choose_lrs(sdir: StudyDir, members: List[Member]) -> Dict[str, Dict[str, Any]]:
    """Per method (and LoRA rank) the lr with the best validation accuracy; the test split is never read."""
    best: Dict[str, Dict[str, Any]] = {}
    for m in members:
        run = RunDir(sdir.path / "lr_search" / m.id)
        if run.check_complete() is not None:
            continue
        metrics = run.summary()["metrics"]
        acc = metrics["best_validation_accuracy"]
        if acc is None:  # a perplexity-only LM task: lower perplexity is better
            acc = -float(metrics["best_validation_perplexity"])
        key = f"lora_r{m.rank}" if m.rank else m.method
        if key not in best or acc > best[key]["validation_accuracy"]:
            best[key] = {"lr": m.lr, "validation_accuracy": acc}
    return best


def shared_settings(cfg) -> Dict[str, Any]:
    shared = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in SHARED_KEYS}
    shared["budget"] = {k: cfg.train[k] for k in BUDGET_KEYS}
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
    base = "lr_search" if m.phase == "lr_search" else "runs"
    run = RunDir(sdir.path / base / m.id)
    reason = run.check_complete()
    if reason is not None:
        return reason
    s = run.summary()
    if not math.isclose(float(s["lr"]), m.lr, rel_tol=1e-9) or int(s["seed"]) != m.seed:
        return f"its lr/seed ({s['lr']}, {s['seed']}) differ from the plan ({m.lr}, {m.seed})"
    return None
