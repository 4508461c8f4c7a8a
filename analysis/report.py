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
from typing import Dict, List

import pandas as pd

from lora_study import __version__
from lora_study.artifacts import ArtifactError

from .analyze import analyze
from .loader import Study, label_key, load_study
from .measures import Context, Section
from .tables import to_markdown, write_formatted, write_table


def build_sections(ctx: Context) -> List[Section]:
    """Every measure's sections, in the order of ``MEASURES``."""
    return [s for m in ctx.measures for s in m.sections(ctx)]


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
    lrs = list(dict.fromkeys((r.label, r.lr) for r in sorted(study.runs, key=lambda r: (label_key(r), r.lr))))
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
    ctx = analyze(study, study.path / "analysis")
    if out.exists():
        shutil.rmtree(out)
    (out / "figures").mkdir(parents=True)
    (out / "tables").mkdir()
    for name in ctx.figures:
        for ext in ("png", "pdf"):
            shutil.copy(study.path / "analysis" / f"{name}.{ext}", out / "figures" / f"{name}.{ext}")
    tables_fmt: Dict[str, pd.DataFrame] = {}
    for m in ctx.measures:
        tables_fmt.update(m.formatted(ctx))
        for name in m.report_tables:
            write_table(ctx.table(name), out / "tables", name)
    for name, df in tables_fmt.items():
        if not df.empty:
            write_formatted(df, out / "tables", name, caption=f"{name}: {study.caption()}")
    sections = build_sections(ctx)
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
