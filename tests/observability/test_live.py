"""On a live Prometheus scraping the running system with traffic flowing: every target is up and fast,
every rule loads and evaluates, no alert fires on a healthy system while every metric the alerts read
exists, and every query of the overview dashboard returns data, run as Grafana runs it (stack/dashboards.py:
its variables and built-ins substituted, range queries over its window)."""
from __future__ import annotations

import json
import re
import statistics
import time
import urllib.request

import pytest

from stack import dashboards
from tests.conftest import poll

from .conftest import NAMESPACE, RULES

pytestmark = pytest.mark.integration

JOBS = {"visiontrack-registry", "visiontrack-query", "visiontrack-worker", "visiontrack-beat",
        "visiontrack-redis-exporter", "visiontrack-postgres-exporter"}
OVERVIEW = dashboards.load(dashboards.DASHBOARDS / "visiontrack-overview.json")


def overview_window() -> dashboards.TimeRange:
    """The last 10 minutes: the whole life of this Prometheus, so $__range covers all the traffic."""
    return dashboards.TimeRange.last("10m")


@pytest.fixture(scope="module")
def overview(monitored, traffic) -> list[dashboards.Result]:
    """Every query of the overview as Grafana opens it (namespace All), run until each returns data."""
    return dashboards.run_until_data(OVERVIEW, monitored.sources, window=overview_window(), timeout=30)


def test_every_target_should_be_up(monitored, traffic):
    expected = set(monitored.targets)
    assert expected >= JOBS

    def all_up():
        active = monitored.api("/api/v1/targets")["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in active}
        return health if set(health) == expected and set(health.values()) == {"up"} else None

    health = poll(all_up, timeout=30, interval=0.5, what="every target up")
    assert set(health) == expected


def test_scraping_each_process_should_take_under_50_ms(monitored, traffic):
    """Measured directly (median of 20 scrapes) and as Prometheus sees it (lastScrapeDuration)."""
    report = {}
    for job, base in sorted(monitored.targets.items()):
        times = []
        for _ in range(20):
            started = time.perf_counter()
            with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
                resp.read()
            times.append(time.perf_counter() - started)
        report[job] = statistics.median(times)
    seen = {t["labels"]["job"]: t["lastScrapeDuration"] for t in monitored.api("/api/v1/targets")["activeTargets"]}
    print("\nscrape time, median of 20 (s):", json.dumps(report, indent=1), "\nPrometheus' last scrape (s):",
          json.dumps(seen, indent=1))
    for job, median in report.items():
        assert median < 0.05, f"{job}: /metrics took {median * 1000:.1f} ms (median)"


def test_the_rules_loaded_should_be_the_chart_file_and_all_healthy(monitored, traffic):
    groups = monitored.api("/api/v1/rules")["groups"]
    assert {g["file"] for g in groups} == {str(RULES)}
    loaded = {r["name"] for g in groups for r in g["rules"]}
    in_file = set(re.findall(r"^\s*- (?:alert|record): (\S+)", RULES.read_text(), re.M))
    assert loaded == in_file and len(in_file) >= 12

    def evaluated():
        rules = [r for g in monitored.api("/api/v1/rules")["groups"] for r in g["rules"]]
        return rules if all(r["health"] == "ok" and r.get("lastEvaluation", "").startswith("20") for r in rules) else None

    rules = poll(evaluated, timeout=20, interval=0.5, what="every rule evaluated without error")
    assert not [r["name"] for r in rules if r.get("lastError")]


def test_every_recording_rule_should_have_data(monitored, traffic):
    records = [r for g in monitored.api("/api/v1/rules")["groups"] for r in g["rules"] if r["type"] == "recording"]
    assert records
    for rule in records:
        poll(lambda rule=rule: monitored.query(rule["name"]), timeout=20, interval=0.5, what=f"data for {rule['name']}")


METRIC = r"(?:visiontrack|pg|redis)_[a-z0-9_]+|visiontrack:[a-z0-9_:]+|up"
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
# Labels whose values are outcomes, not structure: a healthy system rightly has no 5xx series.
OUTCOME_LABELS = {"status", "alertstate"}


def _selectors(expr: str) -> set[str]:
    """Every series selector an expression reads, without outcome matchers, as `count()`-able selectors.
    A misspelt metric, a label the metric does not have, or a value it never takes gives no series."""
    found = set()
    for name, body in re.findall(rf'(?<![\w"-])({METRIC})?\{{([^{{}}]*)\}}', expr):
        if name == "" and "__name__" not in body:
            continue
        kept = [f'{k}{op}"{v}"' for k, op, v in MATCHER.findall(body) if k not in OUTCOME_LABELS]
        found.add(f"{name}{{{', '.join(kept)}}}" if kept else name or "{" + body + "}")
    braced = {m for m in re.findall(rf'(?<![\w"-])({METRIC})\s*\{{', expr)}
    for name in re.findall(rf'(?<![\w"-])({METRIC})(?![\w:])', expr):
        if name not in braced and name != "up":
            found.add(name)
    return found


def _assert_selectors_have_series(monitored, what: str, expr: str, timeout: float = 20) -> None:
    selectors = _selectors(expr)
    assert selectors, f"{what}: no selector found in {expr}"
    for selector in selectors:
        poll(lambda selector=selector: monitored.query(f"count({selector})"), timeout=timeout, interval=0.5,
             what=f"series of {selector} (read by {what})")


# The traffic dead-letters a poison entry on purpose (the dashboard's "Dead letters" panel shows it): the
# alert on dead letters must see it, in the namespace of the targets.
CAUSED_BY_THE_TRAFFIC = {"VisionTrackDeadLetters"}


def test_no_alert_should_fire_on_the_healthy_system_yet_everything_it_reads_should_exist(monitored, traffic):
    """An alert that is quiet because it reads a misspelt metric or label would be quiet forever: every
    selector an alert reads must have series, and its expression (the firing condition) must be empty,
    except for the alert the traffic causes on purpose, whose condition must hold."""
    rules = [r for g in monitored.api("/api/v1/rules")["groups"] for r in g["rules"]]
    alerts = [r for r in rules if r["type"] == "alerting"]
    assert len(alerts) >= 9
    for rule in rules:
        _assert_selectors_have_series(monitored, rule["name"], rule["query"])
    for name, job in (("pg_up", "visiontrack-postgres-exporter"), ("redis_up", "visiontrack-redis-exporter")):
        assert monitored.query(f'{name}{{job="{job}"}} == 1'), f"{name}: the exporter cannot reach its database"
    assert CAUSED_BY_THE_TRAFFIC <= {a["name"] for a in alerts}
    for alert in alerts:
        if alert["name"] in CAUSED_BY_THE_TRAFFIC:
            held = monitored.query(alert["query"])
            assert [r["metric"].get("namespace") for r in held] == [NAMESPACE], f"{alert['name']}: {held}"
            continue
        assert monitored.query(alert["query"]) == [], f"{alert['name']} would fire: {alert['query']}"
        assert alert["state"] == "inactive", alert


def test_every_overview_selector_should_have_series(monitored, overview):
    """Also behind `or on() vector(0)` (which shows 0 rather than no data), the selectors must be real."""
    for result in overview:
        if "ALERTS" in result.text:  # Prometheus' own series, present only while an alert is pending or firing
            continue
        if result.query.kind == "variable":  # label_values(<selector>, label): the selector must find series
            expr = re.fullmatch(r"label_values\((.+), \w+\)", result.text).group(1)
        else:
            expr = result.text
        _assert_selectors_have_series(monitored, result.describe(), expr)


def test_every_overview_query_should_return_data(overview):
    missing = dashboards.no_data(overview)
    assert not missing, "no data for:\n" + "\n".join(missing)
    kinds = {r.query.kind for r in overview}
    assert kinds == {"panel", "variable"} and len(overview) == len(dashboards.queries(OVERVIEW))


def test_the_namespace_variable_should_find_the_namespace_and_filter_by_it(monitored, overview):
    """label_values finds the targets' namespace; picking it still shows every panel's data, and picking
    another namespace empties the panels that have no `or on() vector(0)`: the filter is really applied."""
    namespace, = [r for r in overview if r.query.kind == "variable"]
    assert namespace.values == [NAMESPACE]
    picked = dashboards.run_dashboard(OVERVIEW, monitored.sources, {"namespace": NAMESPACE}, overview_window())
    assert not dashboards.no_data(picked), "\n".join(dashboards.no_data(picked))
    assert all(f'namespace=~"{NAMESPACE}"' in r.text for r in picked if r.query.kind == "panel" and "ALERTS" not in r.text)
    other = dashboards.run_dashboard(OVERVIEW, monitored.sources, {"namespace": "elsewhere"}, overview_window())
    emptied = [r for r in other if r.query.kind == "panel" and "vector(0)" not in r.text]
    assert emptied and not [r.describe() for r in emptied if r.has_data]


def test_the_expression_check_should_catch_a_misspelt_metric(monitored, traffic):
    board = {"templating": OVERVIEW["templating"], "panels": [{
        "type": "timeseries", "title": "misspelt", "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "targets": [{"refId": "A", "expr": 'sum(rate(visiontrack_ingestor_readings_acepted_total{namespace=~"$namespace"}'
                                          '[$__rate_interval]))'},
                    {"refId": "B", "expr": "sum(rate(visiontrack_ingestor_readings_accepted_total[$__rate_interval]"}]}]}
    results = dashboards.run_dashboard(board, monitored.sources, window=overview_window())
    missing = dashboards.no_data(results)
    assert len(missing) == 2 and "'misspelt' A: no data" in missing[0] and "'misspelt' B: error: " in missing[1], missing
    assert _selectors('sum(rate({__name__=~"visiontrack_(ingestor|query)_readings_accepted_total"}[5m]))') == {
        '{__name__=~"visiontrack_(ingestor|query)_readings_accepted_total"}'}
    assert _selectors('sum by (namespace) (visiontrack:stream_backlog:entries) > 0 and on (namespace) '
                      '(time() - max(visiontrack_aggregator_last_batch_timestamp_seconds)) > 120 '
                      'or up{job="x", status=~"5.."} == 0') == {
        "visiontrack:stream_backlog:entries", "visiontrack_aggregator_last_batch_timestamp_seconds", 'up{job="x"}'}
    with pytest.raises(AssertionError):
        _assert_selectors_have_series(monitored, "a label the metric lacks",
                                      'rate(visiontrack_query_http_request_total{url_rule="/api/telemetry/"}[1m])', timeout=2)
