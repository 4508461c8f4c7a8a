"""Shared fixtures: offline hub, an isolated model cache, Hydra composition and tiny runs in-process."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
# One intra-op thread, here and in the command-line runs tests start. The tiny models' operations take
# microseconds, so with two threads the time goes to OpenMP hand-offs, and on a loaded 2-core machine to waiting
# for the other thread: the shared tiny study took 106 s with two threads and 16 s with one (load 5, same results).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from lora_study.config import conf_dir  # noqa: E402 - after the environment above (transformers reads it once)

ROOT = Path(__file__).resolve().parent.parent
CONF = str(conf_dir())  # the config groups the installed package composes (the checkout's conf/ when editable)
BIN = Path(sys.executable).parent

# held-out probes at a small size: a tiny run checks that they run, not what they find. 200 probe examples per task
# are the fewest at which the tiny model's probes tell BBC topic and subjectivity from chance (political party
# stays at chance: the uninformative task the analyses leave out)
SMALL_HELDOUT = ["heldout.n_train=200", "heldout.n_test=200", "heldout.n_drift=40", "heldout.max_length=32"]
# a tiny run: a few steps on a small slice of the default task
TINY = ["model=tiny", "train.max_steps=6", "train.eval_every=3", "train.batch_size=8", "train.max_length=32",
        "task.max_eval_examples=64", "run.latency_repeats=1", "run.truncation_ranks=[1,2]", *SMALL_HELDOUT]


# the user's cache, read before each session points LORA_STUDY_CACHE at its own
USER_CACHE = Path(os.environ.get("LORA_STUDY_CACHE") or Path.home() / ".cache" / "lora-study")


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """Each session builds its own cache (tiny models, parsed corpora, base features), so tests never read what an
    older version of the code left behind; the converted SmolLM2 checkpoint is the exception (``smollm2``)."""
    session = tmp_path_factory.mktemp("cache")
    os.environ["LORA_STUDY_CACHE"] = str(session)
    _link_smollm2(session)


def _link_smollm2(session: Path) -> bool:
    from lora_study.models.gguf import SMOLLM2_DIR
    shared, link = USER_CACHE / SMOLLM2_DIR, session / SMOLLM2_DIR
    if (shared / "model.safetensors").exists() and not link.exists():
        link.symlink_to(shared, target_is_directory=True)
    return link.exists()


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The float32 SmolLM2 checkpoint converted from the packaged GGUF file. It depends on that file alone and takes
    about 30 s to build, so it is built once into the user's cache (``$LORA_STUDY_CACHE`` or ~/.cache/lora-study,
    where the suite itself keeps it) and linked into every later session's cache."""
    from lora_study.models.gguf import smollm2_path
    session = Path(os.environ["LORA_STUDY_CACHE"])
    if not _link_smollm2(session):
        os.environ["LORA_STUDY_CACHE"] = str(USER_CACHE)
        try:
            smollm2_path()
        finally:
            os.environ["LORA_STUDY_CACHE"] = str(session)
        assert _link_smollm2(session)
    return smollm2_path()


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
    from lora_study.run.runner import execute

    cfg = compose(list(base) + list(overrides))
    (out / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    return execute(cfg, RunDir(out)), cfg


def cli(*args, cwd=None, timeout=600):
    import subprocess
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ})


STUDY_ARGS = TINY + ["study.ranks=[1,2,4]", "train.max_steps=12", "optim.lr=1e-3", "study.lr={none:1e-2,full:1e-3,lora:5e-3}",
                     "heldout.n_train=200", "heldout.n_test=200", "heldout.n_drift=40", "heldout.max_length=32",
                     "heldout.every=6"]  # probes at step 6 and 12, where validation runs too: two checkpoints

# a learning-rate search's evidence, as study.json carries it ({key: {lr: validation score}}), for the report's heatmap
LR_EVIDENCE = {"none": {"0.01": 0.52, "0.1": 0.55}, "full": {"0.0001": 0.58, "0.001": 0.61, "0.01": 0.5},
               "lora_r1": {"0.001": 0.51, "0.005": 0.56, "0.05": 0.53}, "lora_r4": {"0.001": 0.54, "0.005": 0.57}}

# ---- a task the tiny model can learn ------------------------------------------------------------
# Short texts of filler words with one cue word deciding the label. A 16-wide random BERT learns it within a few
# dozen steps when all its weights train, and only partly with a rank-1 or rank-4 update: so full finetuning beats
# the frozen base, LoRA lies between, and the analyses have gains, truncation differences and correlations to show.
CUES = {1: ("good", "great", "excellent", "superb", "wonderful", "brilliant", "lovely", "fine"),
        0: ("bad", "awful", "terrible", "poor", "dreadful", "horrible", "weak", "boring")}
FILLER = ("the", "a", "film", "story", "it", "was", "and", "with", "of", "scene", "actor", "plot", "music", "very",
          "quite", "this", "that", "in", "on", "some", "time", "end", "part", "show", "cast", "one", "two", "day",
          "night", "city", "house", "man", "woman", "book", "song", "long", "short", "old", "new", "first", "last")


def write_cue_task(path: Path, rows: int = 1200, seed: int = 0, filler=(1, 3)) -> Path:
    """A CSV (text, label) of ``rows`` texts: 1 to 3 filler words with one cue word of the label's list at a random
    place; labels alternate, so the classes are balanced. Deterministic in ``seed``."""
    import csv
    import random
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(rows):
            label = i % 2
            words = [rng.choice(FILLER) for _ in range(rng.randint(*filler))]
            words.insert(rng.randint(0, len(words)), rng.choice(CUES[label]))
            w.writerow([" ".join(words), label])
    return path


def cue_task_args(path: Path) -> list:
    """Overrides that train on the cue task at ``path``: 200 test and 100 validation examples, uncapped."""
    return ["task=files", f"task.train_file={path}", "task.n_test=200", "task.n_validation=100",
            "task.max_eval_examples=null"]


@pytest.fixture(scope="session")
def cue_task(tmp_path_factory) -> list:
    """The overrides of the learnable cue task (its CSV written once per session)."""
    return cue_task_args(write_cue_task(tmp_path_factory.mktemp("cue") / "cues.csv"))


# the shared tiny study: a budget at which full finetuning learns the cue task and LoRA learns it partly
# (validation and held-out probes at steps 30 and 60: two checkpoints for learning vs forgetting over training)
LEARN = ["train.max_steps=60", "train.batch_size=16", "train.eval_every=30", "heldout.every=30", "study.ranks=[1,2,4]",
         "study.lr={none:1e-2,full:1e-2,lora:5e-2}"]


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory, cue_task):
    """A tiny-model study of the cue task (base, full FT, LoRA r = 1, 2, 4), made once per test session in this
    process; copy before changing it."""
    root = tmp_path_factory.mktemp("studies")
    assert study_in_process(*TINY, *cue_task, *LEARN, f"study.root={root}", "study.name=tiny") == 0
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


# ---- planted matrices with known singular values (the linear-algebra and spectral tests) ------------
def orthonormal(n: int, r: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64)).Q


def planted(m: int, n: int, k: int, noise: float, seed: int = 0) -> torch.Tensor:
    """Rank-k U V^T with random orthonormal factors and unit singular values, plus Gaussian noise."""
    gen = torch.Generator().manual_seed(seed + 1)
    return orthonormal(m, k, seed) @ orthonormal(n, k, seed + 7).T + noise * torch.randn(
        m, n, generator=gen, dtype=torch.float64)


def exact(M) -> np.ndarray:
    return np.linalg.svd(np.asarray(M, dtype=np.float64), compute_uv=False)
