"""Are two versions of the suite numerically the same? Runs the same explicit runs (LoRA, full finetuning,
subspace training on the packaged default model) with the code of a git revision and with the working tree,
and compares every saved ΔW bit for bit and the test metrics exactly.

    python benchmarks/identity.py --ref <git revision>           # e.g. the commit before a refactor

Each version runs in its own subprocess with its own source directory first on sys.path (the revision is
checked out into a temporary git worktree), through the same command-line overrides, on the CPU.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMON = ["model=minilm", "train.max_steps=10", "train.eval_every=10", "train.batch_size=8", "train.max_length=48",
          "train.seed=0", "train.device=cpu", "task.max_eval_examples=64", "heldout=none", "run.latency=false",
          "run.truncation_ranks=[]"]
RUNS = {
    "lora_r8": ["method=lora", "method.rank=8", "method.alpha=16", "optim.lr=1.5e-3"],
    "lora_r2_all_linear": ["method=lora", "method.rank=2", "method.alpha=4", "method.target_modules=all_linear",
                           "optim.lr=5e-3"],
    "full": ["method=full", "optim.lr=1e-4"],
    "subspace_did_d1000": ["method=subspace", "method.d=1000", "optim.lr=1e-2"],
}

DRIVER = """
import importlib.util, os, sys
sys.path.insert(0, sys.argv[1])
init = os.path.join(sys.argv[1], "conf", "__init__.py")
if os.path.exists(init):  # this version's config groups, not those of the installed lora-study
    sys.modules["lora_study.conf"] = importlib.util.module_from_spec(
        importlib.util.spec_from_file_location("lora_study.conf", init))
sys.argv = ["lora-study-train"] + sys.argv[2:]
from lora_study.cli import train_main
train_main()
"""


def run_version(src: Path, out: Path) -> dict:
    """Run every configuration with the code in ``src``; return {run: {tensor: sha256, '_metrics': ...}}."""
    from safetensors.torch import load_file
    results = {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(src)}
    for name, args in RUNS.items():
        rd = out / name
        cmd = [sys.executable, "-c", DRIVER, str(src), *COMMON, *args, f"hydra.run.dir={rd}"]
        r = subprocess.run(cmd, cwd=src, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise SystemExit(f"{name} failed with the code in {src}:\n{r.stderr[-3000:]}")
        deltas = load_file(rd / "delta.safetensors")
        summary = json.loads((rd / "summary.json").read_text())
        results[name] = {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() for k, v in deltas.items()}
        results[name]["_metrics"] = {k: summary["metrics"].get(k) for k in ("test_accuracy", "test_loss",
                                                                              "validation_accuracy")}
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", required=True, help="git revision to compare the working tree with")
    ap.add_argument("--out", help="keep the run directories here (default: a temporary directory)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(a.out) if a.out else Path(tmp)
        wt = Path(tmp) / "ref"
        subprocess.run(["git", "worktree", "add", "--detach", str(wt), a.ref], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            before = run_version(wt, base / "ref")
            after = run_version(ROOT, base / "working_tree")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT, capture_output=True)
    same_all = True
    print(f"| run | ΔW tensors | bit-identical | test accuracy ref / now | test loss ref / now |")
    print("|---|---:|---|---|---|")
    for name in RUNS:
        b, n = before[name], after[name]
        keys = sorted(k for k in b if k != "_metrics")
        same = keys == sorted(k for k in n if k != "_metrics") and all(b[k] == n[k] for k in keys)
        same_metrics = b["_metrics"] == n["_metrics"]
        same_all &= same and same_metrics
        bm, nm = b["_metrics"], n["_metrics"]
        print(f"| {name} | {len(keys)} | {'yes' if same else 'NO'} | {bm['test_accuracy']} / {nm['test_accuracy']} | "
              f"{bm['test_loss']:.6f} / {nm['test_loss']:.6f} |")
    print("every ΔW and metric identical" if same_all else "DIFFERENCES FOUND")
    sys.exit(0 if same_all else 1)


if __name__ == "__main__":
    main()
