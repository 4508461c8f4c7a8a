"""The findings README carries, rendered from a report's claim records: the block between the two markers below is
replaced by ``lora-study-report <study> --readme README.md`` (and checked against ``claims.json`` by the tests), so
README states nothing its report's records do not."""
from __future__ import annotations

from pathlib import Path

START, END = "<!-- findings: generated from the reference report's claims.json -->", "<!-- findings: end -->"


def block(findings: str) -> str:
    return f"{START}\n{findings.rstrip()}\n{END}"


def current(text: str) -> str:
    """The findings block of a README's text ('' when it has none)."""
    if START not in text or END not in text:
        return ""
    return text[text.index(START):text.index(END) + len(END)]


def update(readme: Path, findings: str) -> None:
    """Replace the README's findings block with ``findings``; a README without the markers is refused."""
    text = Path(readme).read_text()
    old = current(text)
    if not old:
        raise ValueError(f"{readme} has no findings block (the lines {START} and {END}); add them where the findings "
                         "belong.")
    Path(readme).write_text(text.replace(old, block(findings)))
