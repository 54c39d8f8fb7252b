"""stack/dashboards.py on its own (no servers): every query of the dashboards is listed with its panel, and
variables, built-ins and macros are substituted as Grafana's Prometheus and Postgres data sources do."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from stack import dashboards as d

pytestmark = pytest.mark.unit

BOARDS = d.shipped()
OVERVIEW = BOARDS["visiontrack-overview.json"]
DEVICE = BOARDS["visiontrack-device-telemetry.json"]
DAY = d.TimeRange(datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 2, tzinfo=timezone.utc))


def test_every_query_should_be_listed_with_its_panel_title():
    overview = d.queries(OVERVIEW)
    targets = [t for p in OVERVIEW["panels"] for t in p.get("targets", [])]
    assert len(overview) == len(targets) + 1  # + the namespace variable
    assert {(q.kind, q.language) for q in overview} == {("panel", "promql"), ("variable", "promql")}
    first = overview[0]
    assert (first.title, first.ref, first.panel["id"]) == ("Accepted readings/s", "A", 2)
    assert first.text == targets[0]["expr"]
    device = d.queries(DEVICE)
    assert [(q.kind, q.title) for q in device] == [
        ("panel", "$metric: avg, min and max"), ("panel", "Latest values"), ("panel", "Over the time range"),
        ("panel", "Readings per interval"), ("panel", "Alerts of this device"), ("variable", "device"),
        ("variable", "metric"), ("annotation", "Alerts")]
    assert {q.language for q in device} == {"sql"}


def test_collapsed_rows_hidden_targets_and_builtin_annotations_should_be_handled():
    board = {"panels": [{"type": "row", "title": "r", "collapsed": True, "panels": [
        {"type": "stat", "title": "inside", "targets": [{"refId": "A", "expr": "up"}, {"refId": "B", "expr": "x", "hide": True}]}]}],
        "annotations": {"list": [{"name": "Annotations & Alerts", "builtIn": 1, "enable": True,
                                  "datasource": {"type": "grafana", "uid": "-- Grafana --"}}]}}
    assert [(q.title, q.ref) for q in d.queries(board)] == [("inside", "A")]


def _value(values, multi=False, include_all=False, all_value=None, is_all=False):
    return d.Value(tuple(values), tuple(values), multi, include_all, is_all, all_value)


@pytest.mark.parametrize("value, promql, sql", [
    (_value(["a.b"]), "a.b", "a.b"),
    (_value(["it's"]), "it\\\\'s", "it''s"),
    (_value(["a.b", "c"], multi=True), "(a\\\\.b|c)", "'a.b','c'"),
    (_value(["a.b"], multi=True), "a\\\\.b", "'a.b'"),
    (_value(["a", "b"], include_all=True, all_value=".*", is_all=True), ".*", ".*"),
    (_value(["a", "b"], include_all=True, is_all=True), "(a|b)", "'a','b'"),
])
def test_a_variable_should_be_formatted_as_the_data_source_formats_it(value, promql, sql):
    scope = {"v": value}
    for syntax in ("$v", "${v}", "[[v]]"):
        assert d.interpolate(f"x {syntax} y", scope, "promql") == f"x {promql} y"
        assert d.interpolate(f"x {syntax} y", scope, "sql") == f"x {sql} y"


def test_explicit_formats_builtins_and_unknown_names():
    scope = {"m": _value(["a", "it's"], multi=True), "__rate_interval": "1m"}
    assert d.interpolate("${m:sqlstring} ${m:csv} ${m:pipe} [[m:raw]] ${m:regex}", scope) == (
        "'a','it''s' a,it's a|it's a,it's (a|it's)")
    assert d.interpolate("rate(x[$__rate_interval]) $__timeFilter(t) $unknown", scope) == (
        "rate(x[1m]) $__timeFilter(t) $unknown")
    with pytest.raises(ValueError):
        d.interpolate("${m:nonsense}", scope)


def test_the_builtins_should_follow_grafanas_interval_rules():
    assert [d.round_interval(s) for s in (0.6, 21.6, 86.4, 3000)] == [0.5, 20, 60, 3600]
    six_hours = d.TimeRange.last("6h")
    assert d.builtins(six_hours, "15s")["__interval"] == "20s"
    assert d.builtins(six_hours, "15s")["__rate_interval"] == "1m"  # max(20s + 15s, 4 x 15s)
    assert d.builtins(six_hours, "30s")["__interval"] == "30s"  # never below the scrape interval
    assert d.builtins(six_hours, "30s")["__rate_interval"] == "2m"
    day = d.builtins(DAY, "15s")
    assert (day["__range"], day["__range_s"], day["__from"]) == ("86400s", "86400", "1767225600000")
    assert d.format_duration(90) == "90s" and d.parse_duration("1m30s") == 90 and d.parse_duration("500ms") == 0.5


def test_the_dashboard_range_should_be_its_saved_one():
    now = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
    assert d.dashboard_range(DEVICE, now) == d.TimeRange(now - timedelta(hours=6), now)
    assert d.dashboard_range(OVERVIEW, now).seconds == 3600


def test_the_postgres_macros_should_expand_as_grafanas_backend_does():
    sql = ("SELECT $__timeGroupAlias(bucket, 5m), $__timeGroup(t, '1h', NULL), $__time(t), $__timeEpoch(t) "
           "WHERE $__timeFilter(e.started_at) AND x > $__timeFrom() AND $__unixEpochFilter(s) -- $__interval")
    assert d.postgres_macros(sql, DAY, "1m") == (
        'SELECT floor(extract(epoch from bucket)/300)*300 AS "time", floor(extract(epoch from t)/3600)*3600, '
        't AS "time", extract(epoch from t) AS "time" WHERE e.started_at BETWEEN \'2026-01-01T00:00:00Z\' AND '
        "'2026-01-02T00:00:00Z' AND x > '2026-01-01T00:00:00Z' AND s >= 1767225600 AND s <= 1767312000 -- 1m")
    with pytest.raises(ValueError):
        d.postgres_macros("$__nonsense(x)", DAY, "1m")


def test_legends_and_sql_time_series_should_be_named_as_grafana_names_them():
    assert d.legend("{{writer}} {{status}}", {"writer": "query", "status": "202"}) == "query 202"
    assert d.legend(None, {"__name__": "up", "job": "x"}) == 'up{job="x"}'
    t1, t2 = datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 1, 0, 1, tzinfo=timezone.utc)
    series = d.sql_series(["time", "metric", "readings"], [(t1, "humidity", 3), (t1, "temperature", 4), (t2, "humidity", 5)])
    assert [(s.name, s.points) for s in series] == [("humidity", [(t1.timestamp(), 3.0), (t2.timestamp(), 5.0)]),
                                                   ("temperature", [(t1.timestamp(), 4.0)])]
    assert [s.name for s in d.sql_series(["time", "avg", "min"], [(t1, 1.0, 0.5)])] == ["avg", "min"]
    assert d.sql_variable_values(["__value", "__text"], [(3, "a (#3)"), (4, "b (#4)")]) == [("3", "a (#3)"), ("4", "b (#4)")]
    assert d.sql_variable_values(["metric"], [("humidity",), ("temperature",)]) == [("humidity", "humidity"),
                                                                                     ("temperature", "temperature")]


def test_unreachable_sources_should_give_an_error_per_query_not_an_exception():
    sources = d.Sources(prometheus="http://127.0.0.1:9", postgres="postgresql://nobody@127.0.0.1:9/none", timeout=3)
    for board in (OVERVIEW, DEVICE):
        results = d.run_dashboard(board, sources)
        missing = d.no_data(results)
        assert len(missing) == len(results) >= len(d.queries(board)) and all("error: " in m for m in missing)
    with pytest.raises(ValueError):
        d.prometheus_variable_values("http://127.0.0.1:9", "classic_query(up)", DAY, 1)


def test_the_command_should_exit_1_naming_the_queries_without_data(capsys):
    code = d.main(["--prometheus", "http://127.0.0.1:9", "--postgres", "postgresql://nobody@127.0.0.1:9/none",
                   "--var", "device=3", "--var", "metric=a,b", "--window", "5m"])
    out = capsys.readouterr().out
    assert code == 1 and f"visiontrack-overview.json: 0 of {len(d.queries(OVERVIEW))} queries returned data" in out
    assert "visiontrack-overview.json: panel 'Accepted readings/s' A: error: URLError" in out
