"""Writing tables: numeric tables as CSV and parquet (``write_table``), and tables formatted as strings for
the report as Markdown, booktabs LaTeX and CSV (``write_formatted``); a numeric table formatted for reading
(``generic_format``) and its measured times split off (``split_timings``), so that the rest of it is the same on
every rerun of a study."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import pandas as pd

# columns that hold times measured in the runs: they change when the same study is run again
TIMING = re.compile(r"^(wall_time_s|mean_step_s|tokens_per_s|(base_)?latency_\w+_s)$")
KEYS = ("member", "method", "arm", "label", "value", "seed")


def split_timings(df: pd.DataFrame) -> Tuple[pd.DataFrame, Optional[pd.DataFrame]]:
    """(``df`` without its timing columns, those columns beside the columns that name each row), or (df, None)."""
    timing = [c for c in df.columns if TIMING.match(str(c))]
    if not timing:
        return df, None
    keys = [c for c in KEYS if c in df.columns]
    return df.drop(columns=timing), df[keys + timing]


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}" if abs(int(v)) >= 10000 else str(int(v))
    if isinstance(v, (float, np.floating)):
        if float(v).is_integer() and abs(v) < 1e15:
            return _cell(int(v))
        return f"{v:.4g}"
    return str(v)


def generic_format(df: pd.DataFrame) -> pd.DataFrame:
    """A numeric table as strings for reading: four significant digits, whole numbers as integers, NaN as '—'."""
    return pd.DataFrame({c: [_cell(v) for v in df[c]] for c in df.columns}, columns=list(df.columns))


def write_table(df: pd.DataFrame, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / f"{name}.csv", index=False)
    df.to_parquet(out / f"{name}.parquet", index=False)


def write_formatted(df: pd.DataFrame, out: Path, name: str, caption: str = "", csv: bool = True) -> None:
    """``name``.md, ``name``.tex and (``csv``) ``name``_formatted.csv of a table of strings."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(to_markdown(df) + "\n")
    (out / f"{name}.tex").write_text(to_latex(df, caption=caption))
    if csv:
        df.to_csv(out / f"{name}_formatted.csv", index=False)


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(_md(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_md(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _md(v) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


LATEX = {"±": r"$\pm$", "Δ": r"$\Delta$", "—": "---", "–": "--", "−": "-", "‖": r"$\|$", "φ": r"$\varphi$",
         "σ": r"$\sigma$", "ε": r"$\varepsilon$", "λ": r"$\lambda$", "≤": r"$\le$", "≥": r"$\ge$", "≪": r"$\ll$",
         "×": r"$\times$", "÷": r"$\div$", "→": r"$\to$", "≈": r"$\approx$", "ᵀ": r"$^\top$", "²": r"$^2$",
         "ρ": r"$\rho$", "θ": r"$\theta$", "Σ": r"$\Sigma$", "·": r"$\cdot$"}


def to_latex(df: pd.DataFrame, caption: str = "") -> str:
    """A booktabs table (\\toprule / \\midrule / \\bottomrule); % and & are escaped."""
    def esc(s) -> str:
        s = str(s).replace("\\", "\0").replace("&", r"\&").replace("%", r"\%").replace("#", r"\#").replace(
            "_", r"\_").replace("{", r"\{").replace("}", r"\}").replace("$", r"\$").replace("\0", r"\textbackslash{}")
        for char, tex in LATEX.items():
            s = s.replace(char, tex)
        return s
    cols = list(df.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}",
             r"\toprule", " & ".join(esc(c) for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(r"\caption{" + esc(caption) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"
