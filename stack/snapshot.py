"""`make dashboard-snapshot`: every panel of the chart's Grafana dashboards drawn from live queries into
PNG images with matplotlib (headless), for reviewing a dashboard change without Grafana.

The queries run as Grafana runs them (stack/dashboards.py). For each dashboard it writes
`<out>/<uid>.png`, the panels laid out as the dashboard's gridPos places them (a repeated panel once per
value), and `<out>/<uid>/<panel id>-<copy>.png`, one image per panel; `<out>/summary.txt` lists every
panel with ok, "no data" or its error. Time series are drawn as lines, stats as big numbers, tables as
tables; a panel whose query fails is drawn as an error (red), one with no data says so.

Settings (environment), defaulting to what `make up` runs:
  DASHBOARD_PROMETHEUS_URL   Prometheus base URL (http://127.0.0.1:$VT_PROMETHEUS_PORT, 19090)
  DASHBOARD_DATABASE_URL     Postgres DSN (postgresql://visiontrack@127.0.0.1:$VT_PG_PORT/visiontrack, 15432)
  DASHBOARD_SCRAPE_INTERVAL  Prometheus' scrape interval, Grafana's minimum interval (5s: make up's)
  DASHBOARD_WINDOW           time range ending now, e.g. 30m or 6h (default: each dashboard's own)
  DASHBOARD_VARIABLES        variable values, e.g. "device=3 metric=temperature,humidity namespace=All"
                             (default: what each variable's query finds, as Grafana opens the dashboard)
  DASHBOARD_OUT              output folder (run/dashboards)
"""
from __future__ import annotations

import math
import os
import re
import sys
import textwrap
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display, files only

import matplotlib.dates as mdates  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from . import dashboards  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# One grid unit: Grafana's 24 columns across, rows of 30 px; drawn at this many inches.
COLUMN_INCHES = 0.9
ROW_INCHES = 0.32
ERROR_COLOR = "#b00020"
ERROR_BACKGROUND = "#fdecea"  # an error panel's fill: no series or text is drawn in it
MUTED = "#6e6e6e"


# --- values as Grafana's units show them -----------------------------------------------------------

def format_value(value: float | None, unit: str | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if unit == "percentunit":
        return f"{value * 100:.{digits}g}%"
    if unit == "s":
        for size, suffix in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s"), (1e-3, "ms"), (1e-6, "µs")):
            if abs(value) >= size:
                return f"{value / size:.{digits}g} {suffix}"
        return "0 s" if value == 0 else f"{value * 1e9:.{digits}g} ns"
    if unit == "bytes":
        for size, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(value) >= size:
                return f"{value / size:.{digits}g} {suffix}"
        return f"{value:.0f} B"
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= size:
            return f"{value / size:.{digits}g}{suffix}"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _cell(value) -> str:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


# --- one panel -------------------------------------------------------------------------------------

@dataclass
class Drawn:
    """A panel copy as drawn: its results, and what it showed."""

    dashboard: str
    panel: dict
    title: str
    copy: int
    results: list[dashboards.Result]
    window: dashboards.TimeRange

    @property
    def errors(self) -> list[str]:
        return [f"{r.query.ref}: {r.error}" for r in self.results if r.error]

    @property
    def status(self) -> str:
        if self.errors:
            return "error"
        return "ok" if any(r.has_data for r in self.results) else "no data"


def _unit(panel: dict) -> str | None:
    return ((panel.get("fieldConfig") or {}).get("defaults") or {}).get("unit")


def plain(text: str) -> str:
    """Text as written: matplotlib reads $...$ as math, and Grafana's titles hold $variables."""
    return text.replace("$", r"\$")


def _frame(ax, title: str, color: str = "black") -> None:
    ax.set_title(plain(title), loc="left", fontsize=9, fontweight="bold", color=color)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=7)


def _message(ax, text: str, color: str = MUTED) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, plain(text), ha="center", va="center", fontsize=9, color=color, wrap=True, transform=ax.transAxes)


def draw_error(ax, drawn: Drawn) -> None:
    _frame(ax, drawn.title + "  (query failed)", ERROR_COLOR)
    ax.set_facecolor(ERROR_BACKGROUND)
    for spine in ax.spines.values():
        spine.set_color(ERROR_COLOR)
        spine.set_visible(True)
    text = "\n".join(textwrap.fill(e, 90, max_lines=3, placeholder=" ...") for e in drawn.errors)
    _message(ax, text, ERROR_COLOR)


def _time_axis(ax, window: dashboards.TimeRange) -> None:
    """The whole time range across, as Grafana draws it (data only at the right end is shown so)."""
    locator = mdates.AutoDateLocator(tz=timezone.utc, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=timezone.utc, show_offset=False))
    ax.set_xlim(window.start, window.end)


def _value_axis(ax, unit: str | None) -> None:
    if unit in ("s", "bytes", "percentunit"):
        ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: format_value(v, unit, digits=4)))
    else:  # plain numbers: matplotlib picks the decimals the ticks need
        ax.yaxis.set_major_formatter(mticker.ScalarFormatter(useOffset=False))


def draw_timeseries(ax, drawn: Drawn) -> None:
    _frame(ax, drawn.title)
    series = [s for r in drawn.results for s in r.series if any(math.isfinite(v) for _, v in s.points)]
    if not series:
        return _message(ax, "No data")
    _time_axis(ax, drawn.window)
    for s in series:
        times = [datetime.fromtimestamp(t, timezone.utc) for t, _ in s.points]
        ax.plot(times, [v for _, v in s.points], linewidth=1.2, label=plain(s.name) or "(no name)")
    _value_axis(ax, _unit(drawn.panel))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", frameon=False, ncol=2)


def _last(points: list[tuple[float, float]]) -> float | None:
    """Grafana's lastNotNull reduction."""
    return next((v for _, v in reversed(points) if math.isfinite(v)), None)


def draw_stat(ax, drawn: Drawn) -> None:
    _frame(ax, drawn.title)
    ax.set_xticks([])
    ax.set_yticks([])
    values = [(s.name, _last(s.points)) for r in drawn.results for s in r.series if s.points]
    if not values:
        return _message(ax, "No data")
    unit = _unit(drawn.panel)
    width = max(10, 110 // len(values))  # characters a name may take under its number before it wraps
    for i, (name, value) in enumerate(values):
        x = (i + 0.5) / len(values)
        ax.text(x, 0.55, format_value(value, unit), ha="center", va="center", fontsize=22 if len(values) < 4 else 14,
                fontweight="bold", color="#1f77b4", transform=ax.transAxes)
        ax.text(x, 0.2, plain(textwrap.fill(name, width)), ha="center", va="center", fontsize=6 if len(values) > 4 else 7,
                color=MUTED, transform=ax.transAxes)


def draw_table(ax, drawn: Drawn, max_rows: int = 12) -> None:
    _frame(ax, drawn.title)
    ax.set_xticks([])
    ax.set_yticks([])
    result = next((r for r in drawn.results if r.columns), None)
    if result is None:  # a Prometheus table: one row per series, its last value
        rows = [(s.name, _last(s.points)) for r in drawn.results for s in r.series]
        columns = ["series", "value"]
    else:
        rows, columns = result.rows, result.columns
    if not rows:
        return _message(ax, "No data")
    shown = [[plain(_cell(c)) for c in row] for row in rows[:max_rows]]
    table = ax.table(cellText=shown, colLabels=[plain(c) for c in columns], loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    if len(rows) > max_rows:
        ax.text(1, 0, f"{len(rows) - max_rows} more rows", ha="right", va="bottom", fontsize=7, color=MUTED,
                transform=ax.transAxes)


DRAWERS = {"timeseries": draw_timeseries, "stat": draw_stat, "table": draw_table}


def draw_panel(ax, drawn: Drawn) -> None:
    if drawn.errors:
        return draw_error(ax, drawn)
    drawer = DRAWERS.get(drawn.panel.get("type"))
    if drawer is None:  # another kind: as a graph if it has series, else as a table
        drawer = draw_timeseries if any(r.series for r in drawn.results) else draw_table
    drawer(ax, drawn)


# --- a dashboard -----------------------------------------------------------------------------------

def panel_copies(board: dict, results: list[dashboards.Result], uid: str, window: dashboards.TimeRange) -> list[Drawn]:
    """The results grouped per panel copy, in dashboard order (a repeated panel's copies in turn)."""
    out: list[Drawn] = []
    for panel in dashboards.all_panels(board):
        if panel.get("type") == "row":
            continue
        mine = [r for r in results if r.query.kind == "panel" and r.query.panel is panel]
        refs = max(1, len(dashboards.panel_queries(panel)))
        chunks = [mine[i:i + refs] for i in range(0, len(mine), refs)] or [[]]
        out += [Drawn(uid, panel, chunk[0].title if chunk else panel.get("title", ""), i, chunk, window)
                for i, chunk in enumerate(chunks)]
    return out


def layout(board: dict, drawn: list[Drawn]) -> list[tuple[dict, dict | Drawn]]:
    """(gridPos, row panel or Drawn) of everything to draw; a panel repeated vertically takes its height
    once per copy, pushing what is below it down, as Grafana does."""
    placed: list[tuple[dict, dict | Drawn]] = []
    items = [p for p in board.get("panels", []) if p.get("type") == "row"] + list(drawn)
    items.sort(key=lambda it: (_pos(it)["y"], _pos(it)["x"], getattr(it, "copy", 0)))
    shift = 0  # grid rows added above by vertical repeats
    for item in items:
        pos = dict(_pos(item))
        pos["y"] += shift
        if isinstance(item, Drawn) and item.panel.get("repeat"):
            copies = sum(1 for d in drawn if d.panel is item.panel)
            if item.panel.get("repeatDirection", "h") == "v":
                pos["y"] += item.copy * pos["h"]
                if item.copy == copies - 1:  # the copies are consecutive: shift what follows once
                    shift += (copies - 1) * pos["h"]
            else:
                pos["w"] = max(1, pos["w"] // copies)
                pos["x"] += item.copy * pos["w"]
        placed.append((pos, item))
    return placed


def _pos(item) -> dict:
    panel = item.panel if isinstance(item, Drawn) else item
    return panel.get("gridPos") or {"x": 0, "y": 0, "w": 24, "h": 8}


def _figure(columns: int, rows: int, row_inches: float = ROW_INCHES):
    return plt.figure(figsize=(max(columns * COLUMN_INCHES, 4), max(rows * row_inches, 2)), dpi=90)


def render_dashboard(board: dict, drawn: list[Drawn], path: Path, subtitle: str) -> None:
    placed = layout(board, drawn)
    height = max((p["y"] + p["h"] for p, _ in placed), default=1) + 2  # + the dashboard's title
    fig = _figure(24, height)
    fig.text(0.01, 1 - 0.9 / height, plain(board.get("title", "")), fontsize=14, fontweight="bold", va="center")
    fig.text(0.99, 1 - 0.9 / height, plain(subtitle), fontsize=8, color=MUTED, va="center", ha="right")
    pad = 0.35  # grid units between panels, for titles and ticks
    for pos, item in placed:
        left, width = pos["x"] / 24, pos["w"] / 24  # in figure fractions; margins in grid units below
        bottom = 1 - (pos["y"] + 2 + pos["h"]) / height
        if not isinstance(item, Drawn):  # a row: its title across the page
            fig.text(left + 0.005, bottom + 0.5 / height, plain(item.get("title", "")), fontsize=11, fontweight="bold",
                     color="#333333", va="center")
            continue
        ax = fig.add_axes([left + 0.9 / 24, bottom + pad * 1.4 / height, width - 1.1 / 24,
                           (pos["h"] - pad * 3.2) / height])
        draw_panel(ax, item)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def render_panel(drawn: Drawn, path: Path) -> None:
    pos = _pos(drawn)
    fig = _figure(max(pos["w"], 8), max(pos["h"], 8), row_inches=0.45)
    ax = fig.add_axes([0.08, 0.12, 0.88, 0.76])
    draw_panel(ax, drawn)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def snapshot(board: dict, sources: dashboards.Sources, out: Path, given: dict | None = None,
             window: dashboards.TimeRange | None = None) -> list[Drawn]:
    """Run one dashboard's queries and draw it: <out>/<uid>.png and <out>/<uid>/<panel id>-<copy>.png."""
    uid = board.get("uid") or re.sub(r"\W+", "-", board.get("title", "dashboard")).strip("-").lower()
    window = window or dashboards.dashboard_range(board)
    results = dashboards.run_dashboard(board, sources, given, window)
    drawn = panel_copies(board, results, uid, window)
    for item in drawn:
        render_panel(item, out / uid / f"{item.panel.get('id', 0)}-{item.copy}.png")
    span = f"{window.start:%Y-%m-%d %H:%M} to {window.end:%H:%M} UTC"
    variables = ", ".join(f"${r.query.title}: " + ("query failed" if r.error else f"{len(r.values)} found")
                          for r in results if r.query.kind == "variable")
    render_dashboard(board, drawn, out / f"{uid}.png", f"{span}   {variables}")
    return drawn


# --- the command -----------------------------------------------------------------------------------

def parse_variables(text: str) -> dict[str, str | list[str]]:
    """"device=3 metric=temperature,humidity" -> {"device": "3", "metric": ["temperature", "humidity"]}."""
    given = {}
    for pair in text.split():
        name, _, value = pair.partition("=")
        if not name or not value:
            raise ValueError(f"DASHBOARD_VARIABLES: {pair!r} is not name=value")
        given[name] = value.split(",") if "," in value else value
    return given


def _local_port(part: str, env: dict[str, str]) -> str:
    """The port `make up` runs a part on (stack/local.py), with its VT_*_PORT override."""
    from .local import PORT_SETTINGS

    name, default = PORT_SETTINGS[part]
    return env.get(name) or str(default)


def settings(env: dict[str, str] = os.environ) -> dict:
    prometheus = f"http://127.0.0.1:{_local_port('prometheus', env)}"
    postgres = f"postgresql://visiontrack@127.0.0.1:{_local_port('postgres', env)}/visiontrack"
    return {
        "sources": dashboards.Sources(
            prometheus=env.get("DASHBOARD_PROMETHEUS_URL") or prometheus,
            postgres=env.get("DASHBOARD_DATABASE_URL") or postgres,
            prometheus_interval=env.get("DASHBOARD_SCRAPE_INTERVAL") or "5s"),
        "window": dashboards.TimeRange.last(env["DASHBOARD_WINDOW"]) if env.get("DASHBOARD_WINDOW") else None,
        "given": parse_variables(env.get("DASHBOARD_VARIABLES", "")),
        "out": Path(env.get("DASHBOARD_OUT") or ROOT / "run" / "dashboards"),
    }


def main() -> int:
    config = settings()
    out: Path = config["out"]
    sources: dashboards.Sources = config["sources"]
    print(f"==> dashboards from Prometheus {sources.prometheus} and Postgres {sources.postgres} into {out}")
    lines = []
    for board in dashboards.shipped().values():
        drawn = snapshot(board, sources, out, config["given"], config["window"])
        print(f"{out / (board['uid'] + '.png')}: {len(drawn)} panels")
        for item in drawn:
            line = f"{board['uid']}  {item.title}: {item.status}" + (f" ({'; '.join(item.errors)})" if item.errors else "")
            lines.append(line)
            if item.status != "ok":
                print(f"    {item.title}: {item.status}" + (f" ({'; '.join(item.errors)})" if item.errors else ""))
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
