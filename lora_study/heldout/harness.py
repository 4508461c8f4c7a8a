"""lm-evaluation-harness tasks as held-out evaluation of causal LMs, the way the field reads forgetting (Biderman et
al. 2024 average HellaSwag, ARC-Challenge and WinoGrande): log-likelihood multiple choice, the answer the model
scores highest among a task's choices.

``heldout.lm_eval.tasks`` names the tasks: hub tasks (``arc_easy``, ``hellaswag``, ``winogrande``, ...; their data
comes from the hub), the suite's offline tasks in ``lora_study/heldout/lm_eval_tasks/`` (``subjectivity_mc``,
``bbc_topic_mc``, built from packaged corpora), or tasks of your own in lm-eval's YAML format in the folders of
``heldout.lm_eval.include_path``. The model is the run's model object, wrapped by lm-eval's ``HFLM``: a LoRA run is
scored merged (or through its adapter when it does not merge), with no copy on disk.

Per task and example the harness's ``acc`` (1 when the correct choice has the highest log-likelihood) is kept, in
document order, so the base's and a finetuned model's scores pair example by example; ``chance`` is the mean over
examples of 1 / the number of choices. lm-eval's own seeding is turned off and the caller's random state restored,
so scoring never moves a run's training randomness.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ..schema import ConfigError

PACKAGED = Path(__file__).parent / "lm_eval_tasks"  # the offline tasks, in lm-eval's own format


@dataclass
class HarnessScore:
    accuracy: float
    chance: float
    correct: np.ndarray  # per example, document order


def _task_manager(cfg, tasks: List[str]):
    """lm-eval's TaskManager over the packaged and the user's task folders; lm-eval's own (hub) task index, whose
    scan takes seconds, only when some named task is not in those folders."""
    from lm_eval.tasks import TaskManager
    paths = [str(PACKAGED)] + [str(Path(p).expanduser()) for p in (cfg.include_path or [])]
    for p in paths[1:]:
        if not Path(p).is_dir():
            raise ConfigError(f"heldout.lm_eval.include_path names {p}, which is not a folder; give folders of "
                              "lm-eval task YAML files.")
    meta = {"n": cfg.limit, "seed": cfg.seed, "max_words": cfg.max_words}
    manager = TaskManager(include_path=paths, include_defaults=False, metadata=meta)
    if all(t in manager.all_tasks for t in tasks):
        return manager
    manager = TaskManager(include_path=paths, metadata=meta)
    missing = [t for t in tasks if t not in manager.all_tasks]
    if missing:
        raise ConfigError(f"heldout.lm_eval.tasks names {', '.join(missing)}, which lm-eval does not know; name its "
                          "tasks (arc_easy, hellaswag, ...), the packaged subjectivity_mc or bbc_topic_mc, or a task "
                          "in a folder of heldout.lm_eval.include_path.")
    return manager


def check_installed() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError as e:
        raise ConfigError("heldout.lm_eval.tasks needs lm-evaluation-harness: pip install 'lora-study[lmeval]', or "
                          "set heldout.lm_eval.tasks=[].") from e


@torch.no_grad()
def harness_scores(model, tokenizer, cfg, batch_size: int, manager=None) -> Dict[str, HarnessScore]:
    """{task: its accuracy, chance and per-example correctness} of ``model`` on ``cfg.tasks`` (zero-shot unless
    ``cfg.num_fewshot``; at most ``cfg.limit`` documents per task, lm-eval's first ones)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    tasks = list(cfg.tasks)
    manager = manager or _task_manager(cfg, tasks)
    state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    was = model.training
    model.eval()
    quiet = logging.getLogger("lm_eval")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=cfg.max_length)
        out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=cfg.limit,
                                      num_fewshot=cfg.num_fewshot or None, log_samples=True, bootstrap_iters=0,
                                      random_seed=None, numpy_random_seed=None, torch_random_seed=None,
                                      fewshot_random_seed=cfg.seed, verbosity="ERROR")
    finally:
        quiet.level = level
        model.train(was)
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.random.set_rng_state(state[2])
    scores = {}
    for task in tasks:
        samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        correct = np.array([float(s["acc"]) for s in samples])
        chance = float(np.mean([1.0 / len(s["arguments"]) for s in samples]))
        scores[task] = HarnessScore(float(correct.mean()), chance, correct)
    return scores


def task_manager(cfg) -> Optional[object]:
    """The TaskManager for ``cfg.tasks`` (None without tasks), built once per scorer: a name it cannot find stops
    the run before training."""
    if not cfg.tasks:
        return None
    check_installed()
    return _task_manager(cfg, list(cfg.tasks))
