"""Where do a run's seconds go? Profiles one run of the default study (or any overrides) in-process with
cProfile and prints the cumulative time of each phase: loading the task and the model, preparing held-out
evaluation (base features), training, evaluation, ΔW and its spectra, storage, held-out evaluation after
training, truncation and latency.

    python benchmarks/profile_run.py method=lora method.rank=8 optim.lr=1.5e-3
    python benchmarks/profile_run.py experiment=rank_sweep method=full optim.lr=1e-4 --out /tmp/prof

The run's config is the default study's (``experiment=rank_sweep``) plus the overrides; its run directory goes
to a temporary directory unless ``--out`` is given. Run it with nothing else running: the numbers are wall times.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (phase, module file suffix, function name): cumulative time of these calls inside the run
PHASES = [
    ("validate config", "lora_study/config.py", "validate"),
    ("load task", "lora_study/tasks/__init__.py", "load"),
    ("load task", "lora_study/tasks/classification.py", "load"),
    ("load model", "lora_study/models/__init__.py", "build_model"),
    ("prepare method", "lora_study/methods/lora.py", "prepare"),
    ("prepare method", "lora_study/methods/baselines.py", "prepare"),
    ("prepare method", "lora_study/methods/intrinsic.py", "prepare"),
    ("held-out: data and base features", "lora_study/heldout/__init__.py", "make_scorer"),
    ("train (incl. validation)", "lora_study/run/train.py", "train"),
    ("ΔW", "lora_study/methods/lora.py", "deltas"),
    ("ΔW", "lora_study/methods/baselines.py", "deltas"),
    ("spectra", "lora_study/linalg.py", "spectra"),
    ("storage", "lora_study/methods/lora.py", "storage"),
    ("storage", "lora_study/methods/baselines.py", "storage"),
    ("held-out evaluation", "lora_study/heldout/probes.py", "evaluate"),
    ("truncation", "lora_study/run/post_training.py", "truncation"),
    ("intruder scaling", "lora_study/run/post_training.py", "intruder_scaling"),
    ("latency", "lora_study/run/post_training.py", "latency"),
    ("write summary", "lora_study/artifacts.py", "write_summary"),
]
# a cross-cutting line, not a phase: every pass over a task split (validation in training, the test split, and the
# test passes inside truncation and intruder scaling), so its share overlaps the phases above
ACROSS = [("every task evaluation (validation, test, inside truncation)", "lora_study/tasks/classification.py",
           "evaluate")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--out", help="run directory (default: a temporary one)")
    ap.add_argument("--top", type=int, default=0, help="also print the N most expensive functions")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from hydra import compose, initialize_config_dir

    from lora_study.artifacts import RunDir
    from lora_study.config import conf_dir, register
    from lora_study.run.runner import execute
    register()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=rank_sweep", *a.overrides])
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp())
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    summary = execute(cfg, RunDir(out))
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    totals: dict = {}
    for (file, _, fn), (_, _, _, cum, _) in stats.stats.items():
        for phase, suffix, name in PHASES + ACROSS:
            if fn == name and file.endswith(suffix):
                totals[phase] = totals.get(phase, 0.0) + cum
    print(f"run {summary['method']} ({' '.join(a.overrides)}): {wall:.1f} s in-process, test accuracy "
          f"{summary['metrics']['test_accuracy']}")
    print("| phase | seconds | share |\n|---|---:|---:|")
    phases = [p for p in dict.fromkeys(p for p, _, _ in PHASES) if p in totals]
    for phase in phases:
        print(f"| {phase} | {totals[phase]:.1f} | {100 * totals[phase] / wall:.0f} % |")
    rest = wall - sum(totals[p] for p in phases)  # the test split's evaluation, merge checks, writing
    print(f"| the rest (the test split, merge check, writing) | {rest:.1f} | {100 * rest / wall:.0f} % |")
    for phase, _, _ in ACROSS:
        if phase in totals:
            print(f"| *across phases:* {phase} | {totals[phase]:.1f} | {100 * totals[phase] / wall:.0f} % |")
    if a.top:
        stats.sort_stats("cumulative").print_stats(a.top)


if __name__ == "__main__":
    main()
