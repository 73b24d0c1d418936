"""The report as one self-contained HTML file: inline CSS, figures as base64 PNG data URIs, no
scripts and nothing fetched, so it can be mailed as it is."""

from __future__ import annotations

import base64
import re
from html import escape

from loopscale import __version__
from loopscale.report.blocks import Bullets, Code, Facts, Figure, Heading, Para, Section, Table
from loopscale.report.data import Report

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d8dee4; --alt: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
       font: 15px/1.55 -apple-system, BlinkMacSystemFont, "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 36px 64px; }
header h1 { font-size: 26px; margin: 0 0 2px; }
.meta { color: var(--muted); font-size: 13.5px; }
nav { margin: 14px 0 8px; padding: 8px 0; border-top: 1px solid var(--line); border-bottom: 1px solid var(--line);
      font-size: 14px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 18px; white-space: nowrap; }
h2 { font-size: 20px; margin: 40px 0 12px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15.5px; margin: 24px 0 6px; }
p { margin: 8px 0; max-width: 80ch; }
p.lead { color: #30363d; }
p.note, p.warning, p.reason { max-width: none; padding: 6px 12px; border-left: 3px solid; font-size: 14px; }
p.note { border-color: #8c959f; background: var(--alt); }
p.warning { border-color: #d4a72c; background: #fff8c5; }
p.reason { border-color: var(--accent); background: #ddf4ff; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); gap: 10px; margin: 12px 0; }
.fact { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; }
.fact .k { color: var(--muted); font-size: 12px; letter-spacing: .02em; }
.fact .v { font-size: 16px; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.table { overflow-x: auto; margin: 6px 0 14px; }
table { border-collapse: collapse; font-size: 13.5px; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 10px; border-bottom: 1px solid var(--line); white-space: nowrap; text-align: left; }
th { background: var(--alt); font-weight: 600; border-bottom: 1px solid #c4ccd4; }
td.n, th.n { text-align: right; }
td.w { white-space: normal; min-width: 260px; max-width: 520px; }
tbody tr:nth-child(even) td { background: #fafbfc; }
tr.total td { font-weight: 600; border-top: 1px solid #afb8c1; }
td.id { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
.s-done { color: #1a7f37; } .s-diverged { color: #9a6700; }
.s-failed, .s-corrupt, .s-cancelled, .s-timeout, .s-lost { color: #cf222e; font-weight: 600; }
.s-running, .s-pending, .s-submitted { color: #0969da; } .s-new, .s-unknown { color: var(--muted); }
figure { margin: 14px 0 22px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; max-width: 90ch; }
details { margin: 10px 0; } summary { cursor: pointer; color: var(--accent); font-size: 14px; }
pre { background: var(--alt); border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; overflow-x: auto;
      font-size: 12.5px; line-height: 1.45; }
footer { margin-top: 48px; color: var(--muted); font-size: 12.5px; border-top: 1px solid var(--line);
         padding-top: 8px; }
@media print { main { max-width: none; padding: 0; } nav { display: none; } h2 { break-after: avoid; }
               figure, tr { break-inside: avoid; } }
"""


def to_html(report: Report, sections: list[Section]) -> str:
    title = f"loopscale report: {report.name}"
    nav = "".join(f'<a href="#{s.id}">{escape(s.title)}</a>' for s in sections)
    body = "\n".join(_section(s) for s in sections)
    settings = report.settings
    footer = (f"loopscale {escape(__version__)} · fit settings: {settings['starts']} starts, "
              f"{settings['bootstrap']} bootstrap resamples, seed {settings['seed']}, "
              f"Huber δ {settings['huber_delta']:g}")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            f"<header><h1>{escape(title)}</h1>\n"
            f'<div class="meta">sweep <code>{escape(str(report.sweep_dir))}</code> · '
            f"made {escape(report.created)}</div>"
            f"</header>\n<nav>{nav}</nav>\n{body}\n<footer>{footer}</footer>\n</main>\n</body>\n</html>\n")


def _section(s: Section) -> str:
    return f'<section id="{escape(s.id)}">\n<h2>{escape(s.title)}</h2>\n' + "\n".join(
        _block(b) for b in s.blocks) + "\n</section>"


def _block(b) -> str:
    if isinstance(b, Heading):
        return f"<h3>{escape(b.text)}</h3>"
    if isinstance(b, Para):
        cls = f' class="{b.kind}"' if b.kind else ""
        label = {"note": "Note: ", "warning": "Warning: "}.get(b.kind)
        return f"<p{cls}>" + (f"<strong>{label}</strong>" if label else "") + f"{_inline(b.text)}</p>"
    if isinstance(b, Bullets):
        return "<ul>" + "".join(f"<li>{_inline(t)}</li>" for t in b.items) + "</ul>"
    if isinstance(b, Facts):
        items = "".join(f'<div class="fact"><div class="k">{escape(k)}</div><div class="v">{escape(v)}</div></div>'
                        for k, v in b.items)
        return f'<div class="facts">{items}</div>'
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Figure):
        data = base64.b64encode(b.png).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(b.name)}">'
                f"<figcaption>{escape(b.caption)}</figcaption></figure>")
    if isinstance(b, Code):
        return f"<details><summary>{escape(b.summary)}</summary><pre>{escape(b.text)}</pre></details>"
    raise TypeError(f"unknown report block {type(b).__name__}")


def _inline(text: str) -> str:
    """Escaped text with `code` spans (the Markdown convention the sections use) as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))


def _table(t: Table) -> str:
    def cls(i: int, cell: str = "") -> str:
        names = ["n"] * (i in t.numeric) + ["w"] * (i in t.wrap) + ["id"] * (t.columns[i] == "run id")
        if i == t.state and cell:
            names.append(f"s-{cell}")
        return f' class="{" ".join(names)}"' if names else ""

    head = "".join(f"<th{cls(i)}>{escape(c)}</th>" for i, c in enumerate(t.columns))
    rows = []
    for j, row in enumerate(t.rows):
        total = ' class="total"' if t.total and j == len(t.rows) - 1 and len(t.rows) > 1 else ""
        rows.append(f"<tr{total}>" + "".join(f"<td{cls(i, c)}>{escape(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    return f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
