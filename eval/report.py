"""A sweep's report as one self-contained HTML page: its tables with intervals, figures and FP | quantized videos.

Every figure (PNG) and video (H.264 mp4) is inlined as a ``data:`` URI and the style sheet is inline: no CDN, no
script, no side file, so the page opens offline, from a mail attachment or a laptop without the logs. Tables are
rendered from :class:`eval.tables.Table` (the cells of the Markdown / LaTeX / CSV files, with their intervals and
marked winners); each body row carries ``data-row`` (its labels), so a test can check that every row arrived.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Sequence

from eval.tables import Cell, Table, fmt

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: right; }
th { background: #f3f3f3; } td.label { text-align: left; }
td .iv { color: #888; font-size: 0.85em; display: block; } td.best { font-weight: bold; }
p.caption { font-size: 0.9em; margin-bottom: 0.3em; }
.notes { font-size: 0.8em; color: #555; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; max-width: 48%; }
figcaption { font-size: 0.8em; color: #444; } img, video { max-width: 100%; image-rendering: pixelated; }
"""


@dataclass
class Report:
    """What the page shows, in order: paragraphs, tables, figures (title, PNG bytes), videos (label, mp4 bytes)."""

    title: str
    intro: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, bytes]] = field(default_factory=list)
    videos: list[tuple[str, bytes]] = field(default_factory=list)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _cell(c) -> str:
    if not isinstance(c, Cell):
        return f'<td class="label">{html.escape(str(c))}</td>'
    if c.value is None:
        return f"<td>{html.escape(c.text())}</td>"
    iv = "" if c.interval is None else (f'<span class="iv">[{fmt(c.metric, c.interval.lo)}, '
                                        f'{fmt(c.metric, c.interval.hi)}] n={c.n}</span>')
    return f'<td{" class=best" if c.best else ""}>{fmt(c.metric, c.value)}{iv}</td>'


def row_key(table: Table, row: Sequence) -> str:
    """A body row's identity: its label cells joined by ' / ' (empty labels, e.g. a repeated bitwidth, dropped)."""
    return " / ".join(str(x) for x in row[: table.labels] if str(x))


def table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join(f'<tr data-row="{html.escape(row_key(table, row))}">' + "".join(_cell(c) for c in row) + "</tr>"
                   for row in table.rows)
    notes = "".join(f"<li>[{i}] {html.escape(n)}</li>" for i, n in enumerate(table.notes, 1))
    return (f'<p class="caption">{html.escape(table.caption)}</p><table data-table="{html.escape(table.name)}">'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            + (f'<ul class="notes">{notes}</ul>' if notes else ""))


def render(report: Report) -> str:
    """The page's HTML text."""
    parts = [f"<h1>{html.escape(report.title)}</h1>"] + [f"<p>{html.escape(p)}</p>" for p in report.intro]
    if report.tables:
        parts.append("<h2>Tables</h2>")
        parts += [table_html(t) for t in report.tables]
    if report.figures:
        parts.append("<h2>Figures</h2>")
        parts += [f'<figure><img alt="{html.escape(t)}" src="{data_uri(b, "image/png")}">'
                  f"<figcaption>{html.escape(t)}</figcaption></figure>" for t, b in report.figures]
    if report.videos:
        parts.append("<h2>Samples: FP | quantized</h2>")
        parts += [f'<figure><video controls muted loop playsinline preload="auto" src="{data_uri(b, "video/mp4")}">'
                  f"</video><figcaption>{html.escape(t)}</figcaption></figure>" for t, b in report.videos]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(report.title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
