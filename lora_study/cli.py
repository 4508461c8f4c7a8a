"""Console entry points. Only this module (and the study sweeper plugin) touches Hydra.

    lora-study-train method=lora method.rank=8       one run into results/runs/<method>_<time>/
    lora-study-study study.ranks=[4,64]              a paired study into results/studies/<name>/
    lora-study-train train.processes=2 ...           one run over 2 processes (torchrun; lora_study.run.distributed)
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, conf_dir, register, validate

CONF_DIR = str(conf_dir())  # lora_study/conf installed, the repository's conf/ in a checkout
register()
# conf/hydra/launcher/slurm.yaml scales a job's CPUs and memory with train.processes
OmegaConf.register_new_resolver("multiply", lambda a, b: int(a) * int(b), replace=True)


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    return HydraConfig.get().mode == RunMode.MULTIRUN


def run_task(cfg: DictConfig) -> dict:
    """The Hydra task: one run into Hydra's output directory for this job. With ``train.processes > 1`` the run
    starts that many workers under torchrun, which read this job's resolved config and write into the same
    directory (rank 0 only): one run directory, and Hydra touched by this process alone."""
    from hydra.core.hydra_config import HydraConfig

    from .artifacts import RunDir
    from .run.distributed import RunFailed, launch
    from .run.runner import execute
    from .run.train import Diverged

    out = RunDir(HydraConfig.get().runtime.output_dir)
    try:
        if cfg.train.processes > 1:
            validate(cfg)  # before any worker starts (execute validates on its own)
            summary = launch(cfg, out)
        else:
            summary = execute(cfg, out)
    except (ConfigError, Diverged, RunFailed) as e:
        if _is_multirun():
            raise  # the study sweeper records the failure and goes on with the other members
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    metrics = summary.get("metrics", {})
    shown = [f"test {k[len('test_'):]} {metrics[k]:.4f}" for k in ("test_accuracy", "test_perplexity")
             if metrics.get(k) is not None]
    print(f"{summary['method']}: {', '.join(shown) or 'no test metric'} -> {out.path}")
    learned = summary.get("learning") or {}
    if learned.get("did_not_learn"):
        from .run.learning import sentence
        print(f"warning: {sentence(summary.get('member') or out.path.name, learned)}", file=sys.stderr)
    return {"member": summary.get("member"), "test_accuracy": metrics.get("test_accuracy")}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _train(cfg: DictConfig) -> None:
    run_task(cfg)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="study")
def _study(cfg: DictConfig) -> None:
    run_task(cfg)


def train_main() -> None:
    _train()


def study_main() -> None:
    _study()
