"""report.md -> report.html: one self-contained page (plots inlined), no extra dependency.

The study writes its report in a small, fixed subset of Markdown (headings, paragraphs, pipe
tables, bullet lists, images, `code`, **bold**), so a few lines render it; a general Markdown package
would be a dependency for nothing. The HTML has its PNGs inlined as data URIs, so the one file
can be mailed or attached to a lab notebook without its folder. HTML sections the Markdown
cannot hold (the galleries of pipelines/galleries.py, their pictures inlined too) are appended
as they are.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")
_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
code { background: #f3f3f3; padding: 0 0.2rem; border-radius: 3px; }
img { max-width: 100%; margin: 0.5rem 0; }
td strong { color: #0a6; }
"""


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code> and **bold** into <strong>."""
    text = _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", html.escape(text, quote=False))
    return _BOLD.sub(lambda m: f"<strong>{m.group(1)}</strong>", text)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _is_separator(line: str) -> bool:
    return bool(line.strip()) and set(line.replace("|", "").strip()) <= set("-: ")


def _image(alt: str, src: str, folder: Path) -> str:
    path = folder / src
    if path.suffix.lower() == ".png" and path.is_file():
        data = base64.b64encode(path.read_bytes()).decode()
        src = f"data:image/png;base64,{data}"
    return f'<img alt="{html.escape(alt)}" src="{html.escape(src)}">'


def render(markdown: str, folder: Path, title: str = "report",
           sections: list[str] | tuple[str, ...] = ()) -> str:
    """HTML for the subset of Markdown the study report uses; images resolved in `folder`;
    `sections`: HTML fragments appended after it (galleries)."""
    from duchkit.pipelines.galleries import STYLE as GALLERY_STYLE

    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 6)
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            head, body = rows[0], [r for r in rows[1:] if not _is_separator(r)]
            out.append("<table><thead><tr>" + "".join(
                f"<th>{_inline(c)}</th>" for c in _cells(head)) + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in _cells(r)) + "</tr>"
                    for r in body]
            out.append("</tbody></table>")
        elif line.startswith("- "):
            out.append("<ul>")
            while i < len(lines) and lines[i].startswith("- "):
                out.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("</ul>")
        elif _IMAGE.match(line.strip()):
            while i < len(lines) and _IMAGE.match(lines[i].strip()):
                alt, src = _IMAGE.match(lines[i].strip()).groups()
                out.append(_image(alt, src, folder))
                i += 1
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(
                    ("#", "|", "- ")) and not _IMAGE.match(lines[i].strip()):
                para.append(_inline(lines[i]))
                i += 1
            out.append("<p>" + "<br>\n".join(para) + "</p>")
    out += list(sections)
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}{GALLERY_STYLE}</style></head>"
            "<body>\n" + "\n".join(out) + "\n</body></html>\n")
