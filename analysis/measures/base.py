"""The measure interface. A measure tests one claim of the low-rank hypothesis on a study: it computes its
tables from the artifacts, draws its figures, and states its finding in report sections. ``lora-study-analyze``
writes every measure's tables and figures; ``lora-study-report`` adds their sections, in the order of
``lora_study.analysis.measures.MEASURES``.

A measure reads the tables it depends on through the ``Context`` (``ctx.table("spectra")``), which computes a
table the first time it is asked for, whatever the order of the list; ``runs`` (one row per run) is always there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

import pandas as pd

from lora_study.artifacts import ArtifactError

from ..loader import Run, Study


@dataclass
class Section:
    """One section of the report: a title, paragraphs of findings, and optionally a figure and a formatted table
    (by name). The report numbers figures and tables in order and prints ``caption`` under the figure (one
    sentence: what to look at, and the scope: which matrices, which seeds) and ``table_caption`` above the table.
    ``level`` 2 is a claim (a top-level section of the report), 3 a part of the claim before it."""
    title: str
    paragraphs: List[str]
    figure: Optional[str] = None
    table: Optional[str] = None
    caption: str = ""
    table_caption: str = ""
    level: int = 2


class Measure:
    """One measured claim. Subclasses set ``name`` and ``tables`` and override what they give."""

    name: str = ""
    tables: Sequence[str] = ()  # the tables ``compute`` may return, written by lora-study-analyze
    report_tables: Sequence[str] = ()  # numeric tables the report ships beside their formatted versions

    def compute(self, ctx: "Context") -> Dict[str, pd.DataFrame]:
        """Its tables by name (some of ``tables``; one absent when the study cannot give it)."""
        return {}

    def figures(self, ctx: "Context") -> Dict[str, object]:
        """Its figures (matplotlib Figures) by file name; the ones the study's data cannot support are left out."""
        return {}

    def sections(self, ctx: "Context") -> List[Section]:
        """Its report sections, which may name its figures (if drawn: ``ctx.drew``) and formatted tables."""
        return []

    def formatted(self, ctx: "Context") -> Dict[str, pd.DataFrame]:
        """Tables of strings shown in the report, by name."""
        return {}

    def meta(self, ctx: "Context") -> Dict[str, object]:
        """Numbers recorded in analysis.json beside the tables."""
        return {}

    def claims(self, ctx: "Context") -> list:
        """Claims this measure adds (``analysis.claims.Claim``) beside the built-in ones of ``verdicts``; they join
        the verdict or accounting table and ``claims.json`` like the rest."""
        return []


class Context:
    """A study and its measures' tables, each computed once on first request; the names of the figures drawn."""

    def __init__(self, study: Study, measures: Optional[Iterable[Measure]] = None):
        if measures is None:
            from . import MEASURES
            measures = MEASURES
        self.study = study
        study.check_deltas()
        self.measures: List[Measure] = list(measures)
        self._tables: Dict[str, pd.DataFrame] = {"runs": study.runs_frame()}
        self._done: set = set()
        self._computing: List[str] = []
        self.figures: List[str] = []  # figure names drawn so far (lora-study-analyze fills it)
        self.meta: Dict[str, object] = {}  # what lora-study-analyze recorded in analysis.json

    def _owner(self, name: str) -> Measure:
        for m in self.measures:
            if name in m.tables:
                return m
        known = ["runs"] + [t for m in self.measures for t in m.tables]
        raise KeyError(f"no measure computes a table {name!r}; the tables are {', '.join(known)}.")

    def _compute(self, m: Measure) -> None:
        if m.name in self._done:
            return
        if m.name in self._computing:
            raise RuntimeError(f"measures {' -> '.join(self._computing + [m.name])} depend on each other's tables.")
        self._computing.append(m.name)
        try:
            self._tables.update(m.compute(self))
        finally:
            self._computing.pop()
        self._done.add(m.name)

    def has(self, name: str) -> bool:
        """Whether the study gives table ``name`` (computing it if needed)."""
        if name not in self._tables:
            self._compute(self._owner(name))
        return name in self._tables

    def table(self, name: str) -> pd.DataFrame:
        """Table ``name``; an empty frame if its measure could not compute it for this study."""
        return self._tables[name] if self.has(name) else pd.DataFrame()

    def all_tables(self) -> Dict[str, pd.DataFrame]:
        """Every table the study gives: runs, then each measure's in list order."""
        for m in self.measures:
            self._compute(m)
        names = ["runs"] + [t for m in self.measures for t in m.tables]
        return {n: self._tables[n] for n in names if n in self._tables}

    def drew(self, figure: str) -> bool:
        return figure in self.figures

    def claims(self) -> list:
        """Every claim of the study (``analysis.claims.Claim``), built once from the measures' tables."""
        if not hasattr(self, "_claims"):
            from .verdicts import all_claims
            self._claims = all_claims(self)
        return self._claims

    def claim(self, key: str):
        """The claim with ``key``, or None when the study has none."""
        return next((c for c in self.claims() if c.key == key), None)

    def sentences(self, *prefixes: str) -> List[str]:
        """The sentences of the claims whose key starts with one of ``prefixes`` (each as its record renders it),
        leaving out those the study could not measure."""
        return [c.sentence() for c in self.claims() if c.key.startswith(prefixes) and c.verdict != "not measured"]


def seeds_phrase(seeds) -> str:
    """'seed 0' or 'seeds 0, 1, 2': the seeds a figure or table covers, for its caption."""
    seeds = sorted({int(s) for s in seeds})
    return f"seed {seeds[0]}" if len(seeds) == 1 else "seeds " + ", ".join(map(str, seeds))


def per_run(study: Study, runs: Iterable[Run], fn) -> List[dict]:
    """Rows of ``fn(run)`` for every run; a run whose artifacts cannot be read (a corrupt file, a module the base
    model lacks) is listed in ``study.skipped`` with the reason, and the others go on."""
    rows: List[dict] = []
    for r in runs:
        if r.member in study.skipped:
            continue
        try:
            rows += fn(r)
        except ArtifactError as e:
            study.skipped[r.member] = str(e)
    return rows


def delta_runs(study: Study) -> List[Run]:
    """Runs with a saved ΔW that the analysis has not skipped."""
    return [r for r in study.runs if r.saved.get("delta") and r.member not in study.skipped]
