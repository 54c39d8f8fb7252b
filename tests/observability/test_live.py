"""On a live Prometheus scraping the running system with traffic flowing: every target is up and fast,
every rule loads and evaluates, no alert fires on a healthy system while every metric the alerts read
exists, and every expression of the overview dashboard returns data."""
from __future__ import annotations

import json
import re
import statistics
import time
import urllib.request

import pytest

from tests.conftest import poll

from .conftest import DASHBOARDS, RULES

pytestmark = pytest.mark.integration

JOBS = {"visiontrack-registry", "visiontrack-query", "visiontrack-worker", "visiontrack-beat",
        "visiontrack-redis-exporter", "visiontrack-postgres-exporter"}
# Grafana's variables as the overview dashboard is opened by default: every namespace, a short rate window.
GRAFANA_VARIABLES = {"$namespace": ".*", "$__rate_interval": "30s", "$__range": "10m", "${datasource}": "prometheus"}


def grafana(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def overview_expressions() -> list[tuple[str, str]]:
    board = json.loads((DASHBOARDS / "visiontrack-overview.json").read_text())
    exprs = [(f"{p['title']} / {t['legendFormat']}", t["expr"]) for p in board["panels"] for t in p.get("targets", [])]
    for var in board["templating"]["list"]:  # label_values(<selector>, label): the selector must find series
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.+), \w+\)", var["query"]["query"])
            assert m, var
            exprs.append((f"variable {var['name']}", m.group(1)))
    return exprs


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


def test_no_alert_should_fire_on_the_healthy_system_yet_everything_it_reads_should_exist(monitored, traffic):
    """An alert that is quiet because it reads a misspelt metric or label would be quiet forever: every
    selector an alert reads must have series, and its expression (the firing condition) must be empty."""
    rules = [r for g in monitored.api("/api/v1/rules")["groups"] for r in g["rules"]]
    alerts = [r for r in rules if r["type"] == "alerting"]
    assert len(alerts) >= 9
    for rule in rules:
        _assert_selectors_have_series(monitored, rule["name"], rule["query"])
    for name, job in (("pg_up", "visiontrack-postgres-exporter"), ("redis_up", "visiontrack-redis-exporter")):
        assert monitored.query(f'{name}{{job="{job}"}} == 1'), f"{name}: the exporter cannot reach its database"
    for alert in alerts:
        assert monitored.query(alert["query"]) == [], f"{alert['name']} would fire: {alert['query']}"
        assert alert["state"] == "inactive", alert


def test_every_overview_selector_should_have_series(monitored, traffic):
    """Also behind `or on() vector(0)` (which shows 0 rather than no data), the selectors must be real."""
    for title, expr in overview_expressions():
        if "ALERTS" in expr:  # Prometheus' own series, present only while an alert is pending or firing
            continue
        _assert_selectors_have_series(monitored, title, grafana(expr))


def test_every_overview_expression_should_return_data(monitored, traffic):
    missing = []
    for title, expr in overview_expressions():
        try:
            poll(lambda expr=expr: monitored.query(grafana(expr)), timeout=15, interval=0.5, what=title)
        except AssertionError:
            missing.append(f"{title}: {grafana(expr)}")
    assert not missing, "no data for:\n" + "\n".join(missing)


def test_the_expression_check_should_catch_a_misspelt_metric(monitored, traffic):
    with pytest.raises(AssertionError):
        poll(lambda: monitored.query(grafana('sum(rate(visiontrack_ingestor_readings_acepted_total[$__rate_interval]))')),
             timeout=2, what="a misspelt metric")
    assert _selectors('sum(rate({__name__=~"visiontrack_(ingestor|query)_readings_accepted_total"}[5m]))') == {
        '{__name__=~"visiontrack_(ingestor|query)_readings_accepted_total"}'}
    assert _selectors('sum by (namespace) (visiontrack:stream_backlog:entries) > 0 and on (namespace) '
                      '(time() - max(visiontrack_aggregator_last_batch_timestamp_seconds)) > 120 '
                      'or up{job="x", status=~"5.."} == 0') == {
        "visiontrack:stream_backlog:entries", "visiontrack_aggregator_last_batch_timestamp_seconds", 'up{job="x"}'}
    with pytest.raises(AssertionError):
        _assert_selectors_have_series(monitored, "a label the metric lacks",
                                      'rate(visiontrack_query_http_request_total{url_rule="/api/telemetry/"}[1m])', timeout=2)
