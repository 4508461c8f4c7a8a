"""lora-study-analyze <study-dir>: tables (CSV and parquet) and figures (PNG and PDF) under <study>/analysis/."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict

import pandas as pd

from lora_study.artifacts import ArtifactError, write_json

from . import figures, forgetting, intrinsic, measures
from .study import Study, load_study


def _pairs(ranks) -> list:
    """LoRA rank pairs for φ: (smallest, largest) and, as Hu et al., (8, 64) when both exist."""
    if len(ranks) < 2:
        return []
    pairs = [(ranks[0], ranks[-1])]
    if 8 in ranks and 64 in ranks and (8, 64) not in pairs:
        pairs.append((8, 64))
    return pairs


def write_table(df: pd.DataFrame, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / f"{name}.csv", index=False)
    df.to_parquet(out / f"{name}.parquet", index=False)


def analyze(study: Study, out: Path) -> Dict[str, object]:
    """Compute every table and figure of a study; returns the tables by name and the figure names."""
    t0 = time.perf_counter()
    tables = {"runs": study.runs_frame(), "spectra": measures.spectral_table(study),
              "truncation": measures.truncation_table(study)}
    ranks = study.lora_ranks()
    pairs = _pairs(ranks)
    tables["similarity"] = measures.similarity_table(study, pairs)
    tables["amplification"] = measures.amplification_table(study)
    tables["intruders"] = measures.intruder_table(study)
    tables["full_energy_in_lora"] = measures.full_energy_in_lora(study)
    tables["forgetting"] = forgetting.forgetting_table(tables["runs"])
    if study.by_method("subspace"):
        tables["intrinsic_dim"] = intrinsic.intrinsic_table(study, tables["runs"])
        tables["intrinsic_dim_summary"] = intrinsic.summarize(tables["intrinsic_dim"])
    for name, df in tables.items():
        write_table(df, out, name)
    figs = []
    if not tables["spectra"].empty:
        figs.append(("spectra", figures.spectra(study)))
        figs.append(("cumulative_energy", figures.spectra(study, cumulative=True)))
        fulls = [r.member for r in study.by_method("full") if r.member in set(tables["spectra"].member)]
        target = fulls[0] if fulls else tables["spectra"].member.iloc[0]
        figs.append(("rank90_heatmap", figures.rank90_heatmap(study, tables["spectra"], target)))
    if pairs:
        seed = min(r.seed for r in study.by_method("lora"))
        small, large = pairs[-1]
        try:
            figs.append(("similarity", figures.similarity_heatmaps(study, measures.similarity(study, small, large, seed),
                                                                    small, large)))
        except ArtifactError as e:
            print(f"warning: no similarity figure ({e})", file=sys.stderr)
    if not tables["intruders"].empty:
        figs.append(("intruders", figures.intruders(study, tables["intruders"])))
    if not tables["forgetting"].empty:
        figs.append(("forgetting_vs_rank", forgetting.forgetting_vs_rank(study, tables["forgetting"])))
        figs.append(("pareto", forgetting.pareto(study, tables["forgetting"])))
    if not tables["runs"].empty:
        figs.append(("truncation", figures.truncation(study, tables["truncation"], tables["runs"])))
    if "intrinsic_dim" in tables:
        figs.append(("intrinsic_dim", intrinsic.figure(study, tables["runs"], tables["intrinsic_dim"])))
    names = []
    for name, fig in figs:
        figures.save(fig, out, name)
        names.append(name)
    meta = {**study.describe(), "tables": list(tables), "figures": names,
            "intruders_vs_forgetting": forgetting.intruder_correlation(tables["forgetting"], tables["intruders"]),
            "analysis_seconds": round(time.perf_counter() - t0, 2)}
    write_json(out / "analysis.json", meta)
    return {"tables": tables, "figures": names, "meta": meta}


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
    result = analyze(study, out)
    for member, why in study.skipped.items():
        print(f"skipped {member}: {why}", file=sys.stderr)
    print(f"analysed {len(study.runs) - len(study.skipped)} runs of {study.name} in "
          f"{result['meta']['analysis_seconds']} s: {len(result['tables'])} tables, {len(result['figures'])} figures "
          f"-> {out}")


if __name__ == "__main__":
    main()
