"""One plain-text / Markdown table renderer for the validity harnesses (their printouts go into docs as is)."""

from __future__ import annotations

from collections.abc import Sequence


def render_table(head: Sequence[str], body: Sequence[Sequence[str]], markdown: bool = False) -> str:
    """`head` and `body` rows of strings as a Markdown table, or as space-aligned columns for a terminal."""
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    return "\n".join(
        "  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)) for line in [head, *body]
    )
