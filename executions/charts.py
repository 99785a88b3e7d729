"""Charts for the admin's metrics page, drawn on the server as SVG: no script, no library.

Each function turns hourly series (executions.metrics.hourly) into the
shapes of one chart; `admin/executions/chart.html` draws them. Every bar and
point carries a <title>, which browsers show on hover, with its exact value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

WIDTH, HEIGHT = 540, 200
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 12, 30
PLOT_WIDTH, PLOT_HEIGHT = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
# Colours by run status; an unknown status gets the last.
STATUS_COLOURS = {
    "completed": "#2e7d32",
    "failed": "#c62828",
    "timeout": "#ef6c00",
    "cancelled": "#757575",
    "rejected": "#6a1b9a",
    "running": "#1565c0",
    "queued": "#90a4ae",
}
OTHER_COLOUR = "#455a64"
LINE_COLOUR = "#1565c0"


@dataclass
class Chart:
    title: str
    unit: str
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    plot_right: int = WIDTH - RIGHT
    plot_bottom: int = TOP + PLOT_HEIGHT
    bars: list[dict] = field(default_factory=list)
    points: list[dict] = field(default_factory=list)
    polyline: str = ""
    y_ticks: list[dict] = field(default_factory=list)
    x_labels: list[dict] = field(default_factory=list)
    legend: list[dict] = field(default_factory=list)
    empty: bool = True
    scale: float = 1.0  # the value drawn at the top of the plot


def stacked_bars(
    title: str,
    unit: str,
    hours: list[datetime],
    series: dict[str, list[float]],
    fmt=str,
    whole: bool = True,
) -> Chart:
    """One bar an hour, its parts stacked in the order of `series` (name -> 24 values).

    `whole`: the values are counts, so the axis has whole-number ticks.
    """
    chart = _frame(title, unit, hours, _max_stack(series), fmt, whole)
    slot = PLOT_WIDTH / len(hours)
    scale = chart.scale
    for n, hour in enumerate(hours):
        base = 0.0
        for name, values in series.items():
            value = values[n]
            if not value:
                continue
            top = base + value
            chart.bars.append(
                {
                    "x": round(LEFT + n * slot + slot * 0.12, 1),
                    "y": round(_y(top, scale), 1),
                    "width": round(slot * 0.76, 1),
                    "height": round(_y(base, scale) - _y(top, scale), 1),
                    "colour": STATUS_COLOURS.get(name, OTHER_COLOUR)
                    if len(series) > 1
                    else LINE_COLOUR,
                    "title": f"{hour:%H}:00 {name}: {fmt(value)}{unit}",
                }
            )
            base = top
            chart.empty = False
    if len(series) > 1:
        chart.legend = [
            {"name": name, "colour": STATUS_COLOURS.get(name, OTHER_COLOUR)} for name in series
        ]
    return chart


def line(
    title: str, unit: str, hours: list[datetime], values: list[float | None], fmt=str
) -> Chart:
    """A point an hour with a value, joined; hours without one are left out."""
    known = [value for value in values if value is not None]
    chart = _frame(title, unit, hours, max(known, default=0), fmt, whole=False)
    slot = PLOT_WIDTH / len(hours)
    coordinates = []
    for n, (hour, value) in enumerate(zip(hours, values, strict=True)):
        if value is None:
            continue
        x, y = round(LEFT + (n + 0.5) * slot, 1), round(_y(value, chart.scale), 1)
        coordinates.append(f"{x},{y}")
        chart.points.append({"x": x, "y": y, "title": f"{hour:%H}:00: {fmt(value)}{unit}"})
        chart.empty = False
    chart.polyline = " ".join(coordinates)
    return chart


def _frame(
    title: str, unit: str, hours: list[datetime], max_value: float, fmt, whole: bool
) -> Chart:
    chart = Chart(title=title, unit=unit)
    top = 4 * _nice_step(max_value / 4, whole)
    chart.scale = top
    chart.y_ticks = [
        {"y": round(_y(top * k / 4, top), 1), "label": fmt(_tidy(top * k / 4))} for k in range(5)
    ]
    slot = PLOT_WIDTH / len(hours)
    chart.x_labels = [
        {"x": round(LEFT + (n + 0.5) * slot, 1), "label": f"{hour:%H}"}
        for n, hour in enumerate(hours)
        if n % 3 == 0 or n == len(hours) - 1
    ]
    return chart


def _y(value: float, top: float) -> float:
    return TOP + PLOT_HEIGHT * (1 - value / top)


def _max_stack(series: dict[str, list[float]]) -> float:
    if not series:
        return 0
    return max(sum(values) for values in zip(*series.values(), strict=True))


def _nice_step(value: float, whole: bool) -> float:
    """Return 1, 2, 2.5 or 5 times a power of ten, at least `value`; at least 1 when `whole`."""
    if value <= 0 or (whole and value <= 1):
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power and not (whole and (step * power) % 1):
            return step * power
    return 10 * power


def _tidy(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 10)
