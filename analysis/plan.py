"""lora-study-plan <study-dir> [--margin M] [--power P]: what a study's design can resolve, and what it would take.

For every paired comparison behind a verdict: the variance split into the seeds' and the examples' parts, the
smallest margin the design resolves with the given power at a true difference of 0, and the test examples at 3, 5
and 10 seeds (and the seeds at the study's own examples) that a margin needs (``lora_study.analysis.measures.design``)."""
from __future__ import annotations

import argparse
import sys

from lora_study.artifacts import ArtifactError

from .loader import load_study
from .measures import Context
from .measures.design import design_rows, formatted
from .tables import to_markdown


def _fraction(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}.") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{name} must lie strictly between 0 and 1, got {value:g}.")
    return value


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="lora-study-plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("study", help="a study directory (holding study.json)")
    ap.add_argument("--margin", type=lambda t: _fraction(t, "--margin"),
                    help="the equivalence margin to plan for (default: the study's own)")
    ap.add_argument("--power", type=lambda t: _fraction(t, "--power"), default=0.8, help="default 0.8")
    a = ap.parse_args(argv)
    try:
        study = load_study(a.study)
        if not study.runs:
            raise ArtifactError(f"{a.study} has no complete runs to plan from.")
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    ctx = Context(study)
    t = design_rows(ctx.table("reach"), ctx.table("forgetting_vs_full"), a.margin, a.power)
    if t.empty:
        print(f"error: {a.study} has no paired comparison with per-example outputs to plan from.", file=sys.stderr)
        sys.exit(2)
    print(f"Design of {study.name} at power {a.power:g}:\n")
    print(to_markdown(formatted(t)))


if __name__ == "__main__":
    main()
