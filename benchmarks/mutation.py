"""Mutation score of the maths modules: how many small changes to the code (an operator flipped, a constant moved,
an argument dropped) their own fast tests catch. Not run in CI: it takes minutes per module.

    pip install mutmut                                    # 3.x (tested with 3.8.1)
    python benchmarks/mutation.py                         # every module below, one after the other
    python benchmarks/mutation.py analysis/stats.py       # one module
    python benchmarks/mutation.py --out mutation.md       # also write the table and each survivor's diff

Each module is mutated in a scratch copy of the packages (``--workdir``, default a temporary directory), and each
mutant is checked by the module's own test files only (``MODULES``), through mutmut's fork-per-mutant runner. The
score is killed / (mutants − not checked), timeouts counted as killed. Survivors judged equivalent (no input can
tell them from the original, or only through behaviour the module does not promise) are listed in ``EQUIVALENT``
with the reason; the table gives the score with and without them, and says when a listed mutant no longer
survives or no longer exists (mutant names follow the source, so an edit to a module renumbers its mutants).
Goal: at least 85 % killed per module.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL = 0.85

# module -> the test files that are its own (fast, no model)
MODULES = {
    "analysis/spectral.py": ["tests/test_spectral.py"],
    "analysis/subspace.py": ["tests/test_subspace.py"],
    "analysis/dimension.py": ["tests/test_dimension.py"],
    "analysis/stats.py": ["tests/test_stats.py"],
    "lora_study/linalg.py": ["tests/test_linalg.py"],
    "lora_study/methods/projections.py": ["tests/test_projections.py"],
    "lora_study/heldout/cka.py": ["tests/test_cka.py"],
}

# survivors judged equivalent: mutant name -> why no test can (or should) tell it from the original
_ORIENTATION = ("which side of the matrix the SVD works on (a transpose for wide matrices, or for square ones): "
                "the singular values and the subspaces returned are the same either way, only the speed differs")
_DEVICE = ("where the computation runs (the caller's device, or None meaning the input's): on a machine with only a "
           "CPU both are the CPU, so no test here can tell them apart; a CUDA machine's test would")
EQUIVALENT: dict[str, str] = {
    **{f"lora_study.linalg.x__tall__mutmut_{i}": _ORIENTATION for i in (1, 2, 5, 6, 7)},
    "lora_study.linalg.x_thin_svd__mutmut_8": _ORIENTATION,
    "lora_study.linalg.x_singular_values__mutmut_4": _DEVICE,
    "lora_study.linalg.x_singular_values__mutmut_23": _DEVICE,
    "lora_study.linalg.x_thin_svd__mutmut_3": _DEVICE,
    "lora_study.linalg.x_truncate__mutmut_10": _DEVICE,
}


def installed(module: str) -> str:
    """A module's path in the installed package: analysis/ is installed as lora_study/analysis/."""
    return f"lora_study/{module}" if module.startswith("analysis/") else module


def workdir_for(module: str, base: Path) -> Path:
    """A scratch copy holding the packages, the module's tests and a mutmut configuration for it alone."""
    work = base / module.replace("/", "_").removesuffix(".py")
    if work.exists():
        shutil.rmtree(work)
    (work / "tests").mkdir(parents=True)
    # the packages as installed: analysis/ is lora_study.analysis (pyproject.toml's package-dir)
    shutil.copytree(ROOT / "lora_study", work / "lora_study", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "analysis", work / "lora_study" / "analysis", ignore=shutil.ignore_patterns("__pycache__"))
    for t in ["tests/conftest.py", *MODULES[module]]:
        shutil.copy(ROOT / t, work / t)
    quoted = lambda xs: "[" + ", ".join(f'"{x}"' for x in xs) + "]"  # noqa: E731
    (work / "pyproject.toml").write_text(
        "[tool.mutmut]\n"
        'source_paths = ["lora_study"]\n'  # the whole package, so the mutated copy is the one imported
        f"only_mutate = {quoted([installed(module)])}\n"
        f"pytest_add_cli_args_test_selection = {quoted(MODULES[module])}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
        "use_git_change_detection = false\n")
    return work


def run_module(module: str, base: Path, timeout: int) -> dict:
    work = workdir_for(module, base)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the mutated copy must win
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    t0 = time.time()
    try:
        r = subprocess.run([sys.executable, "-m", "mutmut", "run"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=timeout)
        timed_out = False
        log = r.stdout[-4000:] + r.stderr[-4000:]
    except subprocess.TimeoutExpired:
        timed_out, log = True, ""
    seconds = time.time() - t0
    res = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work, env=env,
                         capture_output=True, text=True)
    status = dict(re.findall(r"^\s+(\S+): (.+)$", res.stdout, flags=re.M))
    counts: dict[str, int] = {}
    for s in status.values():
        counts[s] = counts.get(s, 0) + 1
    survivors = sorted((k for k, s in status.items() if s == "survived"), key=_natural)
    diffs = {k: subprocess.run([sys.executable, "-m", "mutmut", "show", k], cwd=work, env=env, capture_output=True,
                               text=True).stdout for k in survivors}
    return {"module": module, "status": status, "counts": counts, "survivors": survivors, "diffs": diffs,
            "seconds": seconds, "timed_out": timed_out, "log": log, "work": work}


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def score(r: dict) -> tuple:
    c = r["counts"]
    checked = sum(c.values()) - c.get("not checked", 0) - c.get("skipped", 0)
    killed = c.get("killed", 0) + c.get("timeout", 0)
    equivalent = [k for k in r["survivors"] if k in EQUIVALENT]
    raw = killed / checked if checked else float("nan")
    net = killed / (checked - len(equivalent)) if checked - len(equivalent) else float("nan")
    return checked, killed, equivalent, raw, net


def table(results: list) -> str:
    lines = ["| module | mutants | killed | survived | judged equivalent | score | score without equivalent | time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        checked, killed, equivalent, raw, net = score(r)
        lines.append(f"| {r['module']} | {checked} | {killed} | {len(r['survivors'])} | {len(equivalent)} | "
                     f"{100 * raw:.1f} % | {100 * net:.1f} % | {r['seconds']:.0f} s"
                     + (" (timed out)" if r["timed_out"] else "") + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help=f"modules to mutate (default: all of {', '.join(MODULES)})")
    ap.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one, removed afterwards)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per module (default 1800)")
    ap.add_argument("--out", type=Path, help="write the table and every survivor's diff to this Markdown file")
    a = ap.parse_args(argv)
    unknown = [m for m in a.modules if m not in MODULES]
    if unknown:
        ap.error(f"{', '.join(unknown)} is not one of the mutated modules: {', '.join(MODULES)}.")
    base = a.workdir or Path(tempfile.mkdtemp(prefix="lora-study-mutation-"))
    results = []
    try:
        for module in a.modules or list(MODULES):
            print(f"mutating {module} ...", flush=True)
            r = run_module(module, base, a.timeout)
            if not r["status"]:
                print(f"mutmut gave no results for {module}:\n{r['log']}", file=sys.stderr)
            results.append(r)
            print(table([r]).splitlines()[-1], flush=True)
    finally:
        if a.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    report = [table(results), ""]
    for r in results:
        stale = [k for k in EQUIVALENT if k.startswith(_prefix(r["module"])) and r["status"].get(k) != "survived"]
        if stale:
            report.append(f"{r['module']}: listed as equivalent but not a survivor now: {', '.join(stale)}")
        for k in r["survivors"]:
            why = EQUIVALENT.get(k)
            report += [f"### {k}: survived" + (f" (judged equivalent: {why})" if why else ""), "",
                       "```diff", r["diffs"][k].strip(), "```", ""]
    print("\n" + table(results))
    if a.out:
        a.out.write_text("\n".join(report) + "\n")
    below = [r["module"] for r in results if not score(r)[4] >= GOAL]
    if below:
        print(f"below the goal of {100 * GOAL:.0f} % killed: {', '.join(below)}", file=sys.stderr)
    return 1 if below else 0


def _prefix(module: str) -> str:
    return installed(module).removesuffix(".py").replace("/", ".") + "."


if __name__ == "__main__":
    sys.exit(main())
