"""Every SQL query of the "Device telemetry" dashboard (panels, annotations, template variables) runs
against the real schema with Grafana's macros and variables substituted as Grafana's Postgres data source
does, and returns rows for a device that has sent readings and raised an alert."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from .conftest import DASHBOARDS

pytestmark = pytest.mark.integration

BOARD = json.loads((DASHBOARDS / "visiontrack-device-telemetry.json").read_text())


def _seconds(interval: str) -> int:
    m = re.fullmatch(r"(\d+)([smhd])", interval)
    assert m, interval
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def grafana_sql(sql: str, variables: dict[str, object], start: datetime, end: datetime, interval: str) -> str:
    """Grafana's Postgres macros ($__timeFilter, $__timeGroupAlias, $__interval) and template variables
    ($var, ${var}, ${var:sqlstring} quoted and comma-joined for a multi-value variable)."""
    iso = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    sql = re.sub(r"\$__timeGroupAlias\(([^,]+),\s*\$__interval\)",
                 lambda m: f'floor(extract(epoch from {m.group(1)})/{_seconds(interval)})*{_seconds(interval)} AS "time"', sql)
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", lambda m: f"{m.group(1)} BETWEEN '{iso(start)}' AND '{iso(end)}'", sql)
    sql = sql.replace("$__interval", interval)

    def value(name: str, fmt: str | None) -> str:
        v = variables[name]
        values = v if isinstance(v, list) else [v]
        if fmt == "sqlstring":
            return ",".join("'" + str(x).replace("'", "''") + "'" for x in values)
        assert fmt is None, fmt
        return ",".join(str(x) for x in values)

    sql = re.sub(r"\$\{(\w+)(?::(\w+))?\}", lambda m: value(m.group(1), m.group(2)), sql)
    sql = re.sub(r"\$(\w+)", lambda m: value(m.group(1), None), sql)
    assert "$" not in sql, sql
    return sql


def queries() -> list[tuple[str, str]]:
    """(what, sql); a panel repeated per metric is marked "(repeated)": each copy gets one metric."""
    out = [(f"panel {p['title']}{' (repeated)' if p.get('repeat') else ''}", t["rawSql"])
           for p in BOARD["panels"] for t in p.get("targets", [])]
    out += [(f"annotation {a['name']}", a["target"]["rawSql"]) for a in BOARD["annotations"]["list"]]
    out += [(f"variable {v['name']}", v["query"]) for v in BOARD["templating"]["list"] if v["type"] == "query"]
    return out


def test_the_dashboard_should_use_only_the_provisioned_postgres_source_and_known_variables():
    names = {v["name"] for v in BOARD["templating"]["list"]}
    assert names == {"device", "metric", "resolution"}
    for title, sql in queries():
        used = set(re.findall(r"\$\{?(\w+)", sql)) - {"__timeFilter", "__timeGroupAlias", "__interval"}
        assert used <= names, f"{title} uses unknown variables {used - names}"
    sources = {json.dumps(p.get("datasource"), sort_keys=True) for p in BOARD["panels"]}
    assert sources == {json.dumps({"type": "grafana-postgresql-datasource", "uid": "visiontrack-postgres"},
                                  sort_keys=True)}


@pytest.mark.parametrize("resolution", ["1m", "1h"])
def test_every_query_should_run_on_the_real_schema_and_return_rows(traffic, db, resolution):
    device = traffic.devices[0]  # sent temperature above 30: its alert rule fired
    variables = {"device": device["id"], "metric": ["temperature", "humidity"], "resolution": resolution}
    end = datetime.now(timezone.utc) + timedelta(minutes=5)
    start = end - timedelta(hours=6)
    ran = 0
    for title, sql in queries():
        for metric in (["temperature"] if "(repeated)" in title else [["temperature", "humidity"], "temperature"]):
            text = grafana_sql(sql, {**variables, "metric": metric}, start, end, "5m")
            with db.cursor() as cur:
                cur.execute(text)
                rows = cur.fetchall()
            assert rows, f"{title} returned no rows:\n{text}"
            ran += 1
    assert len(queries()) == 8 and ran == 2 * 8 - 1  # the repeated panel runs once per metric


def test_the_macro_substitution_should_produce_grafana_sql():
    sql = grafana_sql("SELECT $__timeGroupAlias(bucket, $__interval), 1 FROM t WHERE $__timeFilter(bucket) "
                      "AND d = $device AND m IN (${metric:sqlstring}) FROM telemetry_$resolution",
                      {"device": 7, "metric": ["a", "it's"], "resolution": "1h"},
                      datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 2, tzinfo=timezone.utc), "5m")
    assert sql == ("SELECT floor(extract(epoch from bucket)/300)*300 AS \"time\", 1 FROM t WHERE bucket BETWEEN "
                   "'2026-01-01T00:00:00Z' AND '2026-01-02T00:00:00Z' AND d = 7 AND m IN ('a','it''s') "
                   "FROM telemetry_1h")
