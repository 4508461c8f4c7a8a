"""lora-study-report <study-dir>: report.md, a self-contained report.html (figures embedded), every figure
as PNG and PDF, and every table as CSV, Markdown and LaTeX, under <study>/report/.

Every number comes from the study's artifacts; each section states, from those numbers, whether the study supports
the claim of the low-rank hypothesis it tests. The document opens with the study, a list of contents and the
verdict table, then one section per claim; figures and tables are numbered, each figure with a one-sentence
caption (what to look at, and the scope). Two runs over the same study write the same bytes, but
``timings.json`` (how long the analysis and the report took) and the ``*_timings.csv`` tables (the runs' measured
times) hold what changes from run to run."""
from __future__ import annotations

import argparse
import base64
import html
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import pandas as pd

from lora_study import __version__
from lora_study.artifacts import ArtifactError, write_json

from . import claims, paired, plotting, readme
from .analyze import TIMINGS, analyze
from .loader import Study, label_key, load_study
from .measures import Context, Section
from .tables import generic_format, split_timings, to_markdown, write_formatted

CSS = (f"body{{font-family:sans-serif;max-width:{plotting.HTML_COLUMN_PX}px;margin:2em auto;padding:0 8px;"
       "line-height:1.45;color:#222;box-sizing:content-box}"
       "h2{margin-top:2em;border-bottom:1px solid #ddd}h3{margin-top:1.5em}"
       ".wrap{max-width:100%;overflow-x:auto;margin:0.5em 0 1.2em}"
       "table{border-collapse:collapse;font-size:12.5px}"
       "td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top;overflow-wrap:break-word;hyphens:manual}"
       "th{background:#f3f3f3;text-align:left;overflow-wrap:normal}td{text-align:left}"
       "figure{margin:1em 0 1.5em}img{max-width:100%;height:auto;display:block}"
       "figcaption,.tcap{font-size:14px;color:#333;margin:0.4em 0}"
       "nav ol{padding-left:1.4em}nav li{margin:0.1em 0}")


@dataclass
class Numbered:
    """The sections with their anchors and the numbers of their figures and tables."""
    sections: List[Section]
    anchors: List[str]
    figures: Dict[int, int]  # section index -> figure number
    tables: Dict[int, int]  # section index -> table number


def build_sections(ctx: Context) -> List[Section]:
    """Every measure's sections, in the order of ``MEASURES``."""
    return [s for m in ctx.measures for s in m.sections(ctx)]


def slug(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped (letters of any script kept), spaces to hyphens."""
    s = re.sub(r"[^\w\- ]", "", title.lower())
    return s.replace(" ", "-")


def number(sections: List[Section], tables_fmt: Dict[str, pd.DataFrame]) -> Numbered:
    anchors, seen, figs, tabs = [], {}, {}, {}
    for i, s in enumerate(sections):
        a = slug(s.title)
        n = seen.get(a, 0)
        seen[a] = n + 1
        anchors.append(a if n == 0 else f"{a}-{n}")
        if s.figure:
            figs[i] = len(figs) + 1
        if s.table and s.table in tables_fmt and not tables_fmt[s.table].empty:
            tabs[i] = len(tabs) + 1
    return Numbered(sections, anchors, figs, tabs)


def _caption(s: Section) -> str:
    return s.caption or s.title


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
    flagged = [r for r in study.runs if r.did_not_learn]
    lines.append("- **runs that did not learn**: " + ("; ".join(
        f"{r.member} ({'; '.join((r.summary.get('learning') or {}).get('reasons') or ['flagged'])})" for r in flagged)
        + " (complete and kept; every verdict that includes one says so)" if flagged else "none"))
    return lines


def design(study: Study, ctx: Context) -> str:
    """One line of what the study is: model, task, budget, seeds, test examples, margin."""
    d, reach = study.describe(), ctx.table("reach")
    b = d["budget"]
    n = f", {int(reach.examples.max()):,} test examples" if not reach.empty and "examples" in reach else ""
    return (f"{d['model']} on {d['task']}, {b.get('max_steps')} steps × batch {b.get('batch_size')}, seeds "
            f"{', '.join(map(str, d['seeds']))}{n}, equivalence margin ±{paired.margin(study):g}")


def _contents_md(num: Numbered) -> List[str]:
    md = ["## Contents", ""]
    for s, a in zip(num.sections, num.anchors):
        md.append(("  " if s.level > 2 else "") + f"- [{s.title}](#{a})")
    if num.figures:
        md += ["", "Figures: " + "; ".join(f"[Figure {n}](#{num.anchors[i]}) {num.sections[i].figure}"
                                          for i, n in num.figures.items()) + "."]
    return md + [""]


def write_markdown(study: Study, sections: List[Section], tables_fmt, out: Path) -> str:
    num = number(sections, tables_fmt)
    md = [f"# lora-study report: {study.name}", "", *_header(study), "", *_contents_md(num)]
    for i, s in enumerate(sections):
        md += [f"{'#' * s.level} {s.title}", ""]
        md += [p for para in s.paragraphs for p in (para, "")]
        if i in num.figures:
            n = num.figures[i]
            md += [f"![Figure {n}](figures/{s.figure}.png)", "", f"*Figure {n}. {_caption(s)}*", ""]
        if i in num.tables:
            md += [f"**Table {num.tables[i]}.** {s.table_caption or s.title}", "", to_markdown(tables_fmt[s.table]), ""]
    text = "\n".join(md)
    (out / "report.md").write_text(text)
    return text


def _inline(text: str) -> str:
    """Escape, then render **bold** as in the Markdown."""
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def _contents_html(num: Numbered) -> str:
    items, open_sub = [], False
    for s, a in zip(num.sections, num.anchors):
        link = f'<a href="#{a}">{html.escape(s.title)}</a>'
        if s.level > 2:
            items.append(("" if open_sub else "<ol>") + f"<li>{link}</li>")
            open_sub = True
        else:
            items.append(("</ol>" if open_sub else "") + ("</li>" if items else "") + f"<li>{link}")
            open_sub = False
    items.append(("</ol>" if open_sub else "") + ("</li>" if items else ""))
    return f"<nav><h2>Contents</h2><ol>{''.join(items)}</ol></nav>"


def write_html(study: Study, sections: List[Section], tables_fmt, out: Path) -> None:
    """One file, no external references: figures are embedded as base64 PNG data URIs."""
    num = number(sections, tables_fmt)
    body = [f"<h1>lora-study report: {html.escape(study.name)}</h1>", "<ul>"]
    body += [f"<li>{_inline(line[2:])}</li>" for line in _header(study)] + ["</ul>", _contents_html(num)]
    for i, s in enumerate(sections):
        body.append(f'<h{s.level} id="{num.anchors[i]}">{html.escape(s.title)}</h{s.level}>')
        body += [f"<p>{_inline(p)}</p>" for p in s.paragraphs]
        if i in num.figures:
            n = num.figures[i]
            data = base64.b64encode((out / "figures" / f"{s.figure}.png").read_bytes()).decode()
            body.append(f'<figure><img alt="Figure {n}: {html.escape(s.figure)}" src="data:image/png;base64,{data}">'
                        f"<figcaption><b>Figure {n}.</b> {html.escape(_caption(s))}</figcaption></figure>")
        if i in num.tables:
            body.append(f'<p class="tcap"><b>Table {num.tables[i]}.</b> {html.escape(s.table_caption or s.title)}</p>')
            body.append('<div class="wrap">' + tables_fmt[s.table].to_html(index=False, border=0, escape=True) +
                        "</div>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
            f"<title>lora-study report: {html.escape(study.name)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>")
    (out / "report.html").write_text(page)


def write_tables(ctx: Context, tables_fmt: Dict[str, pd.DataFrame], out: Path) -> None:
    """Every table the analysis computed as CSV (full precision; measured times split into ``<name>_timings.csv``)
    and, formatted for reading, as Markdown and LaTeX; every formatted view as Markdown, LaTeX and CSV."""
    caption = ctx.study.caption()
    for name, df in ctx.all_tables().items():
        if df.empty:
            continue
        data, timings = split_timings(df)
        data.to_csv(out / f"{name}.csv", index=False)
        if timings is not None:
            timings.to_csv(out / f"{name}_timings.csv", index=False)
        if name not in tables_fmt:
            write_formatted(generic_format(data), out, name, caption=f"{name}: {caption}", csv=False)
    for name, df in tables_fmt.items():
        if not df.empty:
            write_formatted(df, out, name, caption=f"{name}: {caption}")


CLAIMS, FINDINGS = "claims.json", "findings.md"
REPORT_FILES = ("report.md", "report.html", TIMINGS, CLAIMS, FINDINGS)
REPORT_DIRS = ("figures", "tables")


def clear_report(out: Path) -> None:
    """Remove an earlier report's own files from ``out`` (so no stale figure or table survives), and nothing else:
    other reports kept beside or below it (``results/reference/<preset>/``) stay."""
    for name in REPORT_DIRS:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    for name in REPORT_FILES:
        (out / name).unlink(missing_ok=True)


def report(study: Study, out: Path) -> Path:
    t0 = time.perf_counter()
    ctx = analyze(study, study.path / "analysis")
    clear_report(out)
    (out / "figures").mkdir(parents=True)
    (out / "tables").mkdir()
    for name in ctx.figures:
        for ext in ("png", "pdf"):
            shutil.copy(study.path / "analysis" / f"{name}.{ext}", out / "figures" / f"{name}.{ext}")
    tables_fmt: Dict[str, pd.DataFrame] = {}
    for m in ctx.measures:
        tables_fmt.update(m.formatted(ctx))
    write_tables(ctx, tables_fmt, out / "tables")
    claims.write(ctx.claims(), out / CLAIMS)
    (out / FINDINGS).write_text(claims.findings_markdown(ctx.claims(), study.name, design(study, ctx)))
    sections = build_sections(ctx)
    write_markdown(study, sections, tables_fmt, out)
    write_html(study, sections, tables_fmt, out)
    write_json(out / TIMINGS, {"analysis_seconds": ctx.meta.get("analysis_seconds"),
                               "report_seconds": round(time.perf_counter() - t0, 2)})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="lora-study-report", description=__doc__.split("\n\n")[0])
    ap.add_argument("study", help="a study directory (holding study.json)")
    ap.add_argument("--out", help="output directory (default: <study>/report)")
    ap.add_argument("--readme", help="a README whose findings block is rewritten from this report's claims")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        study = load_study(a.study)
        if not study.runs:
            raise ArtifactError(f"{a.study} has no complete runs to report on.")
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if a.readme and not readme.current(Path(a.readme).read_text() if Path(a.readme).exists() else ""):
        print(f"error: {a.readme} has no findings block ({readme.START} ... {readme.END}).", file=sys.stderr)
        sys.exit(2)
    out = report(study, Path(a.out) if a.out else study.path / "report")
    if a.readme:
        readme.update(Path(a.readme), (out / FINDINGS).read_text())
    for member, why in study.skipped.items():
        print(f"skipped {member}: {why}", file=sys.stderr)
    print(f"report of {study.name} in {time.perf_counter() - t0:.1f} s -> {out / 'report.html'}")


if __name__ == "__main__":
    main()
