"""Writing tables: numeric tables as CSV and parquet (``write_table``), and tables formatted as strings for
the report as Markdown, booktabs LaTeX and CSV (``write_formatted``)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def write_table(df: pd.DataFrame, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / f"{name}.csv", index=False)
    df.to_parquet(out / f"{name}.parquet", index=False)


def write_formatted(df: pd.DataFrame, out: Path, name: str, caption: str = "") -> None:
    """``name``.md, ``name``.tex and ``name``_formatted.csv of a table of strings."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(to_markdown(df) + "\n")
    (out / f"{name}.tex").write_text(to_latex(df, caption=caption))
    df.to_csv(out / f"{name}_formatted.csv", index=False)


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def to_latex(df: pd.DataFrame, caption: str = "") -> str:
    """A booktabs table (\\toprule / \\midrule / \\bottomrule); % and & are escaped."""
    def esc(s) -> str:
        return str(s).replace("\\", r"\textbackslash{}").replace("&", r"\&").replace("%", r"\%").replace(
            "#", r"\#").replace("_", r"\_").replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("—", "--")
    cols = list(df.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}",
             r"\toprule", " & ".join(esc(c) for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(r"\caption{" + esc(caption) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"
