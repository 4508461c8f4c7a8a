"""Shared fixtures: offline hub, an isolated model cache, Hydra composition and tiny runs in-process."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

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
                     "heldout.n_train=40", "heldout.n_test=40", "heldout.n_drift=40", "heldout.max_length=32",
                     "heldout.every=6"]  # probes at step 6 and 12, where validation runs too: two checkpoints

# a learning-rate search's evidence, as study.json carries it ({key: {lr: validation score}}), for the report's heatmap
LR_EVIDENCE = {"none": {"0.01": 0.52, "0.1": 0.55}, "full": {"0.0001": 0.58, "0.001": 0.61, "0.01": 0.5},
               "lora_r1": {"0.001": 0.51, "0.005": 0.56, "0.05": 0.53}, "lora_r4": {"0.001": 0.54, "0.005": 0.57}}


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """A tiny-model study (base, full FT, LoRA r = 1, 2, 4), made once per test session; copy before changing it."""
    root = tmp_path_factory.mktemp("studies")
    r = cli("lora-study-study", *STUDY_ARGS, f"study.root={root}", "study.name=tiny")
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "tiny"


@pytest.fixture(scope="session")
def reported(tiny_study, tmp_path_factory):
    """A copy of the tiny study with learning-rate evidence in its study.json, and its report (lora-study-report)."""
    import json
    import shutil
    dst = tmp_path_factory.mktemp("rep") / "tiny"
    shutil.copytree(tiny_study, dst, ignore=shutil.ignore_patterns("analysis", "report"))
    idx = json.loads((dst / "study.json").read_text())
    (dst / "study.json").write_text(json.dumps({**idx, "lr_evidence": LR_EVIDENCE}))
    r = cli("lora-study-report", str(dst))
    assert r.returncode == 0, r.stderr[-3000:]
    return dst


@pytest.fixture()
def study_copy(tiny_study, tmp_path):
    import shutil
    dst = tmp_path / "tiny"
    shutil.copytree(tiny_study, dst, ignore=shutil.ignore_patterns("analysis", "report"))
    return dst


def load_model(model_cfg, family: str = "classification", num_labels: int = 2):
    """A pretrained (or tiny) model with the head of ``family``, as a run loads it."""
    from lora_study import tasks
    from lora_study.models import build_model
    kwargs = {"num_labels": num_labels} if family == "classification" else {}
    return build_model(model_cfg, tasks.get(family).auto_class, **kwargs)


def prepare(model, method: str, head=(), gradient_checkpointing: bool = False, **fields):
    """Apply a registered method with its schema's defaults and ``fields`` overridden."""
    from lora_study import methods
    m = methods.get(method)
    return m.prepare(model, m.schema(name=method, **fields), list(head), gradient_checkpointing=gradient_checkpointing)


def randomize_lora_b(model, seed: int = 0):
    """Give every LoRA B a random value (B = 0 at initialisation would make merge checks pass trivially)."""
    from lora_study.methods.lora import lora_layers
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for b in layer.lora_B.values():
                b.weight.copy_(torch.randn(b.weight.shape, generator=gen))


def study_in_process(*args):
    """``lora-study-study ARGS`` in this process (Hydra's basic launcher runs the members here), so methods and
    stubs that a test registers take part; returns the exit code (0 when every member completed)."""
    from hydra.core.global_hydra import GlobalHydra

    from lora_study.cli import study_main
    GlobalHydra.instance().clear()
    argv = sys.argv
    sys.argv = ["lora-study-study", *args]
    try:
        study_main()
        return 0
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
