"""Writing a report: its sections laid out once, rendered as HTML and as Markdown, both written atomically."""

from __future__ import annotations

from pathlib import Path

from loopscale.atomic import write_bytes_atomic
from loopscale.report.data import Report
from loopscale.report.html import to_html
from loopscale.report.md import to_markdown
from loopscale.report.sections import layout


def write_report(report: Report, html_path: str | Path) -> tuple[Path, Path]:
    """Write the HTML report and, next to it, the Markdown tables (same name, .md), atomically."""
    html_path = Path(html_path)
    md_path = html_path.with_suffix(".md")
    sections = layout(report)
    write_bytes_atomic(html_path, to_html(report, sections).encode())
    write_bytes_atomic(md_path, to_markdown(report, sections).encode())
    return html_path, md_path
