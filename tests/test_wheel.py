"""The package as a user installs it: a wheel built from the sources, installed into a fresh virtual environment
that cannot see the source tree, run from an empty directory. It carries its config groups (lora_study/conf) and its
analysis (lora_study.analysis, no top-level ``analysis``), runs the smoke study and its report with the same results
as the editable install, and composes a user's own experiment and task from ``--config-dir`` or
``hydra.searchpath``.

The fresh environment gets no copies of the dependencies: a ``.pth`` file adds this environment's site-packages after
its own. A directory added that way has its own ``.pth`` files left unprocessed, so the editable install's import
finder stays out, and ``lora_study`` resolves to the wheel's copy (checked below).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import BIN, ROOT, TINY

# what the wheel is built from (pyproject.toml maps analysis/ and conf/ into lora_study)
SOURCES = ("pyproject.toml", "README.md", "lora_study", "analysis", "conf", "hydra_plugins")
# the smoke study at the tiny model's size: every member, the held-out probes from the data packages, ΔW, analysis
SMOKE = ["experiment=smoke", *TINY]
# analysis tables of quantities computed from saved tensors and predictions; the others hold measured seconds or
# bytes (latency, memory), which differ between any two runs
COMPUTED_TABLES = ("spectra", "similarity", "intruders", "forgetting", "truncation", "amplification")


def _run(cmd, cwd, env, timeout=600):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built offline (no build isolation, no dependencies) from a copy of the sources, so the build
    leaves nothing in the checkout."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", base / "dist", src], cwd=base, env=os.environ)
    (found,) = (base / "dist").glob("lora_study-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh virtual environment with the wheel installed (``--no-deps``) and this environment's site-packages
    behind its own; returns (its bin directory, the environment to run its commands in)."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv, env=os.environ)
    python = venv / "bin" / "python"
    own = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], venv, os.environ)
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(own.stdout.strip()) / "lora_study_dependencies.pth").write_text("".join(f"{d}\n" for d in deps))
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel],
         cwd=venv, env=os.environ)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return venv / "bin", env


def test_the_wheel_holds_every_module_and_config_under_lora_study(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(ROOT)) for d in ("lora_study", "hydra_plugins") for p in (ROOT / d).rglob("*.py")}
    expected |= {f"lora_study/{p.relative_to(ROOT)}" for p in (ROOT / "analysis").rglob("*.py")}
    expected |= {f"lora_study/{p.relative_to(ROOT)}" for p in (ROOT / "conf").rglob("*") if p.suffix in (".py", ".yaml")}
    assert expected - names == set()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"lora_study", "hydra_plugins"}  # no top-level analysis or conf to collide with other packages
    scripts = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "lora-study-report = lora_study.analysis.report:main" in scripts


def test_the_installed_package_is_the_wheels_own(installed, tmp_path):
    bin_dir, env = installed
    code = ("import importlib.util, json, lora_study, lora_study.analysis\n"
            "from lora_study.config import conf_dir\n"
            "print(json.dumps([lora_study.__file__, lora_study.analysis.__file__, str(conf_dir()),\n"
            "                  importlib.util.find_spec('analysis') is None]))\n")
    package, analysis, conf, no_top_level = json.loads(_run([bin_dir / "python", "-c", code], tmp_path, env).stdout)
    site = bin_dir.parent / "lib"
    assert Path(package).is_relative_to(site) and Path(package).parent.name == "lora_study"
    assert Path(analysis) == Path(package).parent / "analysis" / "__init__.py"
    assert Path(conf) == Path(package).parent / "conf" and (Path(conf) / "config.yaml").is_file()
    assert no_top_level


def _side_by_side(commands: dict, env: dict, cwd: Path) -> None:
    """Run {name: command} at once, each in ``cwd / name`` with ``env[name]``; each must succeed."""
    procs = {name: subprocess.Popen([str(c) for c in cmd], cwd=cwd / name, env=env[name], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for name, cmd in commands.items()}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{name}: {' '.join(map(str, commands[name]))}\n{out[-4000:]}"


def test_the_smoke_study_and_report_from_an_empty_directory_match_the_editable_install(installed, tmp_path):
    """Both installs run the same study and report side by side, each from its own empty directory (one thread
    each)."""
    bin_dir, wheel_env = installed
    env = {"wheel": wheel_env, "editable": {**os.environ}}
    bins = {"wheel": bin_dir, "editable": BIN}
    for name in bins:
        (tmp_path / name).mkdir()
    _side_by_side({k: [b / "lora-study-study", *SMOKE] for k, b in bins.items()}, env, tmp_path)
    _side_by_side({k: [b / "lora-study-report", "results/studies/smoke"] for k, b in bins.items()}, env, tmp_path)
    wheel, editable = (tmp_path / k / "results" / "studies" / "smoke" for k in ("wheel", "editable"))
    assert (wheel / "report" / "report.md").is_file() and (wheel / "report" / "report.html").is_file()
    for part in ("runs", "analysis", "report"):
        assert sorted(p.relative_to(wheel) for p in (wheel / part).rglob("*")) == \
            sorted(p.relative_to(editable) for p in (editable / part).rglob("*"))
    members = sorted(p.name for p in (wheel / "runs").iterdir())
    assert len(members) == 4, members  # the frozen base, full FT, LoRA r = 1 and 8
    for study, conf in ((wheel, bin_dir.parent / "lib"), (editable, ROOT / "conf")):
        hydra = yaml.safe_load((study / "runs" / members[0] / ".hydra" / "hydra.yaml").read_text())["hydra"]
        (main,) = [Path(s["path"]) for s in hydra["runtime"]["config_sources"] if s["provider"] == "main"]
        assert main.is_relative_to(conf) and main.name == "conf", main  # each install composed its own config
    for m in members:
        metrics = [json.loads((s / "runs" / m / "summary.json").read_text())["metrics"] for s in (wheel, editable)]
        assert metrics[0] == metrics[1], m
        if (wheel / "runs" / m / "delta.safetensors").exists():
            assert (wheel / "runs" / m / "delta.safetensors").read_bytes() == \
                (editable / "runs" / m / "delta.safetensors").read_bytes(), m
    for table in COMPUTED_TABLES:
        assert (wheel / "analysis" / f"{table}.csv").read_bytes() == (editable / "analysis" / f"{table}.csv").read_bytes()


def _user_configs(root: Path, cues: Path) -> Path:
    """A user's config directory: a task of their own built on the packaged ``files`` task, and an experiment built on
    the packaged ``smoke`` experiment that trains it."""
    (root / "task").mkdir(parents=True)
    (root / "experiment").mkdir()
    (root / "task" / "cues.yaml").write_text(
        "# lora-study-train --config-dir <this directory> task=cues\n"
        "defaults:\n  - files\n  - _self_\n"
        f"train_file: {cues}\nn_test: 200\nn_validation: 100\nmax_eval_examples: null\n")
    (root / "experiment" / "mine.yaml").write_text(
        "# @package _global_\n"
        "# lora-study-study --config-dir <this directory> experiment=mine\n"
        "defaults:\n  - smoke\n  - override /task: cues\n  - override /model: tiny\n  - _self_\n"
        "study:\n  name: mine\n  ranks: [2]\n"
        "method:\n  rank: 2\n")
    return root


def test_a_users_config_dir_composes_and_runs_from_the_installed_wheel(installed, cue_task, tmp_path):
    bin_dir, env = installed
    cues = Path(next(a for a in cue_task if a.startswith("task.train_file=")).split("=", 1)[1])
    user = _user_configs(tmp_path / "my_conf", cues)
    work = tmp_path / "work"
    work.mkdir()
    for where in (["--config-dir", str(user)], [f"hydra.searchpath=[file://{user}]"]):
        shown = _run([bin_dir / "lora-study-study", *where, "experiment=mine", "--cfg", "job"], work, env).stdout
        assert "name: mine" in shown and "ranks:\n  - 2" in shown and f"train_file: {cues}" in shown, shown
        assert "max_steps: 12" in shown  # from the packaged smoke experiment the user's builds on
    r = _run([bin_dir / "lora-study-train", "--config-dir", user, "experiment=mine", "train.max_steps=2",
              "train.eval_every=2", "heldout=none", "run.latency=false", "run.truncation_ranks=[]",
              "hydra.run.dir=run"], work, env)
    summary = json.loads((work / "run" / "summary.json").read_text())
    assert summary["method"] == "lora" and summary["metrics"]["test_accuracy"] is not None, r.stdout
    assert not (work / "results").exists()  # nothing beyond the run directory it was given
