"""lora-study-analyze <study-dir>: tables (CSV and parquet) and figures (PNG and PDF) under <study>/analysis/,
every measure's in ``lora_study.analysis.measures.MEASURES``. Everything it writes is the same byte for byte on every run
over the same study but ``timings.json`` (how long the analysis took)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Iterable, Optional

from lora_study.artifacts import ArtifactError, write_json

from .loader import Study, load_study
from .measures import Context, Measure
from .plotting import save
from .tables import write_table

TIMINGS = "timings.json"  # the one file whose content changes from run to run


def analyze(study: Study, out: Path, measures: Optional[Iterable[Measure]] = None) -> Context:
    """Compute every measure's tables and draw its figures into ``out``; returns the context holding them, with
    the figure names and the analysis.json record (``ctx.meta``)."""
    t0 = time.perf_counter()
    ctx = Context(study, measures)
    tables = ctx.all_tables()
    for name, df in tables.items():
        write_table(df, out, name)
    for m in ctx.measures:
        for name, fig in m.figures(ctx).items():
            save(fig, out, name)
            ctx.figures.append(name)
    meta = {**study.describe(), "tables": list(tables), "figures": list(ctx.figures)}
    for m in ctx.measures:
        meta.update(m.meta(ctx))
    write_json(out / "analysis.json", meta)
    ctx.meta = {**meta, "analysis_seconds": round(time.perf_counter() - t0, 2)}
    write_json(out / TIMINGS, {"analysis_seconds": ctx.meta["analysis_seconds"]})
    return ctx


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="lora-study-analyze", description=__doc__)
    ap.add_argument("study", help="a study directory (holding study.json)")
    ap.add_argument("--out", help="output directory (default: <study>/analysis)")
    a = ap.parse_args(argv)
    try:
        study = load_study(a.study)
        if not study.runs:
            raise ArtifactError(f"{a.study} has no complete runs to analyse.")
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    out = Path(a.out) if a.out else study.path / "analysis"
    ctx = analyze(study, out)
    for member, why in study.skipped.items():
        print(f"skipped {member}: {why}", file=sys.stderr)
    print(f"analysed {len(study.runs) - len(study.skipped)} runs of {study.name} in "
          f"{ctx.meta['analysis_seconds']} s: {len(ctx.meta['tables'])} tables, {len(ctx.figures)} figures -> {out}")


if __name__ == "__main__":
    main()
