"""What each row of a per-run table is to the analyses, from the placement its run's study index records
(``lora_study.artifacts.PLACEMENT``) and never from a method's name: the baseline (the frozen base, what gains are
measured from), the reference (full finetuning, what the other methods are compared with), or a run of an arm swept
over an axis (LoRA and QLoRA over the rank, subspace training DID and SAID over d) of some family. Claims about a
kind of method read its family: a rank-swept method of another family shows up beside LoRA, in rows of its own.

Per-run tables carry these as columns (``run_columns``). A frame without them (a hand-made one in a test, a
table written by an older analysis) gets them from its ``method`` column through ``with_roles``, by the placements
the artifacts' migration knows (``lora_study.artifacts.migrate_member``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import pandas as pd

from lora_study.artifacts import BASELINE, REFERENCE, migrate_member

from .loader import Run, label_key

ROLE_COLUMNS = ("family", "arm", "title", "axis", "value", "order", "baseline", "reference")


def run_columns(run: Run) -> Dict[str, Any]:
    """The columns that name a run in every per-run table: member id, method, family, arm, title, label, swept axis
    and value (with ``rank`` and ``d`` spelt out), seed, its place in the study, and its role."""
    return {"member": run.member, "method": run.method, "family": run.family, "arm": run.arm, "title": run.title,
            "label": run.label, "axis": run.axis, "value": run.value, "rank": run.rank, "d": run.d, "seed": run.seed,
            "order": run.order, "baseline": run.is_baseline, "reference": run.is_reference}


def with_roles(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the role columns, those missing filled in from each row's method and swept fields."""
    if df.empty or all(c in df for c in ROLE_COLUMNS):
        return df
    df = df.copy()
    placed = [migrate_member({k: v for k, v in row.items() if not (isinstance(v, float) and v != v)})
              for row in df.to_dict("records")]
    if "arm" not in df:  # a schema 1 run's arm is its method's
        df["arm"] = [p.get("arm") or p.get("method") for p in placed]
    for column in ("family", "title", "axis", "value", "order"):
        if column not in df:
            df[column] = [p[column] for p in placed]
    if "baseline" not in df:
        df["baseline"] = [p["role"] == BASELINE for p in placed]
    if "reference" not in df:
        df["reference"] = [p["role"] == REFERENCE for p in placed]
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


def swept(df: pd.DataFrame, axis: str, arm: Optional[str] = None, family: Optional[str] = None) -> pd.DataFrame:
    """Rows of the arms swept over ``axis`` ("rank" or "d"), or of one of them, or of one family's."""
    df = with_roles(df)
    if df.empty:
        return df
    keep = df.axis == axis
    if "own_setting" in df:  # arms in a setting of their own are the regret measure's, not the rank sweep's
        keep &= df.own_setting.fillna(True).astype(bool)
    if arm is not None:
        keep &= df.arm == arm
    if family is not None:
        keep &= df.family == family
    return df[keep]


def arms(df: pd.DataFrame, axis: str, family: Optional[str] = None) -> List[str]:
    """The arms swept over ``axis`` in ``df`` (of one family, when given), in the study's order."""
    rows = swept(df, axis, family=family)
    firsts = rows.drop_duplicates("arm") if not rows.empty else rows
    return [r["arm"] for r in sorted(firsts.to_dict("records"), key=label_key)]


def arm_title(df: pd.DataFrame, arm: str) -> str:
    """How text names an arm: its title ("LoRA", "LoRA (all linear)"), with the arm's name added where two arms
    of the table would read the same."""
    df = with_roles(df)
    rows = df[df.arm == arm]
    title = str(rows.title.iloc[0]) if len(rows) else arm
    others = df[(df.arm != arm) & df.axis.notna()].drop_duplicates("arm")
    return f"{title} ({arm})" if (others.title.astype(str) == title).any() else title


def ordered_labels(df: pd.DataFrame) -> List[str]:
    """The labels of ``df`` in table order: baseline, reference, then each arm by its swept value."""
    df = with_roles(df)
    if df.empty:
        return []
    firsts = df.drop_duplicates("label").to_dict("records")
    return [r["label"] for r in sorted(firsts, key=lambda r: (label_key(r), r["label"]))]
