"""Small HTML builders for the report: escaped text, tables, figures as inline PNG, sections, the page and its CSS.

Everything is inline (styles and images), nothing is fetched and no script runs; the page is the same bytes for
the same artifacts (no clock, no absolute path of the run directory, PNGs without a timestamp).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence

__all__ = ["CSS", "badge", "empty_figure", "esc", "fig_png", "figure_html", "fmt", "fmtg", "img", "page", "pre", "section", "table",
           "with_problems"]

CSS = """
:root { --fg: #1b1f24; --muted: #5b636d; --line: #d5d9de; --bg-alt: #f5f7f9; --accent: #1f5fa8; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto,
  "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 1.2rem 1.6rem 3rem; }
@media (max-width: 600px) { main { padding: 0.8rem 0.7rem 2rem; } h1 { font-size: 1.3rem; } }
h1, h2, h3, p, li, dd, figcaption, caption { overflow-wrap: anywhere; }
section, div, figure { min-width: 0; }
h1 { font-size: 1.65rem; margin: 0.2rem 0 0.3rem; line-height: 1.25; }
h2 { font-size: 1.3rem; margin: 2.2rem 0 0.6rem; padding-bottom: 0.25rem; border-bottom: 2px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.4rem 0 0.4rem; }
p, li { max-width: 78ch; }
.sub { color: var(--muted); margin: 0 0 0.8rem; }
.muted { color: var(--muted); }
.small { font-size: 0.85rem; }
code, pre, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 0.85em; }
pre { background: var(--bg-alt); border: 1px solid var(--line); padding: 0.6rem 0.8rem; white-space: pre-wrap;
  word-break: break-word; border-radius: 4px; }
.wrap { overflow-x: auto; max-width: 100%; margin: 0.4rem 0 1rem;
  /* a shadow at a side with more table to scroll to (scrollbars may be hidden until used) */
  background: linear-gradient(to right, #fff 40%, rgba(255, 255, 255, 0)) left / 2rem 100% no-repeat local,
    linear-gradient(to left, #fff 40%, rgba(255, 255, 255, 0)) right / 2rem 100% no-repeat local,
    radial-gradient(farthest-side at 0 50%, rgba(0, 0, 0, 0.18), transparent) left / 0.8rem 100% no-repeat scroll,
    radial-gradient(farthest-side at 100% 50%, rgba(0, 0, 0, 0.18), transparent) right / 0.8rem 100% no-repeat scroll; }
table { border-collapse: collapse; font-size: 0.86rem; width: auto; }
caption { caption-side: top; text-align: left; color: var(--muted); font-size: 0.85rem; padding: 0.2rem 0; }
th, td { border-bottom: 1px solid var(--line); padding: 0.28rem 0.55rem; text-align: left; vertical-align: top; }
th { background: var(--bg-alt); font-weight: 600; vertical-align: bottom; }
th.n { white-space: normal; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.ctrl td { color: var(--muted); }
tr.sep td { border-top: 2px solid var(--line); }
thead { display: table-header-group; }
tr, figure, .card, .banner, .block { break-inside: avoid; }
figure { margin: 0.6rem 0 1.2rem; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
.pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(420px, 100%), 1fr)); gap: 0 1rem; }
.pair > * { min-width: 0; }
figcaption { color: var(--muted); font-size: 0.85rem; max-width: 95ch; }
.banner { border-left: 6px solid #b26b00; background: #fff4e0; padding: 0.7rem 1rem; margin: 0.8rem 0; }
.banner.info { border-color: var(--accent); background: #eaf2fb; }
.banner.problems { border-color: #a31515; background: #fdecec; }
.banner.problems li { word-break: break-word; }
.empty { color: var(--muted); border: 1px dashed var(--line); padding: 0.5rem 0.8rem; }
.cards { display: flex; flex-wrap: wrap; gap: 0.7rem; margin: 0.8rem 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 0.6rem 0.8rem; min-width: 12rem; flex: 1 1 12rem; }
.card .k { color: var(--muted); font-size: 0.8rem; }
.card .v { font-size: 1.25rem; font-weight: 600; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 0.05rem 0.5rem; border-radius: 999px; font-weight: 600; font-size: 0.85rem;
  white-space: nowrap; }
.badge.holds { background: #dff3e4; color: #125c2b; }
.badge.does-not-hold { background: #fbe2e2; color: #8a1c1c; }
.badge.inconclusive { background: #fff1cc; color: #6b4e00; }
.badge.breaks-answers { background: #ece3f7; color: #4b1f7a; }
.prompt { background: #fffdf5; border: 1px solid #eadfb8; }
.slot { background: #fde68a; padding: 0 0.15rem; border-radius: 2px; }
nav.toc { font-size: 0.9rem; margin: 0.6rem 0 0.4rem; }
nav.toc a { margin-right: 0.9rem; color: var(--accent); text-decoration: none; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 0.15rem 1rem; margin: 0.4rem 0 1rem; }
dl.kv dt { color: var(--muted); }
dl.kv dd { margin: 0; word-break: break-all; }
ul.plain { list-style: none; padding-left: 0; }
ul.plain li { margin: 0.2rem 0; }
details summary { cursor: pointer; color: var(--accent); }
@media print {
  @page { size: A4; margin: 14mm 12mm; }
  body { font-size: 10pt; }
  main { max-width: none; padding: 0; }
  nav.toc { display: none; }
  section { break-before: page; }
  section.first { break-before: auto; }
  h2, h3 { break-after: avoid; }
  table { font-size: 8pt; }
  table.keep { break-inside: avoid; }
  .wrap { overflow: visible; }
  th, td { padding: 0.15rem 0.35rem; }
  figure img { max-height: 170mm; width: auto; object-fit: contain; }
  a { color: inherit; }
}
"""


def esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def fmt(x: float | None, digits: int = 3, pct: bool = False) -> str:
    """A number for a table: fixed decimals; '–' for missing or NaN."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{100 * x:.{max(digits - 2, 0)}f}%" if pct else f"{x:.{digits}f}"


def fmtg(x: float | None) -> str:
    """A number of any size with 4 significant digits ('–' for missing or NaN)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.4g}"


def badge(verdict: str) -> str:
    cls = verdict.strip().lower().replace(" ", "-")
    return f'<span class="badge {esc(cls)}">{esc(verdict)}</span>'


def table(header: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = (), caption: str = "",
          row_classes: Sequence[str] | None = None, raw: bool = False) -> str:
    """A table; ``numeric`` columns are right-aligned; cells are escaped unless ``raw`` (pre-built HTML)."""
    rows = list(rows)
    cell = (lambda v: str(v)) if raw else esc
    num = set(numeric)
    head = "".join(f'<th{" class=n" if i in num else ""}>{esc(h)}</th>' for i, h in enumerate(header))
    body = []
    for k, r in enumerate(rows):
        cls = row_classes[k] if row_classes and k < len(row_classes) and row_classes[k] else ""
        tds = "".join(f'<td{" class=n" if i in num else ""}>{cell(v)}</td>' for i, v in enumerate(r))
        attr = f' class="{cls}"' if cls else ""
        body.append(f"<tr{attr}>{tds}</tr>")
    keep = " class=keep" if len(rows) <= 25 else ""
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    label = f' aria-label="{esc(caption)}"' if caption else ""
    return (f'<div class="wrap" role="region" tabindex="0"{label}><table{keep}>{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def fig_png(fig, dpi: int = 110) -> bytes:
    """A matplotlib ``Figure`` as PNG bytes without a timestamp or software tag (the same bytes every time)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def img(png: bytes, alt: str, caption: str = "", raw_caption: bool = False) -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{caption if raw_caption else esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def figure_html(fig: tuple[str, str, bytes]) -> str:
    """A generated figure ``(name, caption, PNG)`` as an inline image with its caption."""
    name, caption, png = fig
    return img(png, name.replace("_", " "), caption)


def empty_figure(title: str, why: str) -> str:
    """In place of a figure that has nothing to draw: its title and why it is empty."""
    return f"<p class=empty><strong>{esc(title)}</strong>: no figure, {esc(why)}</p>"


def with_problems(document: str, problems: Sequence[str]) -> str:
    """``document`` with a banner at the top of the page naming each problem of a forced report."""
    if not problems:
        return document
    items = "".join(f"<li><code>{esc(p)}</code></li>" for p in problems)
    banner = ("<div class='banner problems' role=alert><strong>This report was forced: the run directory did not pass its"
              f" checks, and what follows may be incomplete or wrong.</strong><ul>{items}</ul></div>")
    return document.replace("<main>", "<main>" + banner, 1)


def pre(text: str, cls: str = "") -> str:
    return f'<pre{f" class={cls}" if cls else ""}>{esc(text)}</pre>'


def section(anchor: str, title: str, body: str, first: bool = False) -> str:
    return f'<section id="{esc(anchor)}"{" class=first" if first else ""}><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, header: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document: ``header`` (HTML) then a table of contents and ``sections`` (anchor, title, HTML)."""
    toc = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    body = "".join(section(a, t, b, first=i == 0) for i, (a, t, b) in enumerate(sections))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f'<body><main>{header}<nav class="toc">{toc}</nav>{body}</main></body></html>\n'
    )
