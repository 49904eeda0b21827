"""Tiny inline-SVG plots for self-contained reports (no matplotlib, no CDN, no network to view).

Each function returns a `markupsafe.Markup` string of one `<svg>` element. Every piece of text that
reaches the SVG (titles, axis labels, legend and point names; these can come from user data such as
SAE names) goes through `html.escape`, so the markup is safe to drop into a Jinja template.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from markupsafe import Markup

PALETTE = ["#1f77b4", "#e6550d", "#2ca02c", "#9467bd", "#d62728", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
WIDTH, HEIGHT = 410, 265
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 56, 16, 30, 44


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:.3g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round-numbered ticks covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-9:
        if t >= lo - step * 1e-9:
            ticks.append(round(t, 12))
        t += step
    return ticks


@dataclass
class Frame:
    """Maps data coordinates to pixels; log_x plots log10(x) with ticks labelled in x."""

    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    title: str
    x_label: str
    y_label: str
    log_x: bool = False
    width: int = WIDTH
    height: int = HEIGHT
    parts: list[str] = field(default_factory=list)

    def px(self, x: float) -> float:
        span = (self.x_hi - self.x_lo) or 1.0
        return MARGIN_L + (x - self.x_lo) / span * (self.width - MARGIN_L - MARGIN_R)

    def py(self, y: float) -> float:
        span = (self.y_hi - self.y_lo) or 1.0
        return self.height - MARGIN_B - (y - self.y_lo) / span * (self.height - MARGIN_T - MARGIN_B)

    def axes(self) -> None:
        x0, x1 = MARGIN_L, self.width - MARGIN_R
        y0, y1 = self.height - MARGIN_B, MARGIN_T
        p = self.parts
        for t in nice_ticks(self.y_lo, self.y_hi):
            y = self.py(t)
            p.append(f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
            p.append(f'<text x="{x0 - 5}" y="{y + 4:.1f}" text-anchor="end">{escape(_fmt(t))}</text>')
        if self.log_x:
            xt = [float(e) for e in range(math.ceil(self.x_lo), math.floor(self.x_hi) + 1)]
            labels = [escape(f"1e{int(t)}") if t != 0 else "1" for t in xt]
        else:
            xt = nice_ticks(self.x_lo, self.x_hi)
            labels = [escape(_fmt(t)) for t in xt]
        for t, lab in zip(xt, labels, strict=True):
            x = self.px(t)
            p.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y0}" y2="{y0 + 4}" class="axis"/>')
            p.append(f'<text x="{x:.1f}" y="{y0 + 16}" text-anchor="middle">{lab}</text>')
        p.append(f'<line x1="{x0}" x2="{x1}" y1="{y0}" y2="{y0}" class="axis"/>')
        p.append(f'<line x1="{x0}" x2="{x0}" y1="{y0}" y2="{y1}" class="axis"/>')
        p.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{self.height - 8}" text-anchor="middle" class="lab">'
                 f"{escape(self.x_label)}</text>")
        p.append(f'<text transform="translate(14,{(y0 + y1) / 2:.1f}) rotate(-90)" text-anchor="middle" '
                 f'class="lab">{escape(self.y_label)}</text>')
        p.append(f'<text x="{x0}" y="18" class="ttl">{escape(self.title)}</text>')

    def render(self) -> Markup:
        body = "".join(self.parts)
        return Markup(
            f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {self.width} {self.height}" '
            f'width="{self.width}" height="{self.height}" role="img" aria-label="{escape(self.title)}">'
            f"{body}</svg>"
        )


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def empty(title: str, message: str) -> Markup:
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {WIDTH} 80" width="{WIDTH}" height="80">'
        f'<text x="10" y="20" class="ttl">{escape(title)}</text>'
        f'<text x="10" y="50" class="muted">{escape(message)}</text></svg>'
    )


def histogram(
    values: Sequence[float],
    title: str,
    x_label: str,
    bins: int = 20,
    x_range: tuple[float, float] | None = None,
    markers: Sequence[tuple[float, str]] = (),
    fill: str = PALETTE[0],
) -> Markup:
    """Counts per bin, with labelled vertical markers (e.g. chance level, threshold)."""
    data = _finite(values)
    if not data:
        return empty(title, "no data")
    lo, hi = x_range if x_range else (min(data), max(data))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in data:
        i = min(bins - 1, max(0, int((v - lo) / width)))
        counts[i] += 1
    frame = Frame(lo, hi, 0, max(counts) * 1.1 or 1, title, x_label, "features")
    frame.axes()
    for i, c in enumerate(counts):
        if c == 0:
            continue
        x0, x1 = frame.px(lo + i * width), frame.px(lo + (i + 1) * width)
        y = frame.py(c)
        frame.parts.append(
            f'<rect x="{x0 + 0.5:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 1, 0.5):.1f}" '
            f'height="{frame.py(0) - y:.1f}" fill="{fill}"><title>{escape(_fmt(lo + i * width))}'
            f"\u2013{escape(_fmt(lo + (i + 1) * width))}: {c}</title></rect>"
        )
    for k, (x, label) in enumerate(markers):
        if x is None or not math.isfinite(x) or not lo <= x <= hi:
            continue
        xp = frame.px(x)
        frame.parts.append(
            f'<line x1="{xp:.1f}" x2="{xp:.1f}" y1="{frame.py(0)}" y2="{MARGIN_T}" class="marker"/>'
            f'<text x="{xp + 3:.1f}" y="{MARGIN_T + 10 + 12 * k}" class="mk">{escape(label)}</text>'
        )
    return frame.render()


@dataclass
class Series:
    """One named set of points (or a line) in a scatter / line chart."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    point_labels: Sequence[str] | None = None
    y_err: Sequence[tuple[float, float]] | None = None  # (low, high) per point


def _legend(frame: Frame, names: Sequence[str]) -> None:
    if len(names) < 2:
        return
    x = frame.width - MARGIN_R - 120
    for i, name in enumerate(names):
        y = MARGIN_T + 4 + 14 * i
        frame.parts.append(
            f'<rect x="{x}" y="{y}" width="10" height="10" fill="{color(i)}"/>'
            f'<text x="{x + 14}" y="{y + 9}">{escape(name[:22])}</text>'
        )


def _bounds(values: list[float], pad: float = 0.05) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    span = hi - lo
    return lo - pad * span, hi + pad * span


def scatter(
    series: Sequence[Series],
    title: str,
    x_label: str,
    y_label: str,
    log_x: bool = False,
    y_range: tuple[float, float] | None = None,
    frontier: str | None = None,
    radius: float = 3.0,
) -> Markup:
    """Points per series; `frontier` ('min_x' or 'max_x', with y higher-is-better) draws the Pareto front."""
    pts: list[tuple[int, float, float, str | None, tuple[float, float] | None]] = []
    for i, s in enumerate(series):
        labels = s.point_labels or [None] * len(s.xs)
        errs = s.y_err or [None] * len(s.xs)
        for x, y, lab, err in zip(s.xs, s.ys, labels, errs, strict=True):
            if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
                continue
            if log_x:
                if x <= 0:
                    continue
                x = math.log10(x)
            pts.append((i, float(x), float(y), lab, err))
    if not pts:
        return empty(title, "no data")
    xs = [p[1] for p in pts]
    ys = [p[2] for p in pts] + [v for p in pts if p[4] for v in p[4] if v is not None and math.isfinite(v)]
    x_lo, x_hi = _bounds(xs)
    if log_x:
        x_lo, x_hi = math.floor(x_lo), math.ceil(x_hi)
    y_lo, y_hi = y_range if y_range else _bounds(ys)
    frame = Frame(x_lo, x_hi, y_lo, y_hi, title, x_label, y_label, log_x=log_x)
    frame.axes()
    if frontier:
        front = pareto_front([(p[1], p[2]) for p in pts], minimize_x=frontier == "min_x")
        if len(front) > 1:
            path = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in front)
            frame.parts.append(f'<polyline points="{path}" class="front"/>')
    for i, x, y, lab, err in pts:
        cx, cy = frame.px(x), frame.py(y)
        if err and all(v is not None and math.isfinite(v) for v in err):
            frame.parts.append(
                f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{frame.py(err[0]):.1f}" y2="{frame.py(err[1]):.1f}" '
                f'stroke="{color(i)}" stroke-width="1.5"/>'
            )
        tip = f"{lab}: " if lab else ""
        frame.parts.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{radius}" fill="{color(i)}" fill-opacity="0.75">'
            f"<title>{escape(tip)}{escape(_fmt(10 ** x if log_x else x))}, {escape(_fmt(y))}</title></circle>"
        )
        if lab:
            right = cx > frame.width * 0.6  # keep labels inside the plot: write them leftwards near the edge
            tx, anchor = (cx - 7, "end") if right else (cx + 7, "start")
            frame.parts.append(f'<text x="{tx:.1f}" y="{cy - 6:.1f}" text-anchor="{anchor}" class="pl">'
                               f"{escape(lab)}</text>")
    _legend(frame, [s.name for s in series])
    return frame.render()


def lines(series: Sequence[Series], title: str, x_label: str, y_label: str,
          y_range: tuple[float, float] | None = None) -> Markup:
    """One polyline per series (e.g. fraction of features above each threshold)."""
    all_x = [float(x) for s in series for x in s.xs]
    all_y = [float(y) for s in series for y in s.ys]
    if not all_x:
        return empty(title, "no data")
    y_lo, y_hi = y_range if y_range else _bounds(all_y)
    frame = Frame(min(all_x), max(all_x), y_lo, y_hi, title, x_label, y_label)
    frame.axes()
    for i, s in enumerate(series):
        path = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in zip(s.xs, s.ys, strict=True))
        frame.parts.append(f'<polyline points="{path}" fill="none" stroke="{color(i)}" stroke-width="2">'
                           f"<title>{escape(s.name)}</title></polyline>")
    _legend(frame, [s.name for s in series])
    return frame.render()


def interval_chart(rows: Sequence[tuple[str, float, float, float]], title: str, x_label: str,
                   markers: Sequence[tuple[float, str]] = ()) -> Markup:
    """Horizontal dot-and-whisker chart: one row per (name, estimate, low, high)."""
    rows = [r for r in rows if all(v is not None and math.isfinite(v) for v in r[1:])]
    if not rows:
        return empty(title, "no data")
    label_w = 150
    height = MARGIN_T + MARGIN_B + 26 * len(rows)
    values = [v for r in rows for v in r[1:]] + [m[0] for m in markers if m[0] is not None]
    lo, hi = _bounds(values)
    frame = Frame(lo, hi, 0, len(rows), title, x_label, "", width=WIDTH + 60, height=height)
    saved_l = MARGIN_L

    def px(x: float) -> float:
        return label_w + (x - lo) / ((hi - lo) or 1) * (frame.width - label_w - MARGIN_R)

    p = frame.parts
    y_axis = height - MARGIN_B
    for t in nice_ticks(lo, hi):
        x = px(t)
        p.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{MARGIN_T}" y2="{y_axis}" class="grid"/>')
        p.append(f'<text x="{x:.1f}" y="{y_axis + 16}" text-anchor="middle">{escape(_fmt(t))}</text>')
    p.append(f'<line x1="{label_w}" x2="{frame.width - MARGIN_R}" y1="{y_axis}" y2="{y_axis}" class="axis"/>')
    p.append(f'<text x="{(label_w + frame.width) / 2:.1f}" y="{height - 8}" text-anchor="middle" class="lab">'
             f"{escape(x_label)}</text>")
    p.append(f'<text x="{saved_l}" y="18" class="ttl">{escape(title)}</text>')
    for x, label in markers:
        if x is None or not math.isfinite(x):
            continue
        p.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{MARGIN_T}" y2="{y_axis}" class="marker"/>'
                 f'<text x="{px(x) + 3:.1f}" y="{MARGIN_T - 2}" class="mk">{escape(label)}</text>')
    for i, (name, est, low, high) in enumerate(rows):
        y = MARGIN_T + 13 + 26 * i
        p.append(f'<text x="{label_w - 8}" y="{y + 4}" text-anchor="end">{escape(name[:24])}</text>')
        p.append(f'<line x1="{px(low):.1f}" x2="{px(high):.1f}" y1="{y}" y2="{y}" stroke="{color(i)}" '
                 f'stroke-width="2.5"/>')
        p.append(f'<circle cx="{px(est):.1f}" cy="{y}" r="4.5" fill="{color(i)}"><title>{escape(name)}: '
                 f"{escape(_fmt(est))} [{escape(_fmt(low))}, {escape(_fmt(high))}]</title></circle>")
    return frame.render()


def pareto_front(points: Sequence[tuple[float, float]], minimize_x: bool) -> list[tuple[float, float]]:
    """Non-dominated points, sorted by x: y is higher-is-better; x is lower- or higher-is-better."""
    key = (lambda p: (p[0], -p[1])) if minimize_x else (lambda p: (-p[0], -p[1]))
    front: list[tuple[float, float]] = []
    best_y = -math.inf
    for x, y in sorted(points, key=key):
        if y > best_y:
            front.append((x, y))
            best_y = y
    return sorted(front)
