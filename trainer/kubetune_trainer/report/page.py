"""The safe-HTML building blocks and the look that kubetune's pages share.

report.html (a run, report/html.py) and search.html (a search, the CLI's
views/search_page.py) are self-contained pages of untrusted data: no scripts, no requests,
every string escaped on its way in. This module holds the HTML both build them from (their
charts are report/charts.py's), with the standard library only, so it loads where neither
torch nor matplotlib is installed.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from kubetune_trainer.formatting import MISSING, fmt_number

CSP: Final = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
"""No scripts, no requests: the pages need neither, and their data is untrusted."""

BASE_STYLE: Final = """
:root{--fg:#111827;--muted:#6b7280;--line:#e5e7eb;--bg:#f9fafb;--accent:#1d4ed8}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,
sans-serif;color:var(--fg);background:#fff}
main{max-width:1120px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:24px;margin:0 12px 0 0;display:inline;word-break:break-word}
h2{font-size:18px;margin:36px 0 12px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:24px 0 8px}
p{margin:6px 0}
.sub{color:var(--muted);margin:4px 0 16px}
nav{font-size:13px;margin:8px 0 0}nav a{color:var(--accent);margin-right:14px;text-decoration:none}
.badge{display:inline-block;padding:2px 10px;border-radius:999px;font-size:12px;font-weight:600;
vertical-align:middle}
.good{background:#dcfce7;color:#166534}.bad{background:#fee2e2;color:#991b1b}
.warn{background:#fef3c7;color:#92400e}.neutral{background:#f3f4f6;color:#374151}
.facts{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.facts div{border:1px solid var(--line);border-radius:8px;padding:8px 12px;min-width:120px;
background:var(--bg)}
.facts dt{font-size:11px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
.facts dd{margin:0;font-size:16px;font-weight:600;font-variant-numeric:tabular-nums;
word-break:break-word}
table{border-collapse:collapse;margin:8px 0 12px;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{font-weight:600;background:var(--bg)}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.best td{font-weight:600;background:#eff6ff}
tr.quiet td{color:var(--muted)}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:16px}
figure{margin:8px 0}
svg.chart{max-width:100%;height:auto;display:block}
.callout{border-left:4px solid var(--accent);background:#eff6ff;padding:8px 14px;margin:12px 0;
border-radius:0 6px 6px 0}
"""
"""The rules both pages use; each page adds its own after them."""


class Markup(str):
    """HTML built from escaped parts: `h()` inserts it as it is."""


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def h(value: object) -> Markup:
    """`value` as HTML: Markup as it is, numbers formatted, anything else escaped text."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup(MISSING)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Markup(fmt_number(value))
    return Markup(html.escape(printable(str(value)), quote=True))


def printable(text: str) -> str:
    """Control characters as visible \\xNN, lone surrogates as \\udNNN (UTF-8 has neither)."""
    visible = _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)
    return visible.encode("utf-8", "backslashreplace").decode("utf-8")


def tag(name: str, *children: object, **attributes: object) -> Markup:
    """<name attributes>children</name>; `class_` gives class, `aria_label` aria-label."""
    attrs = "".join(
        f' {key.rstrip("_").replace("_", "-")}="{_attribute(value)}"'
        for key, value in attributes.items()
    )
    return Markup(f"<{name}{attrs}>{join(children)}</{name}>")


def _attribute(value: object) -> Markup:
    """Attribute values: coordinates keep their drawing precision, the rest goes through h()."""
    if isinstance(value, float):
        return Markup(f"{value:.2f}")
    if isinstance(value, int) and not isinstance(value, bool):
        return Markup(str(value))
    return h(value)


def join(parts: Iterable[object]) -> Markup:
    return Markup("".join(h(part) for part in parts))


def facts(items: Sequence[tuple[object, object]]) -> Markup:
    """Label/value cards (nothing for no items)."""
    cards = [tag("div", tag("dt", key), tag("dd", value)) for key, value in items]
    return tag("dl", *cards, class_="facts") if cards else Markup("")


def badge(text: str, tone: str) -> Markup:
    return tag("span", text, class_=f"badge {tone}")


@dataclass(frozen=True)
class Section:
    """One <section> of a page, linked from the navigation."""

    anchor: str
    title: str
    body: Markup

    def html(self) -> Markup:
        return tag("section", tag("h2", self.title), self.body, id=self.anchor)


def document(title: str, style: str, main: Markup) -> str:
    """The whole page: the content security policy, the title, the style and `main`."""
    head = join(
        [
            Markup('<meta charset="utf-8">'),
            Markup(f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'),
            Markup('<meta name="viewport" content="width=device-width, initial-scale=1">'),
            tag("title", title),
            tag("style", Markup(style)),
        ]
    )
    return f'<!DOCTYPE html>\n<html lang="en">\n<head>{head}</head>\n<body>{main}</body>\n</html>\n'
