"""Metric logging: always to the run's metrics.jsonl; also to Weights & Biases with ``logger=wandb``."""
from __future__ import annotations

import os
from typing import Any, Dict

from .artifacts import RunDir


class Logger:
    def __init__(self, out: RunDir, wandb_run: Any = None):
        self.out = out
        self.wandb_run = wandb_run

    def log(self, record: Dict[str, Any]) -> None:
        self.out.log(record)
        if self.wandb_run is not None:
            split = record.get("split", "train")
            self.wandb_run.log({f"{split}/{k}": v for k, v in record.items() if k not in ("step", "split")},
                               step=record.get("step"))

    def finish(self, summary: Dict[str, Any]) -> None:
        if self.wandb_run is not None:
            flat = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))}
            flat.update({f"metrics/{k}": v for k, v in (summary.get("metrics") or {}).items()})
            self.wandb_run.summary.update(flat)
            self.wandb_run.finish()


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
