"""The report's tables as Markdown (GitHub-flavoured pipe tables), for a paper draft. Figures are
only named: they are embedded in the HTML report."""

from __future__ import annotations

from loopscale.report.blocks import Bullets, Code, Facts, Figure, Heading, Para, Section, Table
from loopscale.report.data import Report

PREFIX = {"note": "> Note: ", "warning": "> **Warning:** ", "reason": "> "}


def to_markdown(report: Report, sections: list[Section]) -> str:
    out = [f"# loopscale report: {report.name}", "", f"Sweep `{report.sweep_dir}`, made {report.created}.", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            out += _block(b) + [""]
    return "\n".join(out).rstrip("\n") + "\n"


def _block(b) -> list[str]:
    if isinstance(b, Heading):
        return [f"### {b.text}"]
    if isinstance(b, Para):
        return [PREFIX.get(b.kind, "") + b.text]
    if isinstance(b, Bullets):
        return [f"- {_cell(t)}" for t in b.items]
    if isinstance(b, Facts):
        return [f"- **{k}**: {v}" for k, v in b.items]
    if isinstance(b, Table):
        return table(b)
    if isinstance(b, Figure):
        return [f"*Figure `{b.name}` (in the HTML report): {b.caption}*"]
    if isinstance(b, Code):
        return [f"{b.summary}:", "", f"```{b.lang}", b.text, "```"]
    raise TypeError(f"unknown report block {type(b).__name__}")


def table(t: Table) -> list[str]:
    """A pipe table; numeric columns right-aligned, the total row (if any) in bold."""
    def row(cells) -> str:
        return "| " + " | ".join(cells) + " |"

    lines = [row(_cell(c) or " " for c in t.columns),
             row("--:" if i in t.numeric else "---" for i in range(len(t.columns)))]
    for j, cells in enumerate(t.rows):
        bold = t.total and j == len(t.rows) - 1 and len(t.rows) > 1
        lines.append(row(f"**{_cell(c)}**" if bold and c else _cell(c) for c in cells))
    return lines


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
