"""Shared fixtures: offline hub, an isolated model cache, Hydra composition and tiny runs in-process."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")

ROOT = Path(__file__).resolve().parent.parent
CONF = str(ROOT / "conf")
BIN = Path(sys.executable).parent

# a tiny run: a few steps on a small slice of the default task
TINY = ["model=tiny", "train.max_steps=6", "train.eval_every=3", "train.batch_size=8", "train.max_length=32",
        "task.max_eval_examples=64", "run.latency_repeats=1", "run.truncation_ranks=[1,2]"]


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    os.environ["LORA_STUDY_CACHE"] = str(tmp_path_factory.mktemp("cache"))


def compose(overrides, config_name: str = "config"):
    from hydra import compose as hcompose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lora_study.config import register
    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return hcompose(config_name=config_name, overrides=list(overrides))


def run_tiny(out: Path, overrides=(), base=TINY):
    """Run in-process into ``out`` as the CLI would (including Hydra's .hydra/config.yaml)."""
    from omegaconf import OmegaConf

    from lora_study.artifacts import RunDir
    from lora_study.run import execute

    cfg = compose(list(base) + list(overrides))
    (out / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    return execute(cfg, RunDir(out)), cfg


def cli(*args, cwd=None, timeout=600):
    import subprocess
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ})


STUDY_ARGS = TINY + ["study.ranks=[1,2,4]", "train.max_steps=12", "optim.lr=1e-3", "study.lr={none:1e-2,full:1e-3,lora:5e-3}",
                     "heldout.n_train=40", "heldout.n_test=40", "heldout.n_drift=40", "heldout.max_length=32"]


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """A tiny-model study (base, full FT, LoRA r = 1, 2, 4), made once per test session; copy before changing it."""
    root = tmp_path_factory.mktemp("studies")
    r = cli("lora-study-study", *STUDY_ARGS, f"study.root={root}", "study.name=tiny")
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "tiny"


@pytest.fixture()
def study_copy(tiny_study, tmp_path):
    import shutil
    dst = tmp_path / "tiny"
    shutil.copytree(tiny_study, dst, ignore=shutil.ignore_patterns("analysis", "report"))
    return dst
