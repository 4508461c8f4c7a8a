"""One process of a multi-process run, started by torchrun from ``lora_study.run.distributed.launch``:

    python -m lora_study.run.worker <resolved config.yaml> <run directory>

It joins the process group and runs ``run.execute`` like a one-process run; rank 0 alone writes the run
directory. ``@record`` puts an exception's type and message in torchrun's error file, from which the launching
command reports why the run failed.
"""
from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import record


@record
def main() -> None:
    from omegaconf import OmegaConf

    from ..artifacts import RunDir
    from ..device import resolve_device
    from .distributed import process_group
    from .runner import execute

    config, run_dir = sys.argv[1:3]
    cfg = OmegaConf.load(config)
    with process_group(resolve_device(cfg.train.device)) as device:
        execute(cfg, RunDir(run_dir), device=device)


if __name__ == "__main__":
    main()
