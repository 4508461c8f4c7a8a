"""Analysis: saved run artifacts -> measurements, tables and figures (pure maths; never trains).

    from lora_study.analysis import load_study
    study = load_study("results/studies/rank_sweep")

The maths (``spectral``, ``subspace``, ``dimension``) works on tensors and numbers; ``measures`` holds one module
per measured claim, in report order; ``cli`` (lora-study-analyze) and ``report`` (lora-study-report) run them.
"""
from .loader import Run, Study, load_study

__all__ = ["Run", "Study", "load_study"]
