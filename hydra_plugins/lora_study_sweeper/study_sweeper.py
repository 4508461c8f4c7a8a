"""A Hydra sweeper that runs a lora-study study: it expands ``study.*`` into members (every arm — each method of
``study.methods`` and each of ``study.arms`` — at each of its swept values, per seed; an optional learning-rate
search first, in rounds while a best rate is on an edge of its grid), skips members whose run is complete, and hands
the rest to whatever launcher is configured (basic, joblib, submitit). When the launcher runs members side by side
(joblib's ``n_jobs``), each member gets its share of the cores as ``train.threads``. The plan itself is
``lora_study.study.planning``'s, the search's ``lora_study.study.lr_search``'s."""
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
        self.member_arguments: List[str] = []  # the command's overrides, and train.threads when members share cores

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from lora_study.study import lr_search as L, planning as S
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
            _refuse(e)
        threads = S.member_threads(cfg)
        # members side by side: one share of the cores each, given to every member as an override
        self.member_arguments = list(arguments) + ([f"train.threads={threads}"] if threads is not None else [])
        index = {"name": cfg.study.name, "shared": shared, "study": _plain(cfg.study), "arguments": list(arguments),
                 "created": sdir.index().get("created") if sdir.exists() else time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "threads_per_member": threads, "lr_search": None, "lr_evidence": L.evidence(cfg.study),
                 "members": []}
        failures: List[str] = []
        chosen = {}
        if cfg.study.lr_search:
            search = L.search_members(cfg.study)
            rounds, new = 0, search
            while new:
                rounds += 1
                failures += self._launch(sdir, new, index, planned=search)
                found = L.scores(sdir, search)
                new = L.extensions(cfg.study, search, found)
                if new:
                    print(f"lr_search round {rounds + 1}: " + ", ".join(f"{m.id}" for m in new) +
                          " (a best rate on an edge)")
                search = search + new
            best = L.choose(cfg.study, search, found)
            chosen = {k: v["lr"] for k, v in best.items() if v["lr"] is not None}
            index["lr_search"] = {"metric": L.metric(sdir, search), "rounds": rounds, "seeds": L.search_seeds(cfg.study),
                                  "rule": "the best mean validation score over the seeds among rates at which no seed "
                                          "diverged or did not learn; the lower rate on a tie",
                                  "grid": L.grid_record(found), **L.seed_record(sdir, search),
                                  "chosen": best, "members": [m.record() for m in search]}
            for key, c in best.items():
                tried = ", ".join(f"{lr} -> {'no score' if v is None else format(v, '.4g')}"
                                  for lr, v in index["lr_search"]["grid"][key].items())
                lr = "no rate" if c["lr"] is None else format(c["lr"], "g")
                print(f"lr_search {key}: {lr} (validation: {tried})")
            for note in L.on_edge_notes(best):
                print(f"warning: lr_search {note}", file=sys.stderr)
        try:
            members = S.main_members(cfg.study, chosen)
        except ConfigError as e:
            _refuse(e)
        failures += self._launch(sdir, members, index)
        if cfg.study.until_resolved and not failures:
            members, index["sequential"], more = self._until_resolved(sdir, members, index)
            failures += more
        index["members"] = [self._entry(sdir, m) for m in members]
        sdir.write_index(index)
        done = sum(e["status"] == "complete" for e in index["members"])
        print(f"study {cfg.study.name}: {done}/{len(members)} runs complete in {sdir.path}")
        for e in index["members"]:
            if e.get("did_not_learn"):
                print(f"warning: run {e['id']} did not learn: {'; '.join(e.get('learning_reasons') or [])}.",
                      file=sys.stderr)
        if failures:
            print("error: these runs failed: " + "; ".join(failures), file=sys.stderr)
            sys.exit(1)
        return index

    def _until_resolved(self, sdir, members: List, index: dict):
        """Seeds in rounds for the rank-swept members still unresolved against full FT (``analysis.sequential``):
        (all members, the record of the looks for study.json, failures)."""
        import dataclasses

        from lora_study import methods
        from lora_study.analysis import sequential as Q
        from lora_study.artifacts import arm_key
        study = self.config.study
        key = lambda m: arm_key(m.variant.arm, m.axis, m.variant.value)  # noqa: E731
        first = {}
        for m in members:
            first.setdefault(key(m), m)
        reference = next(k for k, m in first.items() if m.method in self._references(members))
        in_play = [k for k, m in first.items() if m.axis == "rank"]
        seeds = [int(s) for s in study.seeds]
        counts = Q.schedule(len(seeds), int(study.seeds_per_round), int(study.max_seeds))
        # the ranks of one family make one claim: each rank is tested at 5 % / its family's ranks (Bonferroni), and
        # that is spent over the looks
        family = {k: methods.get(m.method).family_name for k, m in first.items() if m.axis == "rank"}
        size = {f: sum(1 for g in family.values() if g == f) for f in set(family.values())}
        spend = {f: Q.alphas(len(seeds), int(study.seeds_per_round), int(study.max_seeds), alpha=0.05 / n)
                 for f, n in size.items()}
        looks, final, failures = [], {}, []
        for k, count in enumerate(counts, 1):
            while len(seeds) < count:
                seeds.append(max(seeds) + 1)
            new = [dataclasses.replace(first[key_], seed=s, extra=[]) for s in seeds[:count]
                   for key_ in in_play + [reference] if not any(key(m) == key_ and m.seed == s for m in members)]
            if new:
                print(f"until_resolved look {k}: seeds {sorted({m.seed for m in new})} for " + ", ".join(in_play) +
                      f" and {reference}")
                members = members + new
                failures += self._launch(sdir, new, index, planned=members)
                if failures:
                    break
            index["members"] = [self._entry(sdir, m) for m in members]
            sdir.write_index(index)
            verdicts, alpha = {}, {}
            for f in sorted({family[k_] for k_ in in_play}):
                keys = [k_ for k_ in in_play if family[k_] == f]
                alpha.update({k_: spend[f][k - 1] for k_ in keys})
                verdicts.update(Q.look(sdir.path, keys, reference, seeds[:count], spend[f][k - 1]))
            looks.append({"look": k, "seeds": seeds[:count], "alpha": alpha, "verdicts": verdicts})
            for key_, v in verdicts.items():
                if v != Q.UNRESOLVED:
                    final[key_] = {"verdict": v, "seeds": seeds[:count], "look": k, "alpha": alpha[key_]}
            in_play = [k_ for k_ in in_play if k_ not in final]
            print(f"until_resolved look {k} ({count} seeds): " +
                  ", ".join(f"{k_} {v} (alpha {alpha[k_]:.4f})" for k_, v in verdicts.items()))
            if not in_play:
                break
        for key_ in in_play:
            final[key_] = {"verdict": Q.UNRESOLVED, "seeds": seeds[:counts[len(looks) - 1]], "look": len(looks),
                           "alpha": looks[-1]["alpha"].get(key_) if looks else None}
        record = {"reference": reference, "max_seeds": int(study.max_seeds),
                  "seeds_per_round": int(study.seeds_per_round), "spending": "Pocock-type (Lan-DeMets), union bound "
                  "over the looks, of 5 % / the ranks of each family (Bonferroni over the ranks)",
                  "family_ranks": size, "looks": looks, "final": final}
        return members, record, failures

    @staticmethod
    def _references(members: List) -> set:
        from lora_study import methods
        # the method's own arm only: a declared arm of full FT in another setting is not the study's reference
        return {m.method for m in members if methods.get(m.method).is_reference and m.arm in (None, m.method)}

    def _entry(self, sdir, m) -> dict:
        from lora_study.study import planning as S
        reason = S.member_status(sdir, m)
        rec = {**m.record(), "dir": sdir.subdir(m.id, m.phase), "status": "complete" if reason is None else "failed"}
        if reason is not None:
            rec["reason"] = reason
        else:
            learned = sdir.run(m.id, m.phase).summary().get("learning") or {}
            rec["did_not_learn"] = bool(learned.get("did_not_learn"))
            if rec["did_not_learn"]:
                rec["learning_reasons"] = list(learned.get("reasons") or [])
        return rec

    def _launch(self, sdir, members: Sequence, index: dict, planned: Optional[Sequence] = None) -> List[str]:
        """Launch the members of ``members`` that are not complete; ``planned`` (default: ``members``) is what the
        index lists meanwhile. A search run that diverged is a result (its rate is too high), not a failure, and
        is not run again."""
        from lora_study.study import lr_search as L, planning as S
        todo = []
        for m in members:
            reason = S.member_status(sdir, m)
            if reason is None:
                print(f"skip {m.id}: complete")
            elif m.phase == "lr_search" and L.diverged(sdir, m) is not None:
                print(f"skip {m.id}: diverged before, a result of the search")
            else:
                todo.append(m)
        # write the plan before launching, so a killed study still has an index to resume from
        index["members"] = [{**m.record(), "dir": sdir.subdir(m.id, m.phase), "status": "pending"}
                            for m in (planned if planned is not None else members)]
        sdir.write_index(index)
        if not todo:
            return []
        overrides = [self.member_arguments + m.overrides() for m in todo]
        returns = self.launcher.launch(overrides, initial_job_idx=0)
        failures = []
        for m, ret in zip(todo, returns):
            if ret.status != JobStatus.COMPLETED:
                why = L.diverged(sdir, m) if m.phase == "lr_search" else None
                if why is not None:
                    print(f"lr_search {m.id} diverged ({why}); its rate counts as tried, with no score")
                    continue
                err = ret._return_value
                failures.append(f"{m.id} ({type(err).__name__}: {err})")
        return failures


def _refuse(e: Exception) -> None:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _plain(node) -> dict:
    from omegaconf import OmegaConf
    return OmegaConf.to_container(node, resolve=True)
