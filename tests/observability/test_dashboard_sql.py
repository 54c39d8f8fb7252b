"""Every SQL query of the "Device telemetry" dashboard (panels, annotations, template variables) runs
against the real schema with Grafana's macros and variables substituted as Grafana's Postgres data source
does (stack/dashboards.py), and returns rows for a device that has sent readings and raised an alert."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from stack import dashboards

from .conftest import DASHBOARDS

pytestmark = pytest.mark.integration

BOARD = dashboards.load(DASHBOARDS / "visiontrack-device-telemetry.json")


def test_the_dashboard_should_use_only_the_provisioned_postgres_source_and_known_variables():
    names = {v["name"] for v in BOARD["templating"]["list"]}
    assert names == {"device", "metric", "resolution"}
    scope = {name: dashboards.Value(("x",), ("x",)) for name in names}
    for query in dashboards.queries(BOARD):
        left = dashboards.interpolate(query.text, scope, "sql")
        used = {name for match in dashboards.VARIABLE_PATTERN.findall(left) for name in match if name}
        unknown = used - {"__timeFilter", "__timeGroupAlias", "__interval"}
        assert not unknown, f"{query.label} uses unknown variables {unknown}"
    sources = {(ref["type"], ref["uid"]) for _, ref in dashboards.datasource_references(BOARD)}
    assert sources == {("grafana-postgresql-datasource", "visiontrack-postgres")}


@pytest.mark.parametrize("resolution", ["1m", "1h"])
@pytest.mark.parametrize("metric", ["All", ["temperature", "humidity"], "temperature"])
def test_every_query_should_run_on_the_real_schema_and_return_rows(monitored, traffic, resolution, metric):
    device = traffic.devices[0]  # sent temperature above 30: its alert rule fired
    end = datetime.now(timezone.utc) + timedelta(minutes=5)
    window = dashboards.TimeRange(end - timedelta(hours=6), end)
    results = dashboards.run_dashboard(BOARD, monitored.sources, window=window,
                                       given={"device": str(device["id"]), "metric": metric, "resolution": resolution})
    assert not dashboards.no_data(results), "\n".join(dashboards.no_data(results))
    # the repeated panel runs once per metric picked; the others once
    picked = ["humidity", "temperature"] if metric == "All" else metric if isinstance(metric, list) else [metric]
    assert len(results) == len(dashboards.queries(BOARD)) - 1 + len(picked)
    titles = [r.title for r in results if r.query.panel and r.query.panel.get("repeat")]
    assert titles == [f"{m}: avg, min and max" for m in picked]
    device_var, = [r for r in results if r.query.kind == "variable" and r.query.title == "device"]
    assert (str(device["id"]), f"{device['name']} (#{device['id']})") in device_var.options


def test_the_device_and_metric_should_default_to_what_the_variables_find(monitored, traffic):
    """Opened without choosing: the first active device by name, and the metrics of that device."""
    results = dashboards.run_dashboard(BOARD, monitored.sources)
    device_var, metric_var = [r for r in results if r.query.kind == "variable"]
    assert device_var.has_data and not metric_var.error
    assert f"device_id = {device_var.options[0][0]}" in metric_var.text


def test_the_macro_substitution_should_produce_grafana_sql():
    metric = dashboards.Value.of({"name": "metric", "multi": True, "includeAll": True}, [("a", "a"), ("it's", "it's")],
                                 ["a", "it's"])
    scope = {"device": dashboards.Value(("7",), ("7",)), "metric": metric, "resolution": dashboards.Value(("1h",), ("1h",)),
             "__interval": "5m"}
    sql = dashboards.interpolate("SELECT $__timeGroupAlias(bucket, $__interval), 1 FROM t WHERE $__timeFilter(bucket) "
                                 "AND d = $device AND m IN (${metric:sqlstring}) AND n IN ($metric) "
                                 "FROM telemetry_$resolution", scope, "sql")
    window = dashboards.TimeRange(datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 2, tzinfo=timezone.utc))
    assert dashboards.postgres_macros(sql, window, "1m") == (
        "SELECT floor(extract(epoch from bucket)/300)*300 AS \"time\", 1 FROM t WHERE bucket BETWEEN "
        "'2026-01-01T00:00:00Z' AND '2026-01-02T00:00:00Z' AND d = 7 AND m IN ('a','it''s') AND n IN ('a','it''s') "
        "FROM telemetry_1h")
