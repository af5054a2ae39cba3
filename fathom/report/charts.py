"""Inline SVG charts: no script, no external file, drawn the same offline and in mail readers.

Two kinds: a scatter of quality against tokens/s with the Pareto front, and rows of
intervals (a dot for the figure, a bar for its interval or tail, a hollow diamond for the
previous period). Every chart is a `<svg role="img">` with a `<title>`; the numbers it draws
are in the report's tables too, for readers whose mail client drops SVG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape

from fathom.report.model import ParetoChart, ParetoPoint

# Okabe-Ito: told apart by colour-blind readers too (yellow left out: too light on white).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
GRID, AXIS, INK, MUTED = "#e3e6ec", "#9aa1ad", "#1d2330", "#6b7280"
WIDTH = 560


def colours(names: Sequence[str]) -> dict[str, str]:
    """A stable colour per deployment name, in the order given."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 2.5, 5 x 10^k steps)."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step + 1e-9) + 1)]


def _scale(domain: tuple[float, float], pixels: tuple[float, float]) -> Callable[[float], float]:
    (d0, d1), (p0, p1) = domain, pixels
    span = (d1 - d0) or 1.0
    return lambda v: p0 + (v - d0) / span * (p1 - p0)


def _padded(
    values: Sequence[float], share: float, floor: float | None = None
) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = (high - low) * share or max(abs(high) * share, 0.05)
    low, high = low - pad, high + pad
    return (max(low, floor) if floor is not None else low), high


def _svg(width: int, height: int, title: str, body: Sequence[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, '
        f'sans-serif" font-size="12" style="max-width:100%;height:auto">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )


def _text(
    x: float, y: float, text: str, anchor: str = "start", fill: str = INK, **attrs: str
) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{escape(v)}"' for k, v in attrs.items())
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{fill}"{extra}>'
        f"{escape(text)}</text>"
    )


def _line(x1: float, y1: float, x2: float, y2: float, stroke: str, width: float = 1) -> str:
    return (
        f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
        f'stroke="{stroke}" stroke-width="{width}"/>'
    )


@dataclass(frozen=True, slots=True)
class Frame:
    """The plotting area inside a chart's margins."""

    left: float
    top: float
    right: float
    bottom: float


def _x_axis(frame: Frame, domain: tuple[float, float], label: str) -> list[str]:
    x = _scale(domain, (frame.left, frame.right))
    out = []
    for tick in nice_ticks(*domain):
        out.append(_line(x(tick), frame.top, x(tick), frame.bottom, GRID))
        out.append(_text(x(tick), frame.bottom + 15, f"{tick:g}", "middle", fill=MUTED))
    out.append(_line(frame.left, frame.bottom, frame.right, frame.bottom, AXIS))
    out.append(_text((frame.left + frame.right) / 2, frame.bottom + 32, label, "middle"))
    return out


def _y_axis(frame: Frame, domain: tuple[float, float], label: str) -> list[str]:
    y = _scale(domain, (frame.bottom, frame.top))
    out = []
    for tick in nice_ticks(*domain):
        out.append(_line(frame.left, y(tick), frame.right, y(tick), GRID))
        out.append(_text(frame.left - 6, y(tick) + 4, f"{tick:g}", "end", fill=MUTED))
    out.append(_line(frame.left, frame.top, frame.left, frame.bottom, AXIS))
    middle = (frame.top + frame.bottom) / 2
    out.append(_text(14, middle, label, "middle", transform=f"rotate(-90 14 {middle:.1f})"))
    return out


def pareto(chart: ParetoChart, palette: Mapping[str, str]) -> str:
    """Mean score against p50 tokens/s, one point per deployment, the front joined up."""
    frame = Frame(64, 50, WIDTH - 24, 316)
    points = chart.points
    xs = [p.tokens_per_s for p in points] + [
        p.previous_tokens_per_s for p in points if p.previous_tokens_per_s is not None
    ]
    ys = [v for p in points for v in (p.low, p.high)] + [
        p.previous_quality for p in points if p.previous_quality is not None
    ]
    x_dom, y_dom = _padded(xs, 0.15, 0.0), _padded(ys, 0.1, 0.0)
    x, y = _scale(x_dom, (frame.left, frame.right)), _scale(y_dom, (frame.bottom, frame.top))
    body = _x_axis(frame, x_dom, "decode tokens/s (p50 of user requests)")
    body += _y_axis(frame, y_dom, f"mean {chart.probe} score")
    front = sorted((p for p in points if p.on_front), key=lambda p: p.tokens_per_s)
    if len(front) > 1:
        path = " ".join(f"{x(p.tokens_per_s):.1f},{y(p.quality):.1f}" for p in front)
        body.append(
            f'<polyline points="{path}" fill="none" stroke="{INK}" stroke-width="1.5" '
            f'stroke-dasharray="5 4"/>'
        )
    for p in points:
        body += _pareto_point(p.model + " / " + p.deployment, p, palette, x, y)
    title = f"{chart.probe} score against tokens/s"
    legend = "filled: on the Pareto front (dashed); hollow: dominated; grey: previous period"
    body += _heading(title, legend)
    return _svg(WIDTH, 356, title, body)


def _heading(title: str, legend: str) -> list[str]:
    return [_text(8, 16, title, font_weight="bold"), _text(8, 33, legend, fill=MUTED)]


def _pareto_point(
    name: str, p: ParetoPoint, palette: Mapping[str, str],
    x: Callable[[float], float], y: Callable[[float], float],
) -> list[str]:  # fmt: skip
    colour = palette.get(name, INK)
    cx, cy = x(p.tokens_per_s), y(p.quality)
    out = [_line(cx, y(p.low), cx, y(p.high), colour, 1.5)]
    if p.previous_tokens_per_s is not None and p.previous_quality is not None:
        px, py = x(p.previous_tokens_per_s), y(p.previous_quality)
        out.append(_line(px, py, cx, cy, AXIS))
        out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="white" stroke="{AXIS}"/>')
    fill = colour if p.on_front else "white"
    out.append(
        f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="6" fill="{fill}" stroke="{colour}" '
        f'stroke-width="2"/>'
    )
    # The front falls from upper left to lower right: a label right of its point goes above
    # it, a label left of it below, and the front line stays clear of both.
    anchor, dx, dy = ("end", -10.0, 20.0) if cx > WIDTH * 0.7 else ("start", 10.0, -9.0)
    out.append(_text(cx + dx, cy + dy, name, anchor, fill=colour, font_weight="bold"))
    return out


@dataclass(frozen=True, slots=True)
class IntervalRow:
    """One deployment in an interval chart."""

    label: str
    colour: str
    value: float
    low: float
    high: float
    previous: float | None


def intervals(
    title: str, rows: Sequence[IntervalRow], axis_label: str, legend: str,
    domain: tuple[float, float] | None = None,
) -> str:  # fmt: skip
    """A row per deployment: a bar from low to high, a dot at the value, a diamond before."""
    height = 86 + 28 * len(rows)
    frame = Frame(170, 46, WIDTH - 24, height - 40)
    values = [v for r in rows for v in (r.low, r.high, r.value)]
    values += [r.previous for r in rows if r.previous is not None]
    dom = domain or _padded(values, 0.08, 0.0)
    x = _scale(dom, (frame.left, frame.right))
    body = _x_axis(frame, dom, axis_label)
    body += _heading(title, legend)
    for i, r in enumerate(rows):
        cy = frame.top + 14 + 28 * i
        label = r.label if len(r.label) <= 26 else r.label[:25] + "…"
        body.append(_text(frame.left - 8, cy + 4, label, "end"))
        if r.previous is not None:  # under the dot, so an unchanged figure shows both
            px = x(r.previous)
            body.append(f'<path d="M{px:.1f} {cy - 8} l8 8 l-8 8 l-8 -8 z" fill="white" '
                        f'stroke="{INK}" stroke-width="1.2"/>')  # fmt: skip
        body.append(_line(x(r.low), cy, x(r.high), cy, r.colour, 4))
        body.append(f'<circle cx="{x(r.value):.1f}" cy="{cy}" r="5" fill="{r.colour}" '
                    f'stroke="white" stroke-width="1"/>')  # fmt: skip
    return _svg(WIDTH, height, title, body)
