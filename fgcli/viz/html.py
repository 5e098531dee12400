"""`index.html`: a self-contained contact sheet of every figure (relative links), with the score table."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from fgcli.io import atomic_write_text

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } .meta { color: #555; font-size: 0.9em; }
.sheet { display: grid; grid-template-columns: repeat(auto-fill, minmax(%(min)dpx, 1fr)); gap: 14px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 6px; background: #fafafa; }
.card img { width: 100%%; height: auto; display: block; }
.singles { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 4px; }
.cap { font-size: 0.85em; margin-top: 4px; } .ok { color: #1a7f37; } .bad { color: #cf222e; }
table { border-collapse: collapse; margin: 0.8em 0 1.5em; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; } td:first-child, th:first-child { text-align: left; }
"""


@dataclass
class SheetEntry:
    """One image on the sheet: its figure file(s), relative to the sheet, and a caption."""

    name: str
    files: list[str]
    true: str | None
    pred: str
    prob: float
    notes: list[str] = field(default_factory=list)


def render_index(entries: list[SheetEntry], title: str, meta: list[str],
                 scores: list[dict] | None = None, score_target: str = "") -> str:
    """The HTML text of the contact sheet."""
    esc = html.escape
    single = any(len(e.files) > 1 for e in entries)
    parts = ["<!doctype html>", "<html><head><meta charset='utf-8'>", f"<title>{esc(title)}</title>",
             f"<style>{_CSS % {'min': 420 if single else 560}}</style></head><body>", f"<h1>{esc(title)}</h1>"]
    parts += [f"<div class='meta'>{esc(line)}</div>" for line in meta]
    if scores:
        parts.append(_score_table(scores, score_target))
    parts.append("<div class='sheet'>")
    for e in entries:
        ok = "" if e.true is None else ("ok" if e.true == e.pred else "bad")
        links = "".join(f"<a href='{esc(f)}'><img src='{esc(f)}' alt='{esc(Path(f).stem)}' loading='lazy'></a>"
                        for f in e.files)
        body = f"<div class='singles'>{links}</div>" if len(e.files) > 1 else links
        caption = (f"<b>{esc(e.name)}</b><br>{'true: ' + esc(e.true) if e.true else 'true class unknown'} · "
                   f"<span class='{ok}'>pred: {esc(e.pred)} ({100 * e.prob:.1f}%)</span>")
        caption += "".join(f"<br>{esc(n)}" for n in e.notes)
        parts.append(f"<div class='card'>{body}<div class='cap'>{caption}</div></div>")
    parts += ["</div>", "</body></html>", ""]
    return "\n".join(parts)


def _score_table(rows: list[dict], target: str) -> str:
    esc = html.escape
    head = ("<tr><th>map</th><th>images</th><th>pointing game</th><th>energy inside</th>"
            "<th>random map</th></tr>")
    body = "".join(f"<tr><td>{esc(str(r['map']))}</td><td>{r['images']}</td><td>{r['pointing']:.3f}</td>"
                   f"<td>{r['energy']:.3f}</td><td>{r['random']:.3f}</td></tr>" for r in rows)
    return (f"<h2>Scores against the {esc(target)}</h2><table>{head}{body}</table>"
            "<div class='meta'>random map: the expected pointing game and energy of a map with no information "
            "(the part's share of the input).</div>")


def write_index(path: Path, entries: list[SheetEntry], title: str, meta: list[str],
                scores: list[dict] | None = None, score_target: str = "") -> Path:
    """Write the contact sheet atomically."""
    atomic_write_text(path, render_index(entries, title, meta, scores, score_target))
    return path
