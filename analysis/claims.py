"""One record per claim: what a study says, built once from its evidence and rendered everywhere it is said.

A ``Claim`` holds the estimand, the units behind it (seeds, examples, runs), the estimate and its interval (and
what kind of interval it is), the rule and test that decide it, the verdict and why, and the runs it includes that
did not learn. The verdict table, the accounting table, the sentences of the report's sections, ``claims.json`` and
the findings summary that README carries are all rendered from these records (``Claim.sentence``, ``Claim.row``):
no other code path computes a number that prose states about a claim.

Verdicts:

- ``holds`` / ``does not hold``: the evidence decides the claim by its rule;
- ``unresolved``: the interval is too wide to decide (not significant is not the same as no effect);
- ``too little evidence``: the claim's test needs more independent units than the study has (``MINIMUM``): a
  seed-level interval at least three seeds, a rank correlation at least eight runs, an interval that is not
  degenerate;
- ``uninformative``: the evidence cannot speak to the claim (a held-out task the base scores at chance, every arm at
  the floor or the ceiling, a target barely above the base);
- ``not measured``: the study has no runs that can test it.

Two kinds: ``finding`` (an empirical claim: the verdict table) and ``accounting`` (a claim that holds by the
arithmetic of the method, measured against its formula: the accounting table), so a count that cannot fail never
sits beside evidence as if it were some.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

HOLDS, FAILS, UNRESOLVED = "holds", "does not hold", "unresolved"
TOO_LITTLE, UNINFORMATIVE, NOT_MEASURED = "too little evidence", "uninformative", "not measured"
VERDICTS = (HOLDS, FAILS, UNRESOLVED, TOO_LITTLE, UNINFORMATIVE, NOT_MEASURED)
FINDING, ACCOUNTING = "finding", "accounting"

# the least evidence a kind of test needs before it may give a verdict
MINIMUM = {"seeds": 3, "correlation_runs": 8}


@dataclass
class Claim:
    key: str  # stable id: "reach:lora", "forgetting_less:lora:accuracy"
    claim: str  # what is claimed, as a reader would say it
    kind: str  # FINDING or ACCOUNTING
    verdict: str
    measured: str  # the measured value as the table shows it
    rule: str  # the test and the rule that turn the evidence into the verdict
    why: str = ""  # one sentence: why this verdict (what decided it)
    published: str = ""
    source: str = ""
    estimate: Optional[float] = None
    low: Optional[float] = None
    high: Optional[float] = None
    interval: str = ""  # what [low, high] is: "95 % t interval over seeds and examples", "range over seeds", ...
    seeds: Optional[int] = None
    examples: Optional[int] = None
    runs: Optional[int] = None
    did_not_learn: List[str] = field(default_factory=list)  # the runs it includes that did not learn
    section: str = ""  # the measure whose section holds the evidence

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"a claim's verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}.")
        if self.kind not in (FINDING, ACCOUNTING):
            raise ValueError(f"a claim's kind must be {FINDING} or {ACCOUNTING}, got {self.kind!r}.")

    def units(self) -> str:
        """'3 seeds × 6,000 examples', '15 runs', or '' when none was counted."""
        parts = []
        if self.seeds is not None:
            parts.append(f"{self.seeds} seed{'s' if self.seeds != 1 else ''}")
        if self.examples is not None:
            parts.append(f"{self.examples:,} examples")
        text = " × ".join(parts)
        if self.runs is not None:
            text += (", " if text else "") + f"{self.runs} runs"
        return text

    def includes(self) -> str:
        """Whether its evidence includes runs that did not learn (every verdict says so)."""
        if not self.did_not_learn:
            return ""
        return f"includes {len(self.did_not_learn)} run(s) that did not learn: {', '.join(self.did_not_learn)}"

    def sentence(self) -> str:
        """The claim as the report's prose states it: the claim, its verdict, what was measured, why."""
        text = f"**{self.claim}: {self.verdict}.** {self.measured}"
        text += "" if text.endswith(".") else "."
        if self.why:
            text += f" {self.why[0].upper()}{self.why[1:]}" + ("" if self.why.endswith(".") else ".")
        if self.includes():
            text += f" It {self.includes()}."
        return text

    def row(self) -> Dict[str, str]:
        """The claim's row of the verdict (or accounting) table."""
        return {"claim": self.claim, "verdict": self.verdict, "measured": self.measured,
                "units": self.units() or "—", "published": self.published or "—", "rule": self.rule,
                "why": self.why + (f"; {self.includes()}" if self.includes() else ""), "source": self.source or "—"}

    def record(self) -> dict:
        d = asdict(self)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def seeds_verdict(seeds: int, need: int = MINIMUM["seeds"]) -> Optional[str]:
    """The reason a seed-level verdict cannot be given, or None when there are enough seeds."""
    if seeds < need:
        return f"a verdict over training runs needs at least {need} seeds; this study has {seeds}"
    return None


def degenerate(low: Optional[float], high: Optional[float]) -> bool:
    """An interval of zero width (or none) decides nothing."""
    return low is None or high is None or not (math.isfinite(low) and math.isfinite(high)) or high - low <= 0


def interval_verdict(low: float, high: float, threshold: float) -> str:
    """holds when the whole interval is above ``threshold``, does not hold when it is all below, else unresolved."""
    if low > threshold:
        return HOLDS
    return FAILS if high < threshold else UNRESOLVED


def write(claims: Sequence[Claim], path: Path) -> None:
    from lora_study.artifacts import write_json
    write_json(path, [c.record() for c in claims])


def read(path: Path) -> List[Claim]:
    return [Claim(**c) for c in json.loads(Path(path).read_text())]


def findings_markdown(claims: Iterable[Claim], study: str, design: str = "") -> str:
    """The findings summary README carries: the design, then one line per empirical claim, from its record."""
    lines = [f"Findings of the study `{study}`{f' ({design})' if design else ''}, one per claim: the verdict, what "
             "was measured, why. Generated from its claim records by `lora-study-report`."]
    lines += ["", *[f"- {c.sentence()}" for c in claims if c.kind == FINDING]]
    return "\n".join(lines) + "\n"
