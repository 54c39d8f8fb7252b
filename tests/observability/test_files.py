"""The observability files on their own (no servers): the rules pass `promtool check rules` and their unit
tests pass `promtool test rules` (and a wrong expectation fails them); every alert has a summary, a
description and a runbook section; the dashboards are valid JSON with unique uids and panel ids; the local
Prometheus config passes `promtool check config`."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from stack import prometheus as prom

from .conftest import DASHBOARDS, RULE_TESTS, RULES, RUNBOOK, need

pytestmark = pytest.mark.unit


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([need("promtool"), *args], capture_output=True, text=True, timeout=120)


def alerts() -> list[dict]:
    """The alerting rules of rules.yaml, read with a tiny line parser (no YAML library in the venv)."""
    found, current = [], None
    for line in RULES.read_text().splitlines():
        if m := re.match(r"\s*- alert: (\S+)", line):
            current = {"alert": m.group(1)}
            found.append(current)
        elif m := re.match(r"\s*- record: ", line):
            current = None
        elif current is not None and (m := re.match(r"\s+(summary|description|runbook_url|severity): (.+)", line)):
            current[m.group(1)] = m.group(2).strip().strip('"')
    return found


def test_the_rules_should_pass_promtool_check():
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_rules_should_pass_their_unit_tests():
    proc = promtool("test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_should_have_a_unit_test_that_shows_it_firing():
    tests = RULE_TESTS.read_text()
    for alert in alerts():
        assert re.search(rf"alertname: {alert['alert']}\n\s+exp_alerts:\n\s+- exp_labels", tests), alert["alert"]


def test_a_wrong_expectation_should_fail_the_rule_tests(tmp_path):
    (tmp_path / "rules.yaml").write_text(RULES.read_text())
    broken = RULE_TESTS.read_text().replace("severity: critical, job: visiontrack-query",
                                            "severity: warning, job: visiontrack-query", 1)
    assert broken != RULE_TESTS.read_text()
    (tmp_path / "rules.test.yaml").write_text(broken)
    assert promtool("test", "rules", str(tmp_path / "rules.test.yaml")).returncode != 0


def test_every_alert_should_have_a_summary_a_description_and_a_runbook_section():
    runbook = RUNBOOK.read_text()
    sections = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^## (.+)$", runbook, re.M)}
    found = alerts()
    assert {a["alert"] for a in found} >= {
        "VisionTrackPartDown", "VisionTrackIngestErrors", "VisionTrackBacklogGrowing",
        "VisionTrackAggregatorNotConsuming", "VisionTrackStreamNotTrimmed", "VisionTrackDeadLetters",
        "VisionTrackQueryLatencyHigh",
        "VisionTrackPostgresUnreachable", "VisionTrackRedisUnreachable"}
    for alert in found:
        assert alert.get("summary") and alert.get("description") and alert.get("severity") in ("warning", "critical"), alert
        path, _, anchor = alert["runbook_url"].partition("#")
        assert path == "docs/runbook.md" and anchor == alert["alert"].lower(), alert
        assert anchor in sections, f"docs/runbook.md has no section for {alert['alert']}"


def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def test_the_dashboards_should_be_valid_json_with_unique_uids_and_panel_ids():
    boards = dashboards()
    assert set(boards) == {"visiontrack-overview.json", "visiontrack-device-telemetry.json"}
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids) and all(re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", u) for u in uids)
    assert {b["title"] for b in boards.values()} == {"VisionTrack overview", "Device telemetry"}
    for name, board in boards.items():
        ids = [p["id"] for p in board["panels"]]
        assert len(set(ids)) == len(ids), name
        assert "id" not in board or board["id"] is None, f"{name}: a fixed dashboard id clashes across Grafanas"
        for panel in board["panels"]:
            if panel["type"] != "row":
                assert panel.get("targets"), f"{name}: panel {panel['title']} has no query"
                assert panel["gridPos"]["w"] <= 24


def test_the_overview_should_cover_what_the_issue_asks_for():
    exprs = " ".join(t["expr"] for p in dashboards()["visiontrack-overview.json"]["panels"] for t in p.get("targets", []))
    for needle in ("readings_accepted_total", "readings_rejected_total", "http_request_duration_seconds_bucket",
                   "stream_lag_entries", "stream_pending_entries", 'outcome="inserted"', 'outcome="duplicate"',
                   "dead_letters_total", "ALERTS", "histogram_quantile(0.99", "histogram_quantile(0.5"):
        assert needle in exprs, needle


def test_the_device_dashboard_should_read_the_rollups_with_device_and_metric_pickers():
    board = dashboards()["visiontrack-device-telemetry.json"]
    sql = " ".join(t["rawSql"] for p in board["panels"] for t in p.get("targets", []))
    assert "telemetry_$resolution" in sql and "alert_events" in sql
    for aggregate in ("min(min)", "max(max)", "sum(sum) / sum(count)"):
        assert aggregate in sql, aggregate
    pickers = {v["name"]: v for v in board["templating"]["list"]}
    assert pickers["device"]["type"] == pickers["metric"]["type"] == "query"


def test_the_local_prometheus_config_should_pass_promtool(tmp_path):
    need("prometheus")
    daemon = prom.prometheus(9, tmp_path, {"visiontrack-query": ["127.0.0.1:1"]}, tmp_path / "log")
    config = tmp_path / "prometheus.yml"
    assert str(RULES) in config.read_text() and daemon.argv[0].endswith("prometheus")
    proc = promtool("check", "config", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
