"""The README's results tables, found and brought up to date from `readme_results.py --report`.

A table is found by the line under it that says how it was measured ("`python benchmarks/readme_results.py
--tables NAME` (...): measured ..."): the table is the last markdown table above that line. The README shows a
report without its `missing` rows (and without a caption row left with no rows under it); the lines between the
table and the measured line (a table's verdict lines) and the measured line itself come from the report too. Text
before the command on the measured line (a note such as "(mean over seeds, min-max in brackets.)") is kept.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts run as files; tests load them by path
from _results import MISSING  # noqa: E402

MISSING_CELL = f"| {MISSING}"  # `| missing |`, or `| missing (seed 3) |` for a row with some seeds measured


def marker(name: str) -> str:
    """How the line under table `name` starts its command."""
    return f"`python benchmarks/readme_results.py --tables {name}` ("


def is_measured_line(line: str, name: str) -> bool:
    return marker(name) in line and ("): measured " in line or "): not measured yet." in line)


@dataclass(frozen=True)
class Place:
    """Where a table sits in the README's lines: its rows are [start, end), its measured line `measured`."""

    start: int
    end: int
    measured: int


def locate(lines: list[str], name: str) -> Place | None:
    """The README place of table `name`, or None when the README has no measured line for it (or no table
    right above that line, within its section)."""
    measured = next((i for i, line in enumerate(lines) if is_measured_line(line, name)), None)
    if measured is None:
        return None
    end = measured
    while end > 0 and not lines[end - 1].startswith("|"):
        if lines[end - 1].startswith("#"):
            return None
        end -= 1
    start = end
    while start > 0 and lines[start - 1].startswith("|"):
        start -= 1
    return Place(start, end, measured) if start < end else None


def _is_caption(line: str) -> bool:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    return cells[0].startswith("*") and not any(cells[1:])


def shown(table: list[str]) -> list[str]:
    """A report's table as the README shows it: without `missing` rows, nor captions left without rows."""
    rows = [line for line in table if MISSING_CELL not in line]
    kept = []
    for i, line in enumerate(rows):
        following = rows[i + 1] if i + 1 < len(rows) else None
        if _is_caption(line) and (following is None or _is_caption(following)):
            continue
        kept.append(line)
    return kept


def split_report(report: str) -> tuple[list[str], list[str], str]:
    """`_results.report()`'s text -> (its table rows, the lines between the table and the measured line, the
    measured line)."""
    lines = report.split("\n")
    measured = lines[-1]
    body = lines[:-1]
    while body and body[-1] == "":
        body.pop()
    n = 0
    while n < len(body) and body[n].startswith("|"):
        n += 1
    return body[:n], body[n:], measured


def update(readme: str, name: str, report: str) -> str:
    """The README text with table `name` as `report` makes it (unchanged when the README has no place for it)."""
    lines = readme.split("\n")
    place = locate(lines, name)
    if place is None:
        return readme
    table, extra, measured = split_report(report)
    old = lines[place.measured]
    prefix = old[:old.index(marker(name))]
    new = [*shown(table), *extra, "", prefix + measured]
    return "\n".join([*lines[:place.start], *new, *lines[place.measured + 1:]])


def place(readme: str, name: str, report: str) -> tuple[str, str]:
    """`update`, and what it did: 'updated', 'unchanged' or 'no place for it: add the table by hand'."""
    new = update(readme, name, report)
    if new != readme:
        return new, "updated"
    return new, "unchanged" if locate(readme.split("\n"), name) else "no place for it: add the table by hand"
