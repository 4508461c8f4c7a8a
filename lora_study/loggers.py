"""Metric logging: always to the run's metrics.jsonl; also to Weights & Biases with ``logger=wandb``.

In wandb a study is a group (``logger.group``, default the study name) with one run per member (named by its
member id). Each logged record becomes ``<split>/<metric>`` at its training step (``train/loss``,
``validation/accuracy``, ``test/accuracy``, ``heldout/...``); the run's config is the composed config; the run's
summary holds every scalar of ``summary.json``, nested fields flattened with ``/`` (``metrics/test_accuracy``,
``params/trainable``, ``memory/optimizer_state_bytes``, ``time/mean_step_s``, ``storage/bytes``,
``latency/...``, ``heldout/forgetting_mean``): the columns of the study's tradeoff table. ``logger.mode`` (else
``WANDB_MODE``, else offline) picks online, offline (files under ``<run>/wandb/``, upload later with
``wandb sync``) or disabled (nothing written).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

from .artifacts import RunDir


class Logger:
    """Logs to ``out``'s metrics.jsonl (nowhere when ``out`` is None: the other processes of a multi-process
    run) and to a wandb run when one is given."""

    def __init__(self, out: Optional[RunDir], wandb_run: Any = None):
        self.out = out
        self.wandb_run = wandb_run

    def log(self, record: Dict[str, Any]) -> None:
        if self.out is not None:
            self.out.log(record)
        if self.wandb_run is not None:
            split = record.get("split", "train")
            self.wandb_run.log({f"{split}/{k}": v for k, v in record.items() if k not in ("step", "split")},
                               step=record.get("step"))

    def finish(self, summary: Dict[str, Any]) -> None:
        if self.wandb_run is not None:
            self.wandb_run.summary.update(flatten(summary))
            self.wandb_run.finish()


def flatten(summary: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Every scalar of a nested summary, keyed by its path joined with '/' (lists are left out)."""
    flat: Dict[str, Any] = {}
    for k, v in summary.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + "/"))
        elif isinstance(v, (int, float, str, bool)):
            flat[key] = v
    return flat


def make_logger(cfg, out: RunDir) -> Logger:
    if cfg.logger.name != "wandb":
        return Logger(out)
    try:
        import wandb
    except ImportError as e:
        from .schema import ConfigError
        raise ConfigError("logger=wandb needs the wandb package; install it with `pip install 'lora-study[wandb]'`.") from e
    from omegaconf import OmegaConf
    mode = cfg.logger.mode or os.environ.get("WANDB_MODE", "offline")
    run = wandb.init(project=cfg.logger.project, group=cfg.logger.group or cfg.study.name,
                     name=cfg.run.member or None, dir=str(out.path), mode=mode,
                     config=OmegaConf.to_container(cfg, resolve=True), reinit="finish_previous")
    return Logger(out, run)
