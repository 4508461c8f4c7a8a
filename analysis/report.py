"""lora-study-report <study-dir>: report.md, a self-contained report.html (figures embedded), every figure
as PNG and PDF, and the tables as CSV, Markdown and LaTeX, under <study>/report/.

Every number comes from the study's artifacts; each figure gets a "findings" paragraph that states,
from those numbers, whether the study supports the claim of the low-rank hypothesis it tests."""
from __future__ import annotations

import argparse
import base64
import html
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd

from lora_study import __version__
from lora_study.artifacts import ArtifactError

from .cli import analyze, write_table
from .findings import (energy_finding, forgetting_finding, intruder_finding, latency_finding, memory_finding, rank_finding,
                       similarity_finding)
from .intrinsic import finding as intrinsic_finding, format_summary as format_intrinsic
from .study import Study, label_key, load_study
from .tradeoff import format_tradeoff, to_latex, to_markdown, tradeoff


class Section:
    def __init__(self, title: str, paragraphs: List[str], figure: Optional[str] = None,
                 table: Optional[str] = None):
        self.title, self.paragraphs, self.figure, self.table = title, paragraphs, figure, table


def build_sections(study: Study, result: Dict, tables_fmt: Dict[str, pd.DataFrame]) -> List[Section]:
    t = result["tables"]
    figs = set(result["figures"])
    runs = t["runs"]
    methods = set(runs.method) if not runs.empty else set()
    missing = [name for m, name in (("none", "the frozen base"), ("full", "full finetuning"), ("lora", "LoRA"))
               if m not in methods]
    sections = [Section("Tradeoff table", [
        "One row per method, mean over seeds (± sample standard deviation where there are several). "
        "Every column is measured in the runs: optimizer state is read from AdamW's state tensors, latency is "
        "the median of repeated timings at max_length tokens, storage is the bytes a user ships per task.",
        memory_finding(result["tradeoff"]),
        *([f"This study has no run of {', '.join(missing)}: the rows and comparisons that need it are absent."]
          if missing else []),
    ], table="tradeoff")]
    sections.append(Section("Does LoRA reach full finetuning, and does the update survive truncation?",
                            [rank_finding(runs, t["truncation"])], figure="truncation" if "truncation" in figs else None))
    if "spectra" in figs:
        sections.append(Section("Spectra of ΔW", [energy_finding(t["spectra"])], figure="spectra"))
        sections.append(Section("Cumulative energy", [
            "Cumulative energy Σ_{i≤k} σ_i² / Σ σ_i² of each ΔW; the dotted line marks 90 %."], figure="cumulative_energy"))
        sections.append(Section("Rank at 90 % energy, layer × module", [
            "Rank at 90 % energy of each ΔW of the full finetune (or the first run with saved spectra)."],
            figure="rank90_heatmap"))
    if "similarity" in figs:
        sections.append(Section("Subspace similarity between LoRA ranks",
                                [similarity_finding(t["similarity"])], figure="similarity", table="similarity"))
    if "intruders" in figs:
        sections.append(Section("Intruder dimensions", [intruder_finding(t["intruders"])], figure="intruders"))
    if not t["amplification"].empty:
        sections.append(Section("Amplification (Hu et al., Table 7)", [
            "‖UᵀWVᵀ‖_F with U, V the top-r left/right singular vectors of ΔW (ΔW directions), of W itself, and random "
            "orthonormal ones, on the last layer; factor = ‖ΔW‖_F / ‖UᵀWVᵀ‖_F. A large factor means ΔW amplifies "
            "directions that W barely uses."], table="amplification"))
    sections.append(Section("Merge and latency", [latency_finding(result["tradeoff"])]))
    fig_f = "pareto" if "pareto" in figs else None
    sections.append(Section("Forgetting on held-out tasks",
                            [forgetting_finding(t["forgetting"], result["meta"].get("intruders_vs_forgetting", {}))],
                            figure="forgetting_vs_rank" if "forgetting_vs_rank" in figs else None))
    if fig_f:
        sections.append(Section("Learning vs forgetting", [
            "Each point is one run: x is its test-accuracy gain over the frozen base (same seed), y its mean "
            "held-out forgetting. Biderman et al. found LoRA and full finetuning on roughly one Pareto curve."],
            figure=fig_f))
    if "subspace" not in methods:
        sections.append(Section("Intrinsic dimension", [
            "Not measured in this study: it holds no subspace runs (see experiment=intrinsic_dim)."]))
    else:
        sections.append(Section("Intrinsic dimension (Li et al. 2018; Aghajanyan et al. 2020)", [
            "Test accuracy of subspace training θ = θ0 + P θ_d (DID) and SAID (per-layer scales from the same d) "
            "against d, the trainable numbers besides the head; d90 is the smallest d reaching 90 % of full "
            "finetuning's accuracy, d90-gain 90 % of its gain over the frozen base, both interpolated on log d.",
            intrinsic_finding(t["intrinsic_dim_summary"], study.describe())],
            figure="intrinsic_dim" if "intrinsic_dim" in figs else None, table="intrinsic_dim"))
    return sections


def _header(study: Study) -> List[str]:
    d = study.describe()
    b = d["budget"]
    v = d["versions"]
    lines = [f"- **model**: {d['model']}", f"- **task**: {d['task']}",
             f"- **budget**: {b.get('max_steps')} steps × batch {b.get('batch_size')} (× {b.get('grad_accum')} accumulation),"
             f" max_length {b.get('max_length')}",
             f"- **seeds**: {', '.join(map(str, d['seeds']))}", f"- **device**: {d['device']} ({d['precision']})",
             f"- **suite**: lora-study {__version__} (torch {v.get('torch')}, transformers {v.get('transformers')}, "
             f"peft {v.get('peft')})", f"- **runs**: {d['runs']} complete"]
    lr = study.index.get("lr_search")
    lrs = sorted({(r.label, r.lr) for r in study.runs}, key=lambda x: label_key(x[0]))
    lines.append("- **learning rates**: " + ", ".join(f"{k} {v:g}" for k, v in lrs) +
                 (" (chosen by a validation sweep in this study)" if lr else " (the study's configured values)"))
    if d["skipped"]:
        lines.append("- **skipped runs**: " + "; ".join(f"{k} ({v})" for k, v in d["skipped"].items()))
    return lines


def write_markdown(study: Study, sections: List[Section], tables_fmt, out: Path) -> str:
    md = [f"# lora-study report: {study.name}", "", *_header(study), ""]
    for s in sections:
        md += [f"## {s.title}", ""]
        md += [p for para in s.paragraphs for p in (para, "")]
        if s.figure:
            md += [f"![{s.title}](figures/{s.figure}.png)", ""]
        if s.table and s.table in tables_fmt:
            md += [to_markdown(tables_fmt[s.table]), ""]
    text = "\n".join(md)
    (out / "report.md").write_text(text)
    return text


def _inline(text: str) -> str:
    """Escape, then render **bold** as in the Markdown."""
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def write_html(study: Study, sections: List[Section], tables_fmt, out: Path) -> None:
    """One file, no external references: figures are embedded as base64 PNG data URIs."""
    css = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45;color:#222}"
           "table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px}"
           "th{background:#f3f3f3}img{max-width:100%}")
    body = [f"<h1>lora-study report: {html.escape(study.name)}</h1>", "<ul>"]
    body += [f"<li>{_inline(line[2:])}</li>" for line in _header(study)] + ["</ul>"]
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        body += [f"<p>{_inline(p)}</p>" for p in s.paragraphs]
        if s.figure:
            data = base64.b64encode((out / "figures" / f"{s.figure}.png").read_bytes()).decode()
            body.append(f'<img alt="{html.escape(s.title)}" src="data:image/png;base64,{data}">')
        if s.table and s.table in tables_fmt:
            body.append(tables_fmt[s.table].to_html(index=False, border=0, escape=True))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>lora-study report: {html.escape(study.name)}"
            f"</title><style>{css}</style></head><body>{''.join(body)}</body></html>")
    (out / "report.html").write_text(page)


def report(study: Study, out: Path) -> Path:
    result = analyze(study, study.path / "analysis")
    t = result["tables"]
    result["tradeoff"] = tradeoff(t["runs"], t["spectra"], t["truncation"])
    if out.exists():
        shutil.rmtree(out)
    (out / "figures").mkdir(parents=True)
    (out / "tables").mkdir()
    for name in result["figures"]:
        for ext in ("png", "pdf"):
            shutil.copy(study.path / "analysis" / f"{name}.{ext}", out / "figures" / f"{name}.{ext}")
    tables_fmt = {"tradeoff": format_tradeoff(result["tradeoff"]) if not result["tradeoff"].empty else pd.DataFrame()}
    if "intrinsic_dim_summary" in t:
        tables_fmt["intrinsic_dim"] = format_intrinsic(t["intrinsic_dim_summary"])
    if not t["similarity"].empty:
        tables_fmt["similarity"] = t["similarity"].round(3)
    if not t["amplification"].empty:
        a = t["amplification"]
        tables_fmt["amplification"] = a[["label", "kind", "layer", "r", "delta_dirs", "w_dirs", "random_dirs",
                                         "w_norm", "dw_norm", "factor"]].round(3)
    write_table(result["tradeoff"], out / "tables", "tradeoff")
    for name, df in tables_fmt.items():
        if df.empty:
            continue
        (out / "tables" / f"{name}.md").write_text(to_markdown(df) + "\n")
        (out / "tables" / f"{name}.tex").write_text(to_latex(df, caption=f"{name}: {study.caption()}"))
        df.to_csv(out / "tables" / f"{name}_formatted.csv", index=False)
    sections = build_sections(study, result, tables_fmt)
    write_markdown(study, sections, tables_fmt, out)
    write_html(study, sections, tables_fmt, out)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="lora-study-report", description=__doc__.split("\n\n")[0])
    ap.add_argument("study", help="a study directory (holding study.json)")
    ap.add_argument("--out", help="output directory (default: <study>/report)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        study = load_study(a.study)
        if not study.runs:
            raise ArtifactError(f"{a.study} has no complete runs to report on.")
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    out = report(study, Path(a.out) if a.out else study.path / "report")
    for member, why in study.skipped.items():
        print(f"skipped {member}: {why}", file=sys.stderr)
    print(f"report of {study.name} in {time.perf_counter() - t0:.1f} s -> {out / 'report.html'}")


if __name__ == "__main__":
    main()
