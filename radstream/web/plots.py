"""Inline SVG plots made on the server (no script, no external assets)."""

from __future__ import annotations

from datetime import date
from typing import Any

from markupsafe import Markup, escape

W, H = 560, 260
L, R, T, B = 56, 40, 16, 44


def _num(v: float) -> str:
    return f"{v:.1f}"


def volume_over_time(points: list[tuple[date, float, bool]], *, unit: str = "mL", baseline: float | None = None,
                     threshold_pct: float | None = None, title: str = "volume") -> Markup:
    """A line plot of (date, value, is_current) points; baseline and progression threshold as dashed lines."""
    if not points:
        return Markup("")
    days = [p[0].toordinal() for p in points]
    vals = [p[1] for p in points]
    refs = list(vals)
    limit = None
    if baseline is not None and threshold_pct is not None:
        limit = baseline * (1 + threshold_pct / 100.0)
        refs.append(limit)
    lo, hi = 0.0, max(refs) * 1.15 or 1.0
    d0, d1 = min(days), max(days)
    span = max(d1 - d0, 1)

    def x(d: int) -> float:
        return L + (W - L - R) * ((d - d0) / span if d1 > d0 else 0.5)

    def y(v: float) -> float:
        return T + (H - T - B) * (1 - (v - lo) / (hi - lo))

    out: list[str] = [f'<svg class="plot" role="img" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
                      f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)} over time</title>']
    out.append(f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="#888"/>')
    out.append(f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="#888"/>')
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        out.append(f'<text x="{L - 6}" y="{_num(y(v) + 4)}" font-size="11" text-anchor="end" fill="#444">'
                   f'{v:.1f}</text>')
        out.append(f'<line x1="{L}" y1="{_num(y(v))}" x2="{W - R}" y2="{_num(y(v))}" stroke="#eee"/>')
    out.append(f'<text x="12" y="{T + (H - T - B) / 2:.0f}" font-size="11" fill="#444" '
               f'transform="rotate(-90 12 {T + (H - T - B) / 2:.0f})" text-anchor="middle">{escape(unit)}</text>')
    if baseline is not None:
        out.append(f'<line class="baseline" x1="{L}" y1="{_num(y(baseline))}" x2="{W - R}" y2="{_num(y(baseline))}"'
                   ' stroke="#2a7" stroke-dasharray="4 3"><title>baseline</title></line>')
    if limit is not None:
        out.append(f'<line class="threshold" x1="{L}" y1="{_num(y(limit))}" x2="{W - R}" y2="{_num(y(limit))}"'
                   f' stroke="#d33" stroke-dasharray="6 4"><title>progression threshold '
                   f'(+{threshold_pct:.0f}% of baseline)</title></line>')
    path = " ".join(f"{_num(x(d))},{_num(y(v))}" for d, v in zip(days, vals, strict=True))
    out.append(f'<polyline points="{path}" fill="none" stroke="#1f5fbf" stroke-width="2"/>')
    for (dt, v, current), d in zip(points, days, strict=True):
        r = 6 if current else 4
        fill = "#f0a000" if current else "#1f5fbf"
        out.append(f'<circle class="point" cx="{_num(x(d))}" cy="{_num(y(v))}" r="{r}" fill="{fill}">'
                   f'<title>{escape(dt.isoformat())}: {v:.2f} {escape(unit)}</title></circle>')
        out.append(f'<text x="{_num(x(d))}" y="{H - B + 16}" font-size="10" text-anchor="middle" fill="#444">'
                   f'{escape(dt.isoformat())}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def bars(items: list[tuple[str, float | None]], *, unit: str, title: str) -> Markup:
    """Horizontal bars, one per (label, value)."""
    rows = [(k, v) for k, v in items]
    if not rows:
        return Markup("")
    top = max((v for _, v in rows if v is not None), default=0.0) or 1.0
    h = 24 * len(rows) + 30
    out = [f'<svg class="plot" role="img" viewBox="0 0 {W} {h}" width="{W}" height="{h}" '
           f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
           f'<text x="4" y="14" font-size="12" fill="#222">{escape(title)} ({escape(unit)})</text>']
    for i, (label, v) in enumerate(rows):
        yy = 24 + 24 * i
        out.append(f'<text x="150" y="{yy + 13}" font-size="11" text-anchor="end" fill="#222">{escape(label)}</text>')
        if v is None:
            out.append(f'<text x="156" y="{yy + 13}" font-size="11" fill="#888">no data</text>')
            continue
        wv = (W - 230) * v / top
        out.append(f'<rect x="156" y="{yy}" width="{wv:.1f}" height="16" fill="#1f5fbf"/>')
        out.append(f'<text x="{160 + wv:.1f}" y="{yy + 13}" font-size="11" fill="#222">{v:.2f}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def series_from_longitudinal(rows: list[dict[str, Any]],
                             current_result: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """v_longitudinal rows grouped per (measurement, label)."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        key = (str(r["measurement"]), str(r["label"]))
        out.setdefault(key, []).append({**r, "current": r["result_id"] == current_result})
    return out
