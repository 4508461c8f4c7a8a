"""lora-study-check <report-dir>...: does every sentence of a report match its evidence?

A report (``lora-study-report``) writes its claims (``claims.json``) beside its tables (``tables/*.md``, the tables
as the report shows them, and ``tables/*.csv``, their numbers at full precision). This check reads report.md and
fails when

- a row of the verdict or accounting table gives a verdict other than its claim record's;
- a claim's sentence (``Claim.sentence``) that its section states is missing or altered;
- a number in the report's prose is in no table of the report, no claim record and no CSV value rounded as the
  prose shows it: a number typed in, or computed by a code path of its own.

Headings, figure and table captions, the header's study description and the tables themselves are not prose here.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Iterable, List, Set

import pandas as pd

NUMBER = re.compile(r"(?<![\w.])[−+-]?\d[\d,]*(?:\.\d+)?(?:e[−+-]?\d+)?")
SENTENCE = re.compile(r"(?<=[.;])(?<!al\.)\s+(?=[A-Z(])")
CITED = re.compile(r"et al\.")  # a sentence quoting a paper's figures, which the measures' tests hold to ANCHORS.md
SMALL = 12  # integers up to this are structure (seeds, ranks, layer counts), not measurements


def _norm(token: str) -> str:
    return token.replace("−", "-").replace(",", "").lstrip("+")


def numbers(text: str) -> List[str]:
    """The numbers of ``text`` as written (minus signs unified, thousands separators and a leading + dropped)."""
    return [_norm(m.group(0)) for m in NUMBER.finditer(text)]


def _is_structure(token: str) -> bool:
    try:
        v = float(token)
    except ValueError:
        return True
    return "." not in token and "e" not in token and abs(v) <= SMALL


def prose(report_md: str) -> List[str]:
    """The paragraphs of a report's sections: not headings, tables, figures, captions or the header list."""
    out, in_sections = [], False
    for line in report_md.splitlines():
        s = line.strip()
        if s.startswith("## ") and s != "## Contents":
            in_sections = True
        if not in_sections or not s or s.startswith(("#", "|", "![", "*Figure", "**Table", "- [", "Figures:")):
            continue
        out.append(s)
    return out


def known(report_dir: Path) -> tuple:
    """(the number tokens the report's tables and claims show, the CSV values at full precision)."""
    shown: Set[str] = set()
    for md in (report_dir / "tables").glob("*.md"):
        shown.update(numbers(md.read_text()))
    for c in json.loads((report_dir / "claims.json").read_text()):
        for k in ("measured", "why", "rule", "published", "claim"):
            shown.update(numbers(str(c.get(k) or "")))
    values: List[float] = []
    for csv in (report_dir / "tables").glob("*.csv"):
        df = pd.read_csv(csv)
        for col in df.select_dtypes("number").columns:
            values += [float(v) for v in df[col].dropna() if math.isfinite(float(v))]
    return shown, values


def _matches(token: str, values: Iterable[float]) -> bool:
    """Whether some full-precision value rounds to ``token`` at its shown decimals (also as a percentage)."""
    v = float(token)
    decimals = len(token.split(".")[1].split("e")[0]) if "." in token else 0
    tol = 0.5 * 10 ** -decimals + 1e-12
    return any(abs(x - v) <= tol or abs(100 * x - v) <= tol for x in values)


def check(report_dir: Path) -> List[str]:
    """Every contradiction found in one report, one sentence each (empty: the report matches its evidence)."""
    report_dir = Path(report_dir)
    md = (report_dir / "report.md").read_text()
    problems: List[str] = []
    claims = json.loads((report_dir / "claims.json").read_text())
    rows = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and line.startswith("|"):
            rows.setdefault((cells[0], cells[2]), cells[1])
    for c in claims:
        shown = rows.get((c["claim"], c["measured"]))
        if shown is not None and shown != c["verdict"]:
            problems.append(f"the table says {c['claim']!r} {shown}, its record says {c['verdict']}.")
    from .claims import Claim
    text = "\n".join(prose(md))
    for c in claims:
        if c["verdict"] != "not measured" and c["section"] and c["kind"] == "finding":
            sentence = Claim(**c).sentence()
            if sentence not in md and c["claim"] in text:
                problems.append(f"the prose states {c['claim']!r} otherwise than its record: {sentence!r}.")
    shown, values = known(report_dir)
    for paragraph in prose(md):
        own = " ".join(s for s in SENTENCE.split(paragraph) if not CITED.search(s))  # quoted figures are the source's
        for token in numbers(own):
            if _is_structure(token) or token in shown or _matches(token, values):
                continue
            problems.append(f"the number {token} in {paragraph[:80]!r}… is in no table or claim of the report.")
    return problems


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="lora-study-check", description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", help="report directories (holding report.md and claims.json)")
    a = ap.parse_args(argv)
    failed = 0
    for d in a.reports:
        if not (Path(d) / "claims.json").exists():
            print(f"error: {d} holds no claims.json; regenerate it with lora-study-report.", file=sys.stderr)
            sys.exit(2)
        problems = check(Path(d))
        failed += bool(problems)
        for p in problems:
            print(f"{d}: {p}", file=sys.stderr)
        print(f"{d}: {'ok' if not problems else f'{len(problems)} contradiction(s)'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
