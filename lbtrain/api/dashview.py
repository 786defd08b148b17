"""Pure view helpers of the dashboard: durations, timelines, metric tables and inline SVG charts.

No Flask, no I/O: the templates get plain values from here, so the rules (what "queued" means,
how a bar is scaled) are unit-tested without a browser. SVG is built with escaping and returned
as `Markup`; charts use presentation attributes only, so the page's CSP needs no inline styles.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup, escape

from lbtrain import domain as d

# Status → CSS class of its badge (colours chosen for ≥ 4.5:1 contrast in dashboard.css).
BADGE = {
    d.QUEUED: "queued", d.PENDING: "queued", d.LAUNCHING: "running", d.RUNNING: "running",
    d.SUCCEEDED: "ok", d.FAILED: "bad", d.CANCELLING: "warn", d.CANCELLED: "muted", d.SKIPPED: "muted",
}


def as_datetime(value: Any) -> datetime | None:
    """Firestore timestamps arrive as datetimes; JSON round trips leave ISO strings."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def seconds_between(start: Any, end: Any) -> float | None:
    a, b = as_datetime(start), as_datetime(end)
    if a is None or b is None:
        return None
    return max(0.0, (b - a).total_seconds())


def fmt_duration(seconds: float | None) -> str:
    """`—`, `850 ms`, `42 s`, `3 m 05 s`, `2 h 04 m`, `3 d 4 h`: readable at a glance."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} m {s:02d} s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h} h {m:02d} m"
    days, h = divmod(h, 24)
    return f"{days} d {h} h"


def fmt_time(value: Any) -> str:
    t = as_datetime(value)
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "—"


def iso(value: Any) -> str:
    t = as_datetime(value)
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t else ""


def fmt_number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}"


@dataclass(frozen=True)
class StageRow:
    stage: str
    state: str
    attempt: int
    queued: str
    running: str
    started: Any
    ended: Any
    job: dict[str, Any]
    error: str
    outputs_uri: str
    attempts: list[dict[str, Any]]
    current: bool
    machine: str = ""  # what the attempt runs on (a JOB_MACHINES entry, or "local")
    retry_at: Any = None  # an automatic retry waits for its back-off until then (docs/architecture.md §7.8)


def stage_rows(run: dict[str, Any], steps: list[dict[str, Any]], now: datetime) -> list[StageRow]:
    """The stage timeline.

    queued: from the moment the stage could start to the moment its job was running. A stage can
    start when the previous one ended (for the first: the run's creation, or a rule run's release,
    when its modelrun step was added); a retried attempt when it was claimed again (its
    `launched_at`), since the retry request time is not recorded.
    running: from the job running to its end (or to now while it runs).
    """
    rows = []
    steps = sorted(steps, key=lambda s: s.get("index", 0))
    prev_end: Any = run.get("released_at") or run.get("created_at")
    prev_ok = True
    for step in steps:
        state = step.get("state", "")
        attempt = int(step.get("attempt") or 1)
        ready = prev_end if attempt == 1 and prev_ok else step.get("launched_at")
        if step.get("started_at"):
            queued = seconds_between(ready, step["started_at"])
        elif state in (d.PENDING, d.LAUNCHING) and prev_ok and ready and run.get("status") in d.ACTIVE_RUN_STATUSES:
            queued = seconds_between(ready, now)
        else:
            queued = None
        if step.get("started_at"):
            running = seconds_between(step["started_at"], step.get("ended_at") or (
                now if state == d.RUNNING else None))
        else:
            running = None
        rows.append(StageRow(
            stage=step.get("stage", "?"), state=state, attempt=attempt, queued=fmt_duration(queued),
            running=fmt_duration(running), started=step.get("started_at"), ended=step.get("ended_at"),
            job=step.get("job") or {}, error=step.get("error") or "", outputs_uri=step.get("outputs_uri") or "",
            attempts=list(step.get("attempts") or []), current=step.get("stage") == run.get("stage"),
            machine=step.get("machine") or "", retry_at=step.get("not_before") if state == d.PENDING else None,
        ))
        prev_end = step.get("ended_at")
        prev_ok = state in (d.SUCCEEDED, d.SKIPPED)
    return rows


def run_duration(run: dict[str, Any], now: datetime) -> str:
    end = run.get("finished_at") or (now if run.get("status") in d.ACTIVE_RUN_STATUSES else run.get("updated_at"))
    return fmt_duration(seconds_between(run.get("created_at"), end))


def scalar_metrics(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, fmt_number(v)) for k, v in sorted(d.headline(metrics or {}).items())]


def per_class(metrics: dict[str, Any]) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    """Columns and rows of the per-class table: the numeric fields every class shares, classes by
    name (Firestore does not keep a map's insertion order)."""
    table = (metrics or {}).get("per_class") or {}
    rows = sorted(((str(name), row) for name, row in table.items() if isinstance(row, dict)), key=lambda r: r[0])
    if not rows:
        return [], []
    preferred = ["precision", "recall", "f1", "ap50", "support"]
    keys = [k for k in preferred if all(isinstance(r.get(k), int | float) for _, r in rows)]
    return keys, rows


def bar_metric(columns: list[str]) -> str | None:
    for key in ("f1", "ap50", "recall", "precision"):
        if key in columns:
            return key
    return None


def svg_bars(items: list[tuple[str, float | None]], *, title: str, maximum: float = 1.0,
             width: int = 360, bar_height: int = 18, label_width: int = 120) -> Markup:
    """Horizontal bars for values in [0, maximum], labelled; a missing value draws no bar."""
    gap = 6
    height = max(1, len(items)) * (bar_height + gap) + gap
    plot = width - label_width - 56
    parts = [f'<svg class="bars" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" '
             f'width="100%" preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}</title>"]
    for i, (label, value) in enumerate(items):
        y = gap + i * (bar_height + gap)
        short = label if len(label) <= 18 else label[:17] + "…"
        parts.append(f'<text x="{label_width - 6}" y="{y + bar_height * 0.72:.1f}" text-anchor="end" '
                     f'font-size="12" fill="#1d2939">{escape(short)}</text>')
        parts.append(f'<rect x="{label_width}" y="{y}" width="{plot}" height="{bar_height}" fill="#eaecf0"/>')
        if isinstance(value, int | float):
            frac = min(1.0, max(0.0, float(value) / maximum)) if maximum > 0 else 0.0
            parts.append(f'<rect class="bar" x="{label_width}" y="{y}" width="{frac * plot:.1f}" '
                         f'height="{bar_height}" fill="#175cd3" data-value="{float(value):.4f}"/>')
            text = f"{float(value):.3f}"
        else:
            text = "n/a"
        parts.append(f'<text x="{label_width + plot + 6}" y="{y + bar_height * 0.72:.1f}" font-size="12" '
                     f'fill="#1d2939">{text}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _frame(title: str, css: str, values: list[float], width: int, height: int
           ) -> tuple[list[str], tuple[int, int, int, int], float]:
    """An SVG chart's opening, title and y grid (0 to max(1, values)): (parts, plot box x0 x1 y0 y1, top)."""
    pad_l, pad_r, pad_t, pad_b = 44, 12, 12, 28
    parts = [f'<svg class="{css}" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" '
             f'width="100%" preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}</title>"]
    x0, x1, y0, y1 = pad_l, width - pad_r, height - pad_b, pad_t
    top = max([1.0, *values])
    for frac in (0.0, 0.5, 1.0):
        y = y0 - frac * (y0 - y1)
        parts.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#d0d5dd" stroke-width="1"/>')
        parts.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
                     f'fill="#344054">{frac * top:.2f}</text>')
    return parts, (x0, x1, y0, y1), top


def _runs_chart(title: str, css: str, points: list[tuple[float, float, str, str, str]], ends: tuple[str, str],
               champion_run: str, width: int, height: int) -> Markup:
    """One dot per run joined by a line, the champion's dot larger and green. A point is (x value,
    metric, run_id, extra data- attributes, hover text after "run_id: metric"); x spans the points'
    range, y 0 to max(1, metrics); `ends` label the x axis's two ends (escaped by the caller)."""
    parts, (x0, x1, y0, y1), top = _frame(title, css, [p[1] for p in points], width, height)
    if points:
        lo, span = points[0][0], points[-1][0] - points[0][0]

        def frac(x: float) -> float:  # where on the x axis: one run in the middle, equal ones at the left
            return 0.5 if len(points) == 1 else (x - lo) / span if span else 0.0

        coords = [(x0 + (x1 - x0) * frac(p[0]), y0 - (y0 - y1) * (p[1] / top)) for p in points]
        if len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            parts.append(f'<polyline points="{path}" fill="none" stroke="#175cd3" stroke-width="2"/>')
        for (x, y), (_, value, run_id, attrs, hover) in zip(coords, points, strict=True):
            champ = run_id == champion_run
            parts.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="{6 if champ else 4}" '
                         f'fill="{"#1a7f37" if champ else "#175cd3"}" stroke="#ffffff" stroke-width="1.5" '
                         f'data-run="{escape(run_id)}"{attrs}><title>{escape(run_id)}: {value:.4f}{hover}'
                         f'{" (champion)" if champ else ""}</title></circle>')
        parts.append(f'<text x="{x0}" y="{height - 8}" font-size="11" fill="#344054">{ends[0]}</text>')
        parts.append(f'<text x="{x1}" y="{height - 8}" text-anchor="end" font-size="11" fill="#344054">'
                     f'{ends[1]}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def svg_by_labels(points: list[tuple[int, float, str]], *, title: str, champion_run: str = "",
                  width: int = 640, height: int = 220) -> Markup:
    """The headline metric against the labeled examples each run learned from: (labels, value, run_id),
    x from the fewest to the most labels, y from 0 to max(1, values); runs joined in label order."""
    pts = sorted(points, key=lambda p: (p[0], p[2]))
    plotted = [(float(n), v, run_id, f' data-labels="{n}"', f" with {n} labels") for n, v, run_id in pts]
    ends = (f"{pts[0][0]} labels", f"{pts[-1][0]} labels") if pts else ("", "")
    return _runs_chart(title, "series labels", plotted, ends, champion_run, width, height)


def svg_series(points: list[tuple[datetime, float, str]], *, title: str, champion_run: str = "",
               width: int = 640, height: int = 220) -> Markup:
    """A metric over time: one dot per run (time on x, value on y, y from 0 to max(1, values)),
    joined by a line; the champion's dot is ringed. Points are (time, value, run_id)."""
    pts = sorted(points, key=lambda p: p[0])
    plotted = [(t.timestamp(), v, run_id, "", f" at {fmt_time(t)}") for t, v, run_id in pts]
    ends = (escape(fmt_time(pts[0][0])[:10]), escape(fmt_time(pts[-1][0])[:10])) if pts else ("", "")
    return _runs_chart(title, "series", plotted, ends, champion_run, width, height)


def headline_value(run: dict[str, Any], metric: str) -> float | None:
    value = (run.get("metrics") or {}).get(metric)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def svg_progress(history: list[dict[str, Any]], *, total: int, unit: str, metric: str,
                 width: int = 640, height: int = 200) -> Markup:
    """A running training's curves: loss (blue, scaled to its largest value, left axis) and the
    validation metric (green, 0 to max(1, values), right axis) per `unit`, x from 1 to `total`
    (or the last reported unit). Points are dicts {"done", "loss", "value"} (lbtrain.progress)."""
    pad_l, pad_r, pad_t, pad_b = 48, 48, 12, 28
    x0, x1, y0, y1 = pad_l, width - pad_r, height - pad_b, pad_t
    label = f"training loss and validation {metric or 'score'} per {unit}"
    parts = [f'<svg class="progress-chart" role="img" aria-label="{escape(label)}" viewBox="0 0 {width} {height}" '
             f'width="100%" preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(label)}</title>"]
    pts = sorted((p for p in history if isinstance(p.get("done"), int)), key=lambda p: p["done"])
    last = max([int(total), *(p["done"] for p in pts), 1])
    losses = [p["loss"] for p in pts if isinstance(p.get("loss"), int | float)]
    values = [p["value"] for p in pts if isinstance(p.get("value"), int | float)]
    loss_top = max([*losses, 1e-9])
    value_top = max([1.0, *values])

    def x(done: int) -> float:
        return x0 + (x1 - x0) * ((done - 1) / (last - 1) if last > 1 else 0.5)

    for frac in (0.0, 0.5, 1.0):
        y = y0 - frac * (y0 - y1)
        parts.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#d0d5dd" stroke-width="1"/>')
        if losses:
            parts.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
                         f'fill="#175cd3">{frac * loss_top:.3g}</text>')
        if values:
            parts.append(f'<text x="{x1 + 6}" y="{y + 4:.1f}" font-size="11" '
                         f'fill="#1a7f37">{frac * value_top:.2f}</text>')
    for key, top, colour, name in (("loss", loss_top, "#175cd3", "loss"),
                                   ("value", value_top, "#1a7f37", f"validation {metric or 'score'}")):
        series = [(x(p["done"]), y0 - (y0 - y1) * (float(p[key]) / top), p["done"], float(p[key]))
                  for p in pts if isinstance(p.get(key), int | float)]
        if len(series) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in series)
            parts.append(f'<polyline class="{key}" points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for px, py, done, val in series:
            parts.append(f'<circle class="{key}" cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}" '
                         f'data-done="{done}" data-value="{val:.6g}"><title>{escape(unit)} {done}: '
                         f'{escape(name)} {val:.4g}</title></circle>')
    parts.append(f'<text x="{x0}" y="{height - 8}" font-size="11" fill="#344054">{escape(unit)} 1</text>')
    parts.append(f'<text x="{x1}" y="{height - 8}" text-anchor="end" font-size="11" fill="#344054">'
                 f'{escape(unit)} {last}</text>')
    legend = (['<tspan fill="#175cd3">— loss</tspan>'] if losses else []) + (
        [f'<tspan fill="#1a7f37">— validation {escape(metric or "score")}</tspan>'] if values else [])
    parts.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{height - 8}" text-anchor="middle" font-size="11">'
                 f'{" ".join(legend)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
