"""Jinja2 environments for the report templates, and safe embedding of data as inline JSON.

HTML templates use autoescape=True: corpus text, labels and SAE names are untrusted and are escaped
wherever they land. Data for the page's script goes in `<script type="application/json">`, where HTML
escaping does not apply, so `embed_json` escapes `<`, `>` and `&` as JSON unicode escapes: the text can
never close the script element or open a comment, and JSON.parse still returns the original strings.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

TEMPLATE_DIR = Path(__file__).parent / "templates"


def _clean(value: Any) -> Any:
    """NaN/inf -> None recursively (JSON has no NaN), numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def embed_json(value: Any) -> Markup:
    """JSON text that is safe inside a <script type="application/json"> element."""
    text = json.dumps(_clean(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    return Markup(text)


def md_cell(value: Any) -> str:
    """Text for a Markdown table cell: one line, pipes and HTML-significant characters escaped."""
    if value is None:
        return ""
    text = " ".join(str(value).split())
    return (text.replace("\\", "\\\\").replace("|", "\\|").replace("&", "&amp;").replace("<", "&lt;")
            .replace(">", "&gt;").replace("`", "\\`").replace("*", "\\*").replace("_", "\\_")
            .replace("[", "\\[").replace("]", "\\]"))


def fmt(value: Any, digits: int = 3) -> str:
    """A number for display: '—' for missing, 3 significant digits by default."""
    if value is None:
        return "\u2014"
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(f):
        return "\u2014"
    if f != 0 and (abs(f) < 1e-3 or abs(f) >= 1e5):
        return f"{f:.{max(digits - 1, 1)}e}"
    return f"{f:.{digits}g}"


def pct(value: Any) -> str:
    if value is None:
        return "\u2014"
    f = float(value)
    return "\u2014" if not math.isfinite(f) else f"{100 * f:.1f} %"


@cache
def html_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(embed_json=embed_json, fmt=fmt, pct=pct)
    return env


@cache
def markdown_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=False,  # Markdown: every interpolated value goes through the md filter instead
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(md=md_cell, fmt=fmt, pct=pct)
    return env


def render_html(name: str, **context: Any) -> str:
    return html_env().get_template(name).render(**context)


def render_markdown(name: str, **context: Any) -> str:
    return markdown_env().get_template(name).render(**context)


def read_asset(name: str) -> Markup:
    """A static CSS/JS file from the templates folder, inlined verbatim (it is our code, not data)."""
    return Markup((TEMPLATE_DIR / name).read_text(encoding="utf-8"))
