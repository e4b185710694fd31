"""Render a report, held as a list of :class:`Section` objects (a heading and blocks:
paragraphs, tables, images, code), as Markdown and as one self-contained HTML page (images
embedded as base64 PNG, inline style, no scripts or external references)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field


class Bold(str):
    """A table cell holding the best value of its column."""


@dataclass
class Image:
    name: str
    png: bytes
    alt: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Code:
    text: str
    lang: str = ""
    summary: str | None = None  # HTML: folded into <details> under this summary


@dataclass
class Section:
    heading: str
    blocks: list = field(default_factory=list)

    def add(self, *blocks) -> "Section":
        self.blocks.extend(blocks)
        return self


def _md_cell(cell: str) -> str:
    text = cell.replace("|", "\\|").replace("\n", " ")
    return f"**{text}**" if isinstance(cell, Bold) else text


def to_markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    for section in sections:
        out += [f"## {section.heading}", ""]
        for block in section.blocks:
            if isinstance(block, str):
                out += [block, ""]
            elif isinstance(block, Table):
                out += ["| " + " | ".join(map(_md_cell, block.header)) + " |",
                        "|" + "---|" * len(block.header)]
                out += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in block.rows]
                out += [""]
            elif isinstance(block, Image):
                out += [f"![{block.alt}](report_files/{block.name}.png)", ""]
            elif isinstance(block, Code):
                fence = "`" * max(3, max(map(len, re.findall(r"`+", block.text)), default=0) + 1)
                out += ([f"{block.summary}:", ""] if block.summary else []) + [
                    f"{fence}{block.lang}", block.text.rstrip("\n"), fence, ""]
    return "\n".join(out)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}th,td{border:1px solid #ccc;
padding:.25em .6em;text-align:left}th{background:#f3f3f3}td.num{text-align:right}
img{max-width:100%;height:auto;display:block;margin:.8em 0}
pre{background:#f6f6f6;padding:.7em;overflow-x:auto}.scroll{overflow-x:auto}"""


NUMBER = re.compile(r"-?\d+(\.\d+)?(e[-+]?\d+)?|-")


def to_html(title: str, sections: list[Section]) -> str:
    e = html.escape
    out = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(title)}</title><style>{STYLE}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for section in sections:
        out.append(f"<section><h2>{e(section.heading)}</h2>")
        for block in section.blocks:
            if isinstance(block, str):
                out.append(f"<p>{e(block)}</p>")
            elif isinstance(block, Table):
                def cell(c: str, tag: str) -> str:
                    num = ' class="num"' if tag == "td" and NUMBER.fullmatch(c) else ""
                    text = f"<strong>{e(c)}</strong>" if isinstance(c, Bold) else e(c)
                    return f"<{tag}{num}>{text}</{tag}>"

                out.append('<div class="scroll"><table><thead><tr>'
                           + "".join(cell(h, "th") for h in block.header) + "</tr></thead><tbody>"
                           + "".join("<tr>" + "".join(cell(c, "td") for c in row) + "</tr>"
                                     for row in block.rows) + "</tbody></table></div>")
            elif isinstance(block, Image):
                data = base64.b64encode(block.png).decode("ascii")
                out.append(f'<img alt="{e(block.alt)}" src="data:image/png;base64,{data}">')
            elif isinstance(block, Code):
                code = f"<pre><code>{e(block.text)}</code></pre>"
                out.append(f"<details><summary>{e(block.summary)}</summary>{code}</details>"
                           if block.summary else code)
        out.append("</section>")
    return "\n".join(out + ["</body></html>", ""])
