"""What each row of a per-run table is to the analyses, from the method registry (``lora_study.methods``) and
never from a method's name: the baseline (the frozen base, what gains are measured from), the reference (full
finetuning, what the other methods are compared with), or a run of an arm swept over an axis (LoRA and QLoRA over
the rank, subspace training DID and SAID over d). Every arm swept over the rank is treated alike, so QLoRA, or a
method a user registers, shows up beside LoRA with no analysis edited.

Per-run tables carry these as columns (``run_columns``). A frame without them (a hand-made one in a test, a
table written by an older analysis) gets them from its ``method`` column through ``with_roles``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import pandas as pd

from lora_study import methods

from .loader import Run, label_key

ROLE_COLUMNS = ("arm", "axis", "value", "baseline", "reference")


def run_columns(run: Run) -> Dict[str, Any]:
    """The columns that name a run in every per-run table: member id, method, arm, label, swept axis and value
    (with ``rank`` and ``d`` spelt out), seed, and its role."""
    return {"member": run.member, "method": run.method, "arm": run.arm, "label": run.label, "axis": run.axis,
            "value": run.value, "rank": run.rank, "d": run.d, "seed": run.seed, "baseline": run.is_baseline,
            "reference": run.is_reference}


def _spec(method) -> Optional[methods.Method]:
    return methods.get(method) if method in methods.names() else None


def with_roles(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the role columns (arm, axis, value, baseline, reference), those missing filled in from the
    registry entry of each row's method."""
    if df.empty or all(c in df for c in ROLE_COLUMNS):
        return df
    df = df.copy()
    specs = [_spec(m) for m in df.method]
    if "arm" not in df:
        df["arm"] = df.method
    if "axis" not in df:
        df["axis"] = [s.axis if s else None for s in specs]
    if "value" not in df:
        df["value"] = [row.get(row["axis"]) if isinstance(row["axis"], str) else None
                       for row in df.to_dict("records")]
    if "baseline" not in df:
        df["baseline"] = [bool(s and s.is_baseline) for s in specs]
    if "reference" not in df:
        df["reference"] = [bool(s and s.is_reference) for s in specs]
    return df


def _flag(df: pd.DataFrame, column: str) -> pd.Series:
    return df[column].fillna(False).astype(bool)


def baselines(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the baseline (the frozen base)."""
    df = with_roles(df)
    return df[_flag(df, "baseline")] if not df.empty else df


def references(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the reference (full finetuning)."""
    df = with_roles(df)
    return df[_flag(df, "reference")] if not df.empty else df


def finetuned(df: pd.DataFrame) -> pd.DataFrame:
    """Every row but the baseline's."""
    df = with_roles(df)
    return df[~_flag(df, "baseline")] if not df.empty else df


def swept(df: pd.DataFrame, axis: str, arm: Optional[str] = None) -> pd.DataFrame:
    """Rows of the arms swept over ``axis`` ("rank" or "d"), or of one of them."""
    df = with_roles(df)
    if df.empty:
        return df
    keep = df.axis == axis
    if arm is not None:
        keep &= df.arm == arm
    return df[keep]


def arms(df: pd.DataFrame, axis: str) -> List[str]:
    """The arms swept over ``axis`` in ``df``, in registry order."""
    rows = swept(df, axis)
    firsts = rows.drop_duplicates("arm") if not rows.empty else rows
    return [r["arm"] for r in sorted(firsts.to_dict("records"), key=label_key)]


def arm_title(df: pd.DataFrame, arm: str) -> str:
    """How text names an arm: its method's title ("LoRA"), with the arm added where two arms share a method."""
    df = with_roles(df)
    rows = df[df.arm == arm]
    method = rows.method.iloc[0]
    spec = _spec(method)
    title = spec.title if spec else str(method)
    swept = rows[rows.axis.notna()] if "label" in rows else rows.iloc[0:0]
    if len(swept):  # an arm's own title ("LoRA (all linear)"): its runs' label without the swept value
        title = str(swept.label.iloc[0]).rsplit(" ", 1)[0]
    others = df[(df.method == method) & df.axis.notna() & (df.arm != arm)]
    shared = "label" in df and any(str(x).rsplit(" ", 1)[0] == title for x in others.label)
    return f"{title} ({arm})" if shared or (len(others) and "label" not in df) else title


def ordered_labels(df: pd.DataFrame) -> List[str]:
    """The labels of ``df`` in table order: baseline, reference, then each arm by its swept value."""
    df = with_roles(df)
    if df.empty:
        return []
    firsts = df.drop_duplicates("label").to_dict("records")
    return [r["label"] for r in sorted(firsts, key=lambda r: (label_key(r), r["label"]))]
