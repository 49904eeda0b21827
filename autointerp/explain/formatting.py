"""Turning a feature's stored examples into the explainer's prompt.

Only the explain split is ever shown. Examples are the top contexts plus 'random' contexts (uniform
over activating contexts) taken at evenly spaced ranks of their max activation, so the explainer sees
weak as well as strong activations (the quantile view) without a second sampling pass in collect.
Each context is trimmed to a window around its peak and activating tokens are wrapped in `<<...>>`,
adjacent ones merged into one span: that is where the token savings come from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import jinja2
import numpy as np

from autointerp.explain.config import ExplainConfig
from autointerp.llm.base import Message
from autointerp.prompting import PromptTemplate
from autointerp.store.records import ExampleRecord

OPEN, CLOSE = "<<", ">>"
#: Starts a worked-example chat turn in a template's part='shots' (`@@user`, `@@assistant`).
TURN_MARK = "@@"


@dataclass(frozen=True)
class Example:
    """One context as the explainer sees it (tokens decoded one by one, activations per token)."""

    context_id: int
    kind: str
    tokens: Sequence[str]
    activations: Sequence[float]
    max_activation: float


def select_examples(rows: Sequence[ExampleRecord], config: ExplainConfig) -> list[Example]:
    """Top examples, then quantile samples from the 'random' kind, for ONE feature's example rows.

    `rows` are one feature's `Store.example_records`; only the explain split is used. Quantile samples
    skip contexts already shown as top examples and are ordered strongest first. Plain Python, not
    pandas: this runs once per feature and must cost well under a millisecond to keep a fast server busy.
    """
    rows = [r for r in rows if r.split == "explain"]
    top = sorted((r for r in rows if r.kind == "top"), key=lambda r: r.rank)[: config.n_top]
    shown = {r.context_id for r in top}
    pool = [r for r in rows if r.kind == "random" and r.context_id not in shown and r.max_activation > 0]
    pool.sort(key=lambda r: (-r.max_activation, r.rank))
    if config.n_quantile == 0:
        pool = []
    elif len(pool) > config.n_quantile:
        ranks = np.unique(np.round(np.linspace(0, len(pool) - 1, config.n_quantile)).astype(int))
        pool = [pool[i] for i in ranks]
    return [_example(r) for r in top + pool]


def _example(row: ExampleRecord) -> Example:
    return Example(
        context_id=row.context_id,
        kind=row.kind,
        tokens=list(row.tokens),
        activations=list(row.activations),
        max_activation=row.max_activation,
    )


def _window(activations: Sequence[float], window: int) -> tuple[int, int]:
    """[start, end) of `window` tokens around the peak: 3/4 before it (the context a causal LM saw), 1/4 after."""
    n = len(activations)
    if window <= 0 or window >= n:
        return 0, n
    peak = 1 + int(np.argmax(np.asarray(activations[1:], dtype=float))) if n > 1 else 0
    before = (window * 3) // 4
    start = max(0, peak - before)
    end = min(n, start + window)
    start = max(0, end - window)
    return start, end


def render_example(example: Example, window: int, scale_max: float | None) -> str:
    """One line: the trimmed text with `<<activating spans>>`; with `scale_max`, each span gets `(0-10)`.

    Position 0 is the attention sink and never marked. Leading whitespace stays outside the marks
    (`the <<cat>>`, not `the<< cat>>`), and newlines are written as `\\n` so one example is one line.
    """
    start, end = _window(example.activations, window)
    parts: list[str] = []
    span: list[str] = []
    span_max = 0.0

    def close_span() -> None:
        nonlocal span, span_max
        if not span:
            return
        text = "".join(span)
        stripped = text.lstrip()
        parts.append(text[: len(text) - len(stripped)])
        value = f"({_scaled(span_max, scale_max)})" if scale_max else ""
        parts.append(f"{OPEN}{stripped}{CLOSE}{value}")
        span, span_max = [], 0.0

    for position in range(start, end):
        token = example.tokens[position].replace("\n", "\\n")
        act = example.activations[position] if position > 0 else 0.0
        if act > 0:
            span.append(token)
            span_max = max(span_max, act)
        else:
            close_span()
            parts.append(token)
    close_span()
    return "".join(parts).strip()


def _scaled(value: float, scale_max: float | None) -> int:
    if not scale_max or scale_max <= 0:
        return 0
    return int(min(10, max(0, round(10 * value / scale_max))))


def build_messages(template: PromptTemplate, examples: Sequence[Example], config: ExplainConfig) -> list[Message]:
    """System + user messages: the template is rendered once per part (`part='system'|'user'`).

    The system part does not depend on the feature, so servers with prefix caching reuse it.
    """
    scale_max = max((e.max_activation for e in examples), default=0.0) if config.show_activations else None
    lines = [render_example(e, config.window, scale_max) for e in examples]
    variables = {"examples": lines, "show_activations": config.show_activations}
    compiled = _compiled(template.text)
    system = compiled.render(part="system", **variables).strip()
    shots = worked_turns(compiled.render(part="shots", **variables))
    user = compiled.render(part="user", **variables).strip()
    return [{"role": "system", "content": system}, *shots, {"role": "user", "content": user}]


def worked_turns(text: str) -> list[Message]:
    """The worked examples a template renders for part='shots', as chat turns (else none).

    Each turn starts with a line `@@user` or `@@assistant`. Why turns and not examples inside the system
    message: small models copied an in-system example's label for every feature (SmolLM2 on v2); as earlier
    turns, the feature's excerpts are the last turn and the instruction sits right before the answer.
    Templates without the markers (v1, v2) render their user part here and get no turns.
    """
    if not text.lstrip().startswith(TURN_MARK):
        return []
    turns: list[Message] = []
    for block in text.strip().split(TURN_MARK)[1:]:
        role, _, content = block.partition("\n")
        if role.strip() not in ("user", "assistant"):
            raise ValueError(f"prompt turn marker {TURN_MARK}{role.strip()!r}: use {TURN_MARK}user or {TURN_MARK}assistant")
        turns.append({"role": role.strip(), "content": content.strip()})
    return turns


@lru_cache(maxsize=16)
def _compiled(text: str) -> jinja2.Template:
    """The template compiled once (compiling costs ~6 ms; `PromptTemplate.render` does it per call).
    Same environment settings as `PromptTemplate.render`, so the output is identical."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return env.from_string(text)
