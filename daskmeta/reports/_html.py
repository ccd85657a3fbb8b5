"""The HTML of a report: one self-contained page (inline CSS, figures as data URIs, the
interactive viewer in an ``<iframe srcdoc>`` with its scripts embedded)."""

from __future__ import annotations

import html
import json
import re

import pandas as pd

__all__ = ["page", "section", "figure", "table", "parameters", "references_list"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #222; background: #fafafa; }
nav { position: sticky; top: 0; background: #2b3a4a; padding: 0.5em 1.5em; z-index: 2; }
nav a { color: #fff; margin-right: 1.2em; text-decoration: none; font-size: 0.95em; }
main { max-width: 1150px; margin: 0 auto; padding: 1em 1.5em 3em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #2b3a4a; padding-bottom: 0.2em; margin-top: 1.8em; }
h3 { margin-bottom: 0.3em; }
.meta { color: #555; margin-top: 0; }
figure { margin: 0.8em 0 1.4em; }
figure img { max-width: 100%; border: 1px solid #ddd; background: #fff; }
figcaption { color: #444; font-size: 0.9em; margin-top: 0.3em; }
table.dataframe, table.params { border-collapse: collapse; font-size: 0.88em; margin: 0.4em 0 1em;
    background: #fff; }
table.dataframe th, table.dataframe td, table.params th, table.params td {
    border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
table.params td, table.params th { text-align: left; vertical-align: top; }
table.dataframe thead th { background: #e8edf2; }
pre { background: #fff; border: 1px solid #ddd; padding: 0.8em; overflow-x: auto;
      font-size: 0.82em; }
.methods { background: #fff; border-left: 4px solid #2b3a4a; padding: 0.6em 1em;
           line-height: 1.5; }
.viewer iframe { border: 1px solid #ddd; background: #fff; }
.empty { color: #777; font-style: italic; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{_e(anchor)}">\n<h2>{_e(title)}</h2>\n{body}\n</section>'


def figure(uri: str, caption: str, kind: str) -> str:
    return (f'<figure class="{_e(kind)}"><img src="{_e(uri)}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def table(frame: pd.DataFrame, caption: str, table_id: str) -> str:
    head = f"<h3>{_e(caption)}</h3>"
    if frame is None or len(frame) == 0:
        return head + '<p class="empty">No rows.</p>'
    body = frame.to_html(index=False, escape=True, float_format=lambda v: f"{v:.4g}",
                         table_id=table_id, border=0, na_rep="")
    return head + body


def _value(value) -> str:
    if isinstance(value, dict | list | tuple):
        return json.dumps(value)
    return str(value)


def parameters(attrs: dict) -> str:
    rows = "\n".join(f"<tr><th>{_e(k)}</th><td>{_e(_value(v))}</td></tr>"
                     for k, v in sorted(attrs.items()))
    return f'<table class="params">{rows}</table>'


_FIELD = re.compile(r"(\w+)\s*=\s*\{((?:[^{}]|\{[^{}]*\})*)\}", re.S)


def references_list(entries: list[str]) -> str:
    """An ordered list of references from BibTeX entries (authors, year, title, journal,
    DOI link)."""
    items = []
    for entry in entries:
        fields = {k.lower(): " ".join(v.replace("{", "").replace("}", "").split())
                  for k, v in _FIELD.findall(entry)}
        authors = fields.get("author", "").split(" and ")
        who = authors[0].split(",")[0] + (" et al." if len(authors) > 2 else
                                          f" and {authors[1].split(',')[0]}"
                                          if len(authors) == 2 else "")
        venue = fields.get("journal") or fields.get("booktitle", "")
        doi = fields.get("doi")
        link = (f' <a href="https://doi.org/{_e(doi)}">doi:{_e(doi)}</a>' if doi else "")
        items.append(f"<li>{_e(who)} ({_e(fields.get('year', ''))}). "
                     f"{_e(fields.get('title', ''))}. <em>{_e(venue)}</em>.{link}</li>")
    return "<ol>" + "\n".join(items) + "</ol>"


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole page; ``sections`` are ``(anchor, title, body HTML)``."""
    nav = "".join(f'<a href="#{_e(a)}">{_e(t)}</a>' for a, t, _ in sections)
    body = "\n".join(section(a, t, b) for a, t, b in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_e(title)}</title>\n<link rel=\"icon\" href=\"data:,\">\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<nav>{nav}</nav>\n<main>\n<h1>{_e(title)}</h1>\n<p class=\"meta\">{_e(subtitle)}</p>\n"
        f"{body}\n</main>\n</body>\n</html>\n"
    )
