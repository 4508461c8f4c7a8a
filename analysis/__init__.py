"""Analysis: saved run artifacts -> measurements, tables and figures (pure maths; never trains).

    from analysis import load_study
    study = load_study("results/studies/rank_sweep")
"""
from .study import Run, Study, load_study

__all__ = ["Run", "Study", "load_study"]
