"""A Hydra sweeper that runs a lora-study study: it expands ``study.*`` into members (every method of
``study.methods`` at each of its swept values, per seed; an optional learning-rate search first), skips
members whose run is complete, and hands the rest to whatever launcher is configured (basic, joblib,
submitit). The plan itself is ``lora_study.planning``'s."""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, List, Optional, Sequence

from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class StudySweeper(Sweeper):
    def __init__(self) -> None:
        self.config: Optional[DictConfig] = None
        self.launcher = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from lora_study import planning as S
        from lora_study.artifacts import StudyDir
        from lora_study.config import ConfigError, validate

        cfg = self.config
        try:
            validate(cfg)
            S.validate_study(cfg.study)
            sdir = StudyDir(cfg.hydra.sweep.dir)
            shared = S.shared_settings(cfg)
            S.check_shared(sdir, shared)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        index = {"name": cfg.study.name, "shared": shared, "study": _plain(cfg.study), "arguments": list(arguments),
                 "created": sdir.index().get("created") if sdir.exists() else time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "lr_search": None, "members": []}
        failures: List[str] = []
        chosen = {}
        if cfg.study.lr_search:
            search = S.search_members(cfg.study)
            failures += self._launch(sdir, search, arguments, index)
            best = S.choose_lrs(sdir, search)
            chosen = {k: v["lr"] for k, v in best.items()}
            index["lr_search"] = {"chosen": best, "members": [m.record() for m in search]}
        members = S.main_members(cfg.study, chosen)
        failures += self._launch(sdir, members, arguments, index)
        index["members"] = [self._entry(sdir, m) for m in members]
        sdir.write_index(index)
        done = sum(e["status"] == "complete" for e in index["members"])
        print(f"study {cfg.study.name}: {done}/{len(members)} runs complete in {sdir.path}")
        if failures:
            print("error: these runs failed: " + "; ".join(failures), file=sys.stderr)
            sys.exit(1)
        return index

    def _entry(self, sdir, m) -> dict:
        from lora_study import planning as S
        reason = S.member_status(sdir, m)
        rec = {**m.record(), "dir": sdir.subdir(m.id, m.phase), "status": "complete" if reason is None else "failed"}
        if reason is not None:
            rec["reason"] = reason
        return rec

    def _launch(self, sdir, members: Sequence, arguments: List[str], index: dict) -> List[str]:
        from lora_study import planning as S
        todo = []
        for m in members:
            reason = S.member_status(sdir, m)
            if reason is None:
                print(f"skip {m.id}: complete")
            else:
                todo.append(m)
        # write the plan before launching, so a killed study still has an index to resume from
        index["members"] = [{**m.record(), "dir": sdir.subdir(m.id, m.phase), "status": "pending"} for m in members]
        sdir.write_index(index)
        if not todo:
            return []
        overrides = [list(arguments) + m.overrides() for m in todo]
        returns = self.launcher.launch(overrides, initial_job_idx=0)
        failures = []
        for m, ret in zip(todo, returns):
            if ret.status != JobStatus.COMPLETED:
                err = ret._return_value
                failures.append(f"{m.id} ({type(err).__name__}: {err})")
        return failures


def _plain(node) -> dict:
    from omegaconf import OmegaConf
    return OmegaConf.to_container(node, resolve=True)
