"""The Grafana dashboards' queries, listed and run without Grafana (which is not run here: AGPL).

`queries(board)` lists every query a dashboard holds: its panels' targets (PromQL `expr`, SQL `rawSql`),
its template variables' queries and its annotations', each with the panel title (or variable/annotation
name) it belongs to. `run_dashboard(board, sources)` runs them as Grafana would: PromQL through the
Prometheus HTTP API (`/api/v1/query_range` over the dashboard's time range, `/api/v1/series` for
`label_values`), SQL through psycopg2, after substituting the dashboard's variables and Grafana's built-ins
(`$__interval`, `$__rate_interval`, `$__range`, ...) the way Grafana's Prometheus and Postgres data sources
format them, and then Grafana's Postgres macros (`$__timeFilter`, `$__timeGroupAlias`, ...). A variable's
value is the caller's (`given`), else the one its own query found (Grafana's default: the saved current
value, All for an include-All variable, else the first value found).

Each query gives a `Result` saying whether it returned data, its error if any, and its series or rows; a
repeated panel gives one per value of its variable. To assert that every query returns data:

    results = run_until_data(board, Sources(prometheus="http://...", postgres="postgresql://..."))
    assert not no_data(results), "\\n".join(no_data(results))

or from a shell: `python -m stack.dashboards --prometheus URL --postgres DSN` (exit 1 naming every query of
the chart's dashboards that returned no data; --help for the rest).

Used by tests/observability (local Prometheus and Postgres), the cluster stage of `make test-cluster`
(the cluster's Prometheus and Postgres) and `make dashboard-snapshot` (stack/snapshot.py).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "charts" / "visiontrack" / "files" / "dashboards"

PROMETHEUS_TYPES = {"prometheus"}
POSTGRES_TYPES = {"grafana-postgresql-datasource", "postgres"}
# Grafana's own data sources (the built-in annotation source, mixed panels): nothing to run.
BUILTIN_UIDS = {"-- Grafana --", "grafana", "-- Mixed --", "-- Dashboard --"}
ALL = "$__all"


def load(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def shipped() -> dict[str, dict]:
    """The chart's dashboards by file name."""
    return {p.name: load(p) for p in sorted(DASHBOARDS.glob("*.json"))}


# --- durations -----------------------------------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_duration(text: str) -> float:
    """Grafana's and Prometheus' durations ("30s", "1m30s", "500ms", "6h") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|[smhdwy])", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """Grafana's secondsToHms: the largest unit that divides it ("1m", "2h", "500ms")."""
    ms = round(seconds * 1000)
    for unit in ("y", "w", "d", "h", "m", "s"):
        size = round(_UNITS[unit] * 1000)
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


# Grafana's roundInterval (rangeutil.ts): (below this many ms, round to this many ms).
_ROUNDED = [(15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000), (3500, 2000),
            (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000), (45000, 30000), (90000, 60000),
            (210000, 120000), (450000, 300000), (750000, 600000), (1050000, 900000), (1500000, 1200000),
            (2700000, 1800000), (5400000, 3600000), (9000000, 7200000), (16200000, 10800000),
            (32400000, 21600000), (86400000, 43200000), (604800000, 86400000), (1814400000, 604800000),
            (3628800000, 2592000000)]


def round_interval(seconds: float) -> float:
    ms = seconds * 1000
    return next((to for below, to in _ROUNDED if ms < below), 31536000000) / 1000


# --- time range ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    @classmethod
    def last(cls, window: timedelta | str, now: datetime | None = None) -> "TimeRange":
        end = now or datetime.now(timezone.utc)
        span = window if isinstance(window, timedelta) else timedelta(seconds=parse_duration(window))
        return cls(end - span, end)


def _relative(text: str, now: datetime) -> datetime:
    """Grafana's "now", "now-6h" (rounding such as "now/d" is not used by our dashboards)."""
    m = re.fullmatch(r"now(?:-(\w+))?", text)
    if not m:
        raise ValueError(f"unsupported time {text!r} (only now and now-<duration>)")
    return now - timedelta(seconds=parse_duration(m.group(1))) if m.group(1) else now


def dashboard_range(board: dict, now: datetime | None = None) -> TimeRange:
    """The dashboard's default time range ("time": {"from": "now-6h", "to": "now"})."""
    now = now or datetime.now(timezone.utc)
    saved = board.get("time") or {"from": "now-6h", "to": "now"}
    return TimeRange(_relative(saved["from"], now), _relative(saved["to"], now))


# --- what the dashboard holds --------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    """One query of a dashboard, as written in it."""

    kind: str  # "panel", "variable" or "annotation"
    title: str  # the panel's title, the variable's or the annotation's name
    ref: str  # the target's refId, or the variable's/annotation's name
    text: str  # the PromQL or SQL, with Grafana's variables and macros still in it
    datasource: dict  # {"type": ..., "uid": ...} as written (the uid may be "${datasource}")
    panel: dict | None = None  # the panel (gridPos, type, options...), for panel queries
    target: dict = field(default_factory=dict)  # the target as written (legendFormat, format, instant...)
    variable: dict | None = None  # the variable, for variable queries

    @property
    def language(self) -> str:
        if "rawSql" in self.target or self.datasource.get("type") in POSTGRES_TYPES:
            return "sql"
        return "promql"

    @property
    def label(self) -> str:
        return f"{self.kind} {self.title!r} {self.ref}"


def _as_ref(datasource) -> dict:
    """A data-source reference as {"type", "uid"}: Grafana also accepts a bare uid or name string."""
    if isinstance(datasource, dict):
        return {k: datasource[k] for k in ("type", "uid") if k in datasource}
    return {"uid": datasource} if datasource else {}


def all_panels(board: dict) -> list[dict]:
    """Every panel, those inside collapsed rows too, rows themselves included."""
    out = []
    for panel in board.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def panel_queries(panel: dict) -> list[Query]:
    out = []
    for target in panel.get("targets", []):
        text = target.get("expr", target.get("rawSql"))
        if text is None or target.get("hide"):
            continue
        source = _as_ref(target.get("datasource")) or _as_ref(panel.get("datasource"))
        out.append(Query("panel", panel.get("title", ""), target.get("refId", ""), text, source, panel, target))
    return out


def _variable_query(var: dict) -> Query | None:
    if var.get("type") != "query":
        return None
    query = var.get("query")
    text = query.get("query", query.get("rawSql", "")) if isinstance(query, dict) else query
    return Query("variable", var["name"], var["name"], text, _as_ref(var.get("datasource")),
                 target=query if isinstance(query, dict) else {}, variable=var)


def _annotation_query(annotation: dict) -> Query | None:
    source = _as_ref(annotation.get("datasource"))
    if source.get("uid") in BUILTIN_UIDS or source.get("type") == "grafana":
        return None
    target = annotation.get("target") or {}
    text = target.get("expr", target.get("rawSql", annotation.get("expr", annotation.get("rawQuery"))))
    if not text or not annotation.get("enable", True):
        return None
    return Query("annotation", annotation.get("name", ""), annotation.get("name", ""), text, source, target=target)


def queries(board: dict) -> list[Query]:
    """Every query of the dashboard: panels' targets (panel order), then variables', then annotations'."""
    out = [q for panel in all_panels(board) if panel.get("type") != "row" for q in panel_queries(panel)]
    out += [q for v in board.get("templating", {}).get("list", []) if (q := _variable_query(v))]
    out += [q for a in board.get("annotations", {}).get("list", []) if (q := _annotation_query(a))]
    return out


def datasource_references(board: dict) -> list[tuple[str, dict]]:
    """(where, {"type", "uid"}) of every data-source reference: panels, targets, variables, annotations."""
    refs = []
    for panel in all_panels(board):
        if panel.get("datasource"):
            refs.append((f"panel {panel.get('title')!r}", _as_ref(panel["datasource"])))
        for target in panel.get("targets", []):
            if target.get("datasource"):
                refs.append((f"panel {panel.get('title')!r} target {target.get('refId')}", _as_ref(target["datasource"])))
    for var in board.get("templating", {}).get("list", []):
        if var.get("datasource"):
            refs.append((f"variable {var['name']}", _as_ref(var["datasource"])))
    for annotation in board.get("annotations", {}).get("list", []):
        if annotation.get("datasource"):
            refs.append((f"annotation {annotation.get('name')!r}", _as_ref(annotation["datasource"])))
    return refs


# --- variables -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Value:
    """A variable's selection: its values (texts for titles), whether it is All, and how it formats."""

    values: tuple[str, ...]
    texts: tuple[str, ...]
    multi: bool = False
    include_all: bool = False
    is_all: bool = False
    all_value: str | None = None

    @classmethod
    def of(cls, var: dict, options: list[tuple[str, str]], chosen) -> "Value":
        """`chosen`: a value, a list of values, or "All"/"$__all"; options: (value, text) found."""
        common = dict(multi=bool(var.get("multi")), include_all=bool(var.get("includeAll")),
                      all_value=var.get("allValue") or None)
        wanted = chosen if isinstance(chosen, list) else [chosen]
        if var.get("includeAll") and [str(w) for w in wanted] in (["All"], [ALL]):
            return cls(tuple(v for v, _ in options), tuple(t for _, t in options), is_all=True, **common)
        text = dict(options)
        return cls(tuple(str(w) for w in wanted), tuple(text.get(str(w), str(w)) for w in wanted), **common)

    def single(self, index: int) -> "Value":
        """One value of it, as a repeated panel's copy sees it."""
        return replace(self, values=(self.values[index],), texts=(self.texts[index],), is_all=False)

    @property
    def text(self) -> str:
        return "All" if self.is_all else " + ".join(self.texts)


@dataclass(frozen=True)
class Sources:
    """Where the queries go, and the data sources' minimum intervals (Grafana's "scrape interval" of the
    Prometheus source, default 15s; kube-prometheus-stack sets its Prometheus' scrape interval, 30s; the SQL
    sources' default is 1m)."""

    prometheus: str | None = None  # base URL, e.g. http://127.0.0.1:19090
    postgres: str | None = None  # psycopg2 DSN, e.g. postgresql://visiontrack@127.0.0.1:15432/visiontrack
    prometheus_interval: str = "15s"
    postgres_interval: str = "1m"
    timeout: float = 30.0


def builtins(window: TimeRange, min_interval: str, resolution: int = 1000) -> dict[str, str]:
    """Grafana's global variables for a panel `resolution` points wide (Grafana: the panel's width in px)."""
    floor = parse_duration(min_interval)
    interval = max(round_interval(window.seconds / resolution), floor)
    rate = max(interval + floor, 4 * floor)  # Grafana's $__rate_interval
    ms = lambda t: str(int(t.timestamp() * 1000))  # noqa: E731
    return {"__interval": format_duration(interval), "__interval_ms": str(round(interval * 1000)),
            "__rate_interval": format_duration(rate), "__rate_interval_ms": str(round(rate * 1000)),
            "__range": f"{round(window.seconds)}s", "__range_s": str(round(window.seconds)),
            "__range_ms": str(round(window.seconds * 1000)), "__from": ms(window.start), "__to": ms(window.end)}


# Grafana's variable syntaxes: $var, [[var]] / [[var:fmt]], ${var} / ${var:fmt}.
VARIABLE_PATTERN = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.[^:}]+)?(?::([^}]+))?\}")


def _prometheus_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\\\'")


def _prometheus_regex_escape(value: str) -> str:
    return re.sub(r"[$^*{}\[\]+?.()|]", lambda m: "\\\\" + m.group(0), value.replace("\\", "\\\\\\\\"))


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _default_format(value: Value, language: str) -> str:
    """How Grafana's Prometheus and SQL data sources write a variable with no explicit format."""
    if value.is_all and value.all_value is not None:
        return value.all_value  # a custom All value goes in verbatim
    several = value.multi or value.include_all
    if language == "sql":
        if several:
            return ",".join(_quote(v) for v in value.values)
        return ",".join(v.replace("'", "''") for v in value.values)
    if not several:
        return ",".join(_prometheus_escape(v) for v in value.values)
    escaped = [_prometheus_regex_escape(v) for v in value.values]
    if len(escaped) <= 1:
        return "".join(escaped)
    return "(" + "|".join(escaped) + ")"


_FORMATS = {
    "raw": lambda vs: ",".join(vs), "csv": lambda vs: ",".join(vs), "text": lambda vs: " + ".join(vs),
    "pipe": lambda vs: "|".join(vs), "json": lambda vs: json.dumps(vs[0] if len(vs) == 1 else list(vs)),
    "sqlstring": lambda vs: ",".join(_quote(v) for v in vs),
    "singlequote": lambda vs: ",".join("'" + v.replace("'", "\\'") + "'" for v in vs),
    "doublequote": lambda vs: ",".join('"' + v.replace('"', '\\"') + '"' for v in vs),
    "regex": lambda vs: (re.escape(vs[0]) if len(vs) == 1 else "(" + "|".join(re.escape(v) for v in vs) + ")"),
    "glob": lambda vs: vs[0] if len(vs) == 1 else "{" + ",".join(vs) + "}",
}


def _formatted(value: Value, fmt: str | None, language: str) -> str:
    if fmt is None:
        return _default_format(value, language)
    if fmt not in _FORMATS:
        raise ValueError(f"unsupported variable format :{fmt}")
    values = (value.all_value,) if value.is_all and value.all_value is not None else value.values
    return _FORMATS[fmt](list(values) if fmt != "text" else list(value.texts))


def interpolate(text: str, variables: dict[str, Value | str], language: str = "promql") -> str:
    """Substitute Grafana's variables (Values, or plain strings for the built-ins) in a query; names not
    known are left as they are, as Grafana does (the SQL macros, `$__timeFilter(...)`, come after)."""
    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(5)
        if name not in variables:
            return m.group(0)
        value = variables[name]
        return value if isinstance(value, str) else _formatted(value, fmt, language)
    return VARIABLE_PATTERN.sub(one, text)


def interpolate_title(text: str, variables: dict[str, Value | str]) -> str:
    """A panel title as Grafana shows it: variables by their text."""
    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        value = variables.get(name)
        return m.group(0) if value is None else value if isinstance(value, str) else value.text
    return VARIABLE_PATTERN.sub(one, text)


# --- Grafana's Postgres macros (the SQL data source's backend, pkg/tsdb/grafana-postgresql-datasource) ---

def _macro_interval(arg: str, default: float) -> float:
    arg = arg.strip().strip("'\"")
    return default if arg in ("$__interval", "") else parse_duration(arg)


def _epoch(t: datetime) -> int:
    return int(t.timestamp())


def _rfc3339(t: datetime) -> str:
    """UTC in Go's RFC3339Nano, as Grafana writes the range into SQL: no trailing zeros in the fraction."""
    text = t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


def postgres_macros(sql: str, window: TimeRange, interval: str) -> str:
    """Grafana's Postgres macros, after the variables: $__time, $__timeEpoch, $__timeFilter, $__timeFrom,
    $__timeTo, $__timeGroup(Alias) (the fill argument, which only fills gaps, is dropped), the
    $__unixEpoch* ones, and $__interval left in the SQL."""
    secs = parse_duration(interval)
    start, end = _rfc3339(window.start), _rfc3339(window.end)

    def group(args: list[str], alias: str) -> str:
        n = _macro_interval(args[1], secs)
        n = int(n) if float(n).is_integer() else n
        return f"floor(extract(epoch from {args[0]})/{n})*{n}" + alias

    def epoch_group(args: list[str], alias: str) -> str:
        n = int(_macro_interval(args[1], secs))
        return f"floor({args[0]}/{n})*{n}" + alias

    macros = {
        "__time": lambda a: f'{a[0]} AS "time"',
        "__timeEpoch": lambda a: f'extract(epoch from {a[0]}) AS "time"',
        "__timeFilter": lambda a: f"{a[0]} BETWEEN '{start}' AND '{end}'",
        "__timeFrom": lambda a: f"'{start}'",
        "__timeTo": lambda a: f"'{end}'",
        "__timeGroup": lambda a: group(a, ""),
        "__timeGroupAlias": lambda a: group(a, ' AS "time"'),
        "__unixEpochFilter": lambda a: f"{a[0]} >= {_epoch(window.start)} AND {a[0]} <= {_epoch(window.end)}",
        "__unixEpochFrom": lambda a: str(_epoch(window.start)),
        "__unixEpochTo": lambda a: str(_epoch(window.end)),
        "__unixEpochGroup": lambda a: epoch_group(a, ""),
        "__unixEpochGroupAlias": lambda a: epoch_group(a, ' AS "time"'),
    }

    def one(m: re.Match) -> str:
        name, args = m.group(1), [a.strip() for a in (m.group(2) or "").split(",")]
        if name not in macros:
            raise ValueError(f"unknown Postgres macro ${name}")
        return macros[name](args)

    sql = re.sub(r"\$(__\w+)\(([^()]*(?:\([^()]*\)[^()]*)*)\)", one, sql)
    return sql.replace("$__interval", format_duration(secs))


# --- results -------------------------------------------------------------------------------------

@dataclass
class Series:
    name: str  # the legend, as Grafana would show it
    labels: dict[str, str]
    points: list[tuple[float, float]]  # (unix seconds, value); NaN where Prometheus says NaN


@dataclass
class Result:
    """What one query gave: series (Prometheus, or SQL in time-series format), rows (SQL), values found
    (variable queries); `error` when it failed."""

    query: Query
    title: str  # the title as shown (variables substituted; a repeated copy's own)
    text: str  # the query as sent
    series: list[Series] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    options: list[tuple[str, str]] = field(default_factory=list)  # variable queries: (value, text) found
    error: str | None = None

    @property
    def has_data(self) -> bool:
        if self.error:
            return False
        if self.query.kind == "variable":
            return bool(self.values)
        # A series of NaN only (a quantile of no requests) draws nothing: that is no data.
        return any(math.isfinite(v) for s in self.series for _, v in s.points) or bool(self.rows)

    def describe(self) -> str:
        what = f"{self.query.kind} {self.title!r}" + (f" {self.query.ref}" if self.query.kind == "panel" else "")
        why = f"error: {self.error}" if self.error else "no data"
        return f"{what}: {why}\n    {' '.join(self.text.split())}"


def no_data(results: list[Result]) -> list[str]:
    """One line per query that returned no data or failed (empty when every query returned data)."""
    return [r.describe() for r in results if not r.has_data]


# --- running PromQL ------------------------------------------------------------------------------

def _prometheus_get(base: str, path: str, params: dict | list, timeout: float) -> object:
    url = f"{base.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:  # Prometheus explains a bad query in the body of its 400/422
        try:
            body = json.load(exc)
        except ValueError:
            raise RuntimeError(f"HTTP {exc.code} from {path}") from None
    if body.get("status") != "success":
        raise RuntimeError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
    return body["data"]


def legend(fmt: str | None, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: {{label}} replaced; none (or __auto) gives the series' selector."""
    if fmt and fmt != "__auto":
        return re.sub(r"\{\{\s*(.+?)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)
    name = labels.get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{rest}}}" if rest or not name else name


def _step(window: TimeRange, interval: str) -> float:
    # Prometheus refuses more than 11,000 points per series; Grafana widens the step likewise.
    return max(parse_duration(interval), math.ceil(window.seconds / 11000))


def run_promql(base: str, expr: str, window: TimeRange, interval: str, target: dict, timeout: float) -> list[Series]:
    """A target as Grafana's Prometheus source runs it: a range query (or instant, if the target says so)."""
    end = window.end.timestamp()
    if target.get("instant") and not target.get("range"):
        data = _prometheus_get(base, "/api/v1/query", {"query": expr, "time": end}, timeout)
        points = lambda r: [(float(r["value"][0]), float(r["value"][1]))]  # noqa: E731
    else:
        params = {"query": expr, "start": window.start.timestamp(), "end": end, "step": _step(window, interval)}
        data = _prometheus_get(base, "/api/v1/query_range", params, timeout)
        points = lambda r: [(float(t), float(v)) for t, v in r["values"]]  # noqa: E731
    if data["resultType"] == "scalar":
        return [Series(expr, {}, [(float(data["result"][0]), float(data["result"][1]))])]
    return [Series(legend(target.get("legendFormat"), r["metric"]), r["metric"], points(r)) for r in data["result"]]


def prometheus_variable_values(base: str, query: str, window: TimeRange, timeout: float) -> list[str]:
    """A Prometheus variable query: label_values([selector,] label), label_names(), metrics(regex),
    query_result(expr)."""
    span = {"start": window.start.timestamp(), "end": window.end.timestamp()}
    query = query.strip()
    if m := re.fullmatch(r"label_values\((.+),\s*([\w.]+)\s*\)", query, re.S):
        series = _prometheus_get(base, "/api/v1/series", [("match[]", m.group(1)), *span.items()], timeout)
        return sorted({s[m.group(2)] for s in series if m.group(2) in s})
    if m := re.fullmatch(r"label_values\(\s*([\w.]+)\s*\)", query):
        return sorted(_prometheus_get(base, f"/api/v1/label/{m.group(1)}/values", span, timeout))
    if re.fullmatch(r"label_names\(\s*\)", query):
        return sorted(_prometheus_get(base, "/api/v1/labels", span, timeout))
    if m := re.fullmatch(r"metrics\((.*)\)", query, re.S):
        names = _prometheus_get(base, "/api/v1/label/__name__/values", span, timeout)
        return sorted(n for n in names if re.search(m.group(1).strip(), n))
    if m := re.fullmatch(r"query_result\((.+)\)", query, re.S):
        data = _prometheus_get(base, "/api/v1/query", {"query": m.group(1), "time": span["end"]}, timeout)
        return [f"{legend(None, r['metric'])} {r['value'][1]} {int(float(r['value'][0]) * 1000)}" for r in data["result"]]
    raise ValueError(f"unsupported Prometheus variable query {query!r}")


# --- running SQL ---------------------------------------------------------------------------------

def connect_postgres(dsn: str, timeout: float = 30.0):
    """A read-only autocommit connection (a dashboard only reads), each statement bounded in time."""
    import psycopg2  # here: the module also serves callers that never touch Postgres

    conn = psycopg2.connect(dsn, connect_timeout=int(timeout), options=f"-c statement_timeout={int(timeout * 1000)}")
    conn.set_session(readonly=True, autocommit=True)
    return conn


def run_sql(conn, sql: str) -> tuple[list[str], list[tuple]]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return [c.name for c in cur.description or []], cur.fetchall()


def _time_value(value) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value) / (1000 if float(value) > 1e11 else 1)  # epoch ms or s, as Grafana accepts both


def sql_series(columns: list[str], rows: list[tuple]) -> list[Series]:
    """Rows in Grafana's time-series format as series: a "time" column, an optional "metric" column naming
    the series, and each other numeric column a value (named by its column, or by the metric alone when
    there is one value column, as Grafana names them)."""
    if "time" not in columns:
        return []
    t = columns.index("time")
    m = columns.index("metric") if "metric" in columns else None
    values = [i for i in range(len(columns)) if i not in (t, m)]
    found: dict[str, Series] = {}
    for row in rows:
        for i in values:
            if row[i] is None or isinstance(row[i], str):
                continue
            name = columns[i] if m is None else (str(row[m]) if len(values) == 1 else f"{row[m]} {columns[i]}")
            series = found.setdefault(name, Series(name, {} if m is None else {"metric": str(row[m])}, []))
            series.points.append((_time_value(row[t]), float(row[i])))
    return list(found.values())


def sql_variable_values(columns: list[str], rows: list[tuple]) -> list[tuple[str, str]]:
    """(value, text) pairs of a SQL variable: __value/__text columns, else every cell, as Grafana takes them."""
    if "__value" in columns or "__text" in columns:
        v = columns.index("__value" if "__value" in columns else "__text")
        t = columns.index("__text" if "__text" in columns else "__value")
        return list(dict.fromkeys((str(r[v]), str(r[t])) for r in rows))
    return list(dict.fromkeys((str(c), str(c)) for r in rows for c in r))


# --- running a dashboard -------------------------------------------------------------------------

@dataclass
class Runner:
    """Runs a dashboard's queries against `sources` over `window`; one Postgres connection per run."""

    board: dict
    sources: Sources
    window: TimeRange
    given: dict
    variables: dict[str, Value | str] = field(default_factory=dict)
    options: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    conn: object = None

    def datasource_type(self, ref: dict) -> str | None:
        """The type of a reference, resolving a data-source variable ("${datasource}") to its plugin type."""
        uid = str(ref.get("uid", ""))
        m = VARIABLE_PATTERN.fullmatch(uid)
        name = m and (m.group(1) or m.group(2) or m.group(4))
        var = next((v for v in self.board.get("templating", {}).get("list", []) if v["name"] == name), None)
        if var and var.get("type") == "datasource":
            return var.get("query")
        return ref.get("type")

    def language(self, query: Query) -> str:
        kind = self.datasource_type(query.datasource)
        if kind in POSTGRES_TYPES or "rawSql" in query.target:
            return "sql"
        if kind in PROMETHEUS_TYPES or kind is None:
            return "promql"
        raise ValueError(f"data source type {kind!r} is not Prometheus or Postgres")

    def builtins(self, language: str) -> dict[str, str]:
        floor = self.sources.postgres_interval if language == "sql" else self.sources.prometheus_interval
        return builtins(self.window, floor)

    def scope(self, language: str, extra: dict | None = None) -> dict:
        return {**self.builtins(language), **self.variables, **(extra or {})}

    def postgres(self):
        if self.conn is None:
            if not self.sources.postgres:
                raise RuntimeError("no Postgres DSN given")
            self.conn = connect_postgres(self.sources.postgres, self.sources.timeout)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # variables

    def resolve_variables(self) -> list[Result]:
        """Each variable in order (a later one may use an earlier one): its options, then its value."""
        results = []
        for var in self.board.get("templating", {}).get("list", []):
            options, result = self.variable_options(var)
            if result is not None:
                results.append(result)
            self.options[var["name"]] = options
            self.variables[var["name"]] = Value.of(var, options, self.choose(var, options))
        return results

    def variable_options(self, var: dict) -> tuple[list[tuple[str, str]], Result | None]:
        kind = var.get("type")
        if kind == "query":
            query = _variable_query(var)
            result = self.run(query)
            return result.options, result
        if kind == "datasource":
            current = (var.get("current") or {}).get("value") or var.get("query")
            return [(str(current), str(current))], None
        if kind in ("custom", "interval"):
            found = [(str(o["value"]), str(o.get("text", o["value"]))) for o in var.get("options", [])]
            if not found:
                found = [(v.strip(), v.strip()) for v in str(var.get("query", "")).split(",") if v.strip()]
            return found, None
        value = str(var.get("query", (var.get("current") or {}).get("value", "")))  # constant, textbox
        return [(value, value)], None

    def choose(self, var: dict, options: list[tuple[str, str]]):
        """The caller's value, else Grafana's: the saved current one if still offered, All for an
        include-All variable, else the first value found."""
        if var["name"] in self.given:
            return self.given[var["name"]]
        current = (var.get("current") or {}).get("value")
        offered = {v for v, _ in options}
        if current in (ALL, [ALL]) and var.get("includeAll"):
            return ALL
        if current and all(c in offered for c in (current if isinstance(current, list) else [current])):
            return current
        if var.get("includeAll"):
            return ALL
        return options[0][0] if options else ""

    # queries

    def run(self, query: Query, extra: dict | None = None, title: str | None = None) -> Result:
        result = Result(query, title or query.title, query.text)
        try:
            language = self.language(query)
            result.text = interpolate(query.text, self.scope(language, extra), language)
            if language == "sql":
                self.run_sql(query, result)
            else:
                self.run_promql(query, result)
        except Exception as exc:  # noqa: BLE001 - every failure is reported per query, never raised
            result.error = " ".join(f"{type(exc).__name__}: {exc}".split())
        return result

    def run_promql(self, query: Query, result: Result) -> None:
        if not self.sources.prometheus:
            raise RuntimeError("no Prometheus URL given")
        if query.kind == "variable":
            result.values = prometheus_variable_values(self.sources.prometheus, result.text, self.window,
                                                       self.sources.timeout)
            result.values = _apply_regex(query.variable, result.values)
            result.options = [(v, v) for v in result.values]
            return
        interval = self.builtins("promql")["__interval"]
        result.series = run_promql(self.sources.prometheus, result.text, self.window, interval, query.target,
                                   self.sources.timeout)

    def run_sql(self, query: Query, result: Result) -> None:
        result.text = postgres_macros(result.text, self.window, self.builtins("sql")["__interval"])
        result.columns, result.rows = run_sql(self.postgres(), result.text)
        if query.kind == "variable":
            result.options = _apply_regex_pairs(query.variable, sql_variable_values(result.columns, result.rows))
            result.values = [v for v, _ in result.options]
        elif query.target.get("format", "time_series") == "time_series" and query.kind == "panel":
            result.series = sql_series(result.columns, result.rows)

    def run_panel(self, panel: dict) -> list[Result]:
        """A panel's queries; a repeated panel's once per value of its variable (each copy sees one)."""
        repeat = panel.get("repeat")
        value = self.variables.get(repeat) if repeat else None
        copies = [{repeat: value.single(i)} for i in range(len(value.values))] if isinstance(value, Value) else []
        copies = copies or [None]  # no value to repeat over: shown once, as Grafana does, never skipped
        results = []
        for extra in copies:
            title = interpolate_title(panel.get("title", ""), {**self.variables, **(extra or {})})
            results += [self.run(q, extra, title) for q in panel_queries(panel)]
        return results


def _apply_regex(var: dict | None, values: list[str]) -> list[str]:
    return [v for v, _ in _apply_regex_pairs(var, [(v, v) for v in values])]


def _apply_regex_pairs(var: dict | None, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A variable's `regex`: keeps the matching values; a capture group becomes the value."""
    pattern = (var or {}).get("regex")
    if not pattern:
        return pairs
    m = re.fullmatch(r"/(.*)/([a-z]*)", pattern, re.S)
    regex = re.compile(m.group(1) if m else pattern, re.I if m and "i" in m.group(2) else 0)
    out = []
    for value, text in pairs:
        if found := regex.search(text):
            picked = found.group(1) if found.groups() else value
            out.append((picked, picked if found.groups() else text))
    return list(dict.fromkeys(out))


def run_dashboard(board: dict, sources: Sources, given: dict | None = None, window: TimeRange | None = None
                  ) -> list[Result]:
    """Every query of the dashboard run as Grafana would: variables first (their queries' results are in
    the list), then each panel's targets (a repeated panel's per value), then the annotations.
    `given`: variable name -> value, list of values, or "All"; `window`: default the dashboard's range."""
    runner = Runner(board, sources, window or dashboard_range(board), dict(given or {}))
    try:
        results = runner.resolve_variables()
        for panel in all_panels(board):
            if panel.get("type") != "row":
                results += runner.run_panel(panel)
        for annotation in board.get("annotations", {}).get("list", []):
            if query := _annotation_query(annotation):
                results.append(runner.run(query))
        return results
    finally:
        runner.close()


def run_until_data(board: dict, sources: Sources, given: dict | None = None, window: TimeRange | None = None,
                   timeout: float = 60.0, interval: float = 2.0) -> list[Result]:
    """run_dashboard again until every query returns data or `timeout` passes (data that is still being
    scraped or stored); the last results either way, for `no_data` to name what is missing."""
    deadline = time.monotonic() + timeout
    while True:
        results = run_dashboard(board, sources, given, window)
        if not no_data(results) or time.monotonic() > deadline:
            return results
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.dashboards",
                                     description="Run every query of Grafana dashboards; exit 1 if one returns no data.")
    parser.add_argument("dashboards", nargs="*", type=Path, help="dashboard JSON files (default: the chart's)")
    parser.add_argument("--prometheus", help="Prometheus base URL")
    parser.add_argument("--postgres", help="Postgres DSN of the dashboards' SQL data source")
    parser.add_argument("--scrape-interval", default="15s", help="the Prometheus source's scrape interval (15s)")
    parser.add_argument("--window", help="time range ending now, e.g. 30m (default: each dashboard's own)")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="a variable's value (repeatable; a,b for several; All)")
    parser.add_argument("--timeout", type=float, default=0, help="seconds to retry until every query has data (0)")
    args = parser.parse_args(argv)
    sources = Sources(args.prometheus, args.postgres, prometheus_interval=args.scrape_interval)
    given = {n: (v.split(",") if "," in v else v) for n, _, v in (pair.partition("=") for pair in args.var)}
    boards = {p.name: load(p) for p in args.dashboards} or shipped()
    missing = []
    for name, board in boards.items():
        window = TimeRange.last(args.window) if args.window else None
        results = run_until_data(board, sources, given, window, timeout=args.timeout)
        print(f"{name}: {sum(r.has_data for r in results)} of {len(results)} queries returned data")
        missing += [f"{name}: {line}" for line in no_data(results)]
    print("\n".join(missing))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
