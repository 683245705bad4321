"""The report as a list of blocks, rendered twice: Markdown (figures linked from ``figures/``) and a self-contained
HTML file (the same PNGs inlined as base64, so the file can be mailed or archived alone).

Both renderings share one layout: the title, the summary (``Document.front``), a table of contents linking
every section by anchor, the sections, then the appendices: tables longer than :data:`LONG_TABLE_ROWS` rows
are moved there (a link stays in place) and every CSV under ``tables/`` is listed.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class Block:
    """One piece of the report: heading, paragraph, bullets, table, figure or note."""

    kind: str
    text: str = ""
    level: int = 2
    items: list[str] = field(default_factory=list)
    table: pd.DataFrame | None = None
    path: Path | None = None


@dataclass
class Document:
    """Blocks in reading order; rendered to Markdown and HTML by :func:`to_markdown` and :func:`to_html`."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    front: list[Block] = field(default_factory=list)
    """Shown before the table of contents: the summary (:mod:`rlflat.report.summary`)."""

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(Block("heading", text, level=level))

    def para(self, text: str) -> None:
        self.blocks.append(Block("para", text))

    def bullets(self, items: Sequence[str]) -> None:
        if items:
            self.blocks.append(Block("bullets", items=list(items)))

    def table(self, frame: pd.DataFrame, caption: str = "") -> None:
        self.blocks.append(Block("table", caption, table=frame))

    def figure(self, path: Path, caption: str) -> None:
        self.blocks.append(Block("figure", caption, path=path))

    def note(self, text: str) -> None:
        self.blocks.append(Block("note", text))


def cell(value: object) -> str:
    if isinstance(value, float | np.floating):
        return "n/a" if not math.isfinite(float(value)) else f"{float(value):.3g}"
    return str(value)


def estimate_ci(est: float, lo: float, hi: float, spec: str = ".3g") -> str:
    """``est [lo, hi]`` with ``spec`` formatting; ``est`` alone without a finite interval, ``n/a`` without ``est``."""
    if not math.isfinite(est):
        return "n/a"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{est:{spec}}"
    return f"{est:{spec}} [{lo:{spec}}, {hi:{spec}}]"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


LONG_TABLE_ROWS = 15
"""Tables with more rows go to an appendix, linked from where they were."""


def slug(text: str) -> str:
    """An anchor for a heading: lowercase words joined by hyphens (GitHub's style, punctuation dropped)."""
    words = re.sub(r"[^\w\s-]", "", text.lower(), flags=re.UNICODE).split()
    return "-".join(words) or "section"


def layout(doc: Document, root: Path | None = None) -> tuple[list[Block], list[tuple[str, str]]]:
    """The blocks in reading order (front, contents, sections, appendices) and the contents (title, anchor).

    Long tables are replaced by a paragraph linking their appendix; CSV files under ``root/tables`` are listed
    (as links relative to the report) in a last appendix.
    """
    body: list[Block] = []
    appendix: list[Block] = []
    for b in doc.blocks:
        if b.kind == "table" and b.table is not None and len(b.table) > LONG_TABLE_ROWS:
            number = sum(1 for x in appendix if x.kind == "heading") + 1
            short = re.split(r"[;:(]", b.text or "table")[0].strip().rstrip(".")
            title = f"Appendix {number}: {short[:60]}"
            body.append(Block("link", f"{b.text} ({len(b.table)} rows): see", items=[title]))
            appendix += [Block("heading", title), Block("table", b.text, table=b.table)]
        else:
            body.append(b)
    if root is not None and (root / "tables").is_dir():
        csvs = [p.relative_to(root).as_posix() for p in sorted((root / "tables").glob("*.csv"))]
        if csvs:
            appendix += [Block("heading", "Tables (CSV)"), Block("files", items=csvs)]
    sections = [b for b in [*doc.front, *body, *appendix] if b.kind == "heading" and b.level == 2]
    contents = [(b.text, slug(b.text)) for b in sections]
    toc = [Block("heading", "Contents"), Block("contents", items=[t for t, _ in contents])] if contents else []
    return [*doc.front, *toc, *body, *appendix], contents


def to_markdown(doc: Document, root: Path) -> str:
    """Markdown with figures linked relative to ``root`` (the report directory)."""
    lines = [f"# {doc.title}", ""]
    blocks, _ = layout(doc, root)
    for b in blocks:
        if b.kind == "heading":
            lines += [f'<a id="{slug(b.text)}"></a>', "", "#" * b.level + " " + b.text, ""]
        elif b.kind == "contents":
            lines += [f"- [{item}](#{slug(item)})" for item in b.items] + [""]
        elif b.kind == "link":
            lines += [f"*{b.text} [{b.items[0]}](#{slug(b.items[0])}).*", ""]
        elif b.kind == "files":
            lines += [f"- [{item}]({item})" for item in b.items] + [""]
        elif b.kind == "para":
            lines += [b.text, ""]
        elif b.kind == "note":
            lines += [f"> **Note.** {b.text}", ""]
        elif b.kind == "bullets":
            lines += [f"- {item}" for item in b.items] + [""]
        elif b.kind == "table" and b.table is not None:
            if b.text:
                lines += [f"*{b.text}*", ""]
            cols = [str(c) for c in b.table.columns]
            lines.append("| " + " | ".join(_md_escape(c) for c in cols) + " |")
            lines.append("|" + "|".join(" --- " for _ in cols) + "|")
            for row in b.table.itertuples(index=False):
                lines.append("| " + " | ".join(_md_escape(cell(v)) for v in row) + " |")
            lines.append("")
        elif b.kind == "figure" and b.path is not None:
            lines += [f"![{b.text}]({b.path.relative_to(root).as_posix()})", "", f"*{b.text}*", ""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.5}
h1,h2,h3{line-height:1.2}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0 2em}figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:.9em;color:#444;margin-top:.4em}.note{background:#fff8e1;border-left:4px solid #f0b400;
padding:.4em .8em}.caption{font-style:italic;color:#444}
"""


def to_html(doc: Document, root: Path | None = None) -> str:
    """Self-contained HTML: inline CSS, every figure embedded as a base64 PNG; the only links are the anchors of
    the contents and, when ``root`` is given, the CSV tables beside the file."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(doc.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(doc.title)}</h1>",
    ]
    blocks, _ = layout(doc, root)
    for b in blocks:
        if b.kind == "heading":
            parts.append(f'<h{b.level} id="{slug(b.text)}">{esc(b.text)}</h{b.level}>')
        elif b.kind == "contents":
            parts.append("<ul>" + "".join(f'<li><a href="#{slug(i)}">{esc(i)}</a></li>' for i in b.items) + "</ul>")
        elif b.kind == "link":
            parts.append(f'<p class="caption">{esc(b.text)} <a href="#{slug(b.items[0])}">{esc(b.items[0])}</a>.</p>')
        elif b.kind == "files":
            parts.append("<ul>" + "".join(f'<li><a href="{esc(i)}">{esc(i)}</a></li>' for i in b.items) + "</ul>")
        elif b.kind == "para":
            parts.append(f"<p>{esc(b.text)}</p>")
        elif b.kind == "note":
            parts.append(f'<p class="note"><strong>Note.</strong> {esc(b.text)}</p>')
        elif b.kind == "bullets":
            parts.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table" and b.table is not None:
            if b.text:
                parts.append(f'<p class="caption">{esc(b.text)}</p>')
            head = "".join(f"<th>{esc(str(c))}</th>" for c in b.table.columns)
            body = "".join(
                "<tr>" + "".join(f"<td>{esc(cell(v))}</td>" for v in row) + "</tr>"
                for row in b.table.itertuples(index=False)
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b.kind == "figure" and b.path is not None:
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img alt="{esc(b.text)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(b.text)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
