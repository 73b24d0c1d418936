"""The blocks a report is made of: headings, paragraphs, lists, tables (cells already formatted),
figures and code, grouped in sections. report.sections builds them; report.html and report.md render them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Heading:
    text: str


@dataclass
class Para:
    text: str
    kind: str = ""  # "" | lead | note | warning | reason (why something is missing)


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Facts:
    items: list[tuple[str, str]]


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    numeric: set[int] = field(default_factory=set)  # right-aligned columns
    total: bool = False  # the last row sums the others
    wrap: set[int] = field(default_factory=set)  # columns of long text, wrapped
    state: int | None = None  # column of run states (coloured in HTML)


@dataclass
class Figure:
    name: str
    png: bytes
    caption: str


@dataclass
class Code:
    text: str
    summary: str
    lang: str = "yaml"


@dataclass
class Section:
    id: str
    title: str
    blocks: list = field(default_factory=list)
