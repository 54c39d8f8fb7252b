"""Alerts end to end in real processes: rules in the registry, readings through the query service's POST,
the stream and a real Celery worker and beat, alerts in `GET /api/alerts/`, webhooks to a real local HTTP
receiver (one of them failing its first attempts)."""
from __future__ import annotations

import time
import uuid

import pytest
import requests

from tests.conftest import poll
from tests.integration.api import ADMIN, READER, create_device, create_rule, list_alerts, send_readings


@pytest.fixture(scope="module")
def alerting_aggregator(base_env, run_dir):
    from tests.conftest import Aggregator

    agg = Aggregator(base_env, run_dir, VT_ALERT_EVAL_SECONDS="0.5", VT_WEBHOOK_BACKOFF_SECONDS="1",
                     VT_WEBHOOK_MAX_RETRIES="4").start()
    yield agg
    agg.stop()


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def test_a_threshold_rule_fires_once_calls_its_webhook_and_resolves(registry_url, query_url, receiver,
                                                                    alerting_aggregator):
    device = create_device(registry_url)
    rule = create_rule(registry_url, metric="temperature", op=">", threshold=30, device_id=device["id"],
                 severity="critical", webhook_url=receiver.url("/hook-a"))
    now = int(time.time() * 1000)
    send_readings(query_url, device["id"], (now - 9000, 20.0), (now - 8000, 31.0), (now - 7000, 35.0))
    firing = poll(lambda: list_alerts(query_url, rule_id=rule["id"]), what="the alert firing")
    assert len(firing) == 1
    assert {k: firing[0][k] for k in ("rule_id", "device_id", "state", "value", "started_at", "resolved_at")} == {
        "rule_id": rule["id"], "device_id": device["id"], "state": "firing", "value": 31.0,
        "started_at": _iso(now - 8000), "resolved_at": None}
    call = poll(lambda: receiver.on("/hook-a"), what="the firing webhook")[0]
    assert call["body"]["state"] == "firing" and call["body"]["id"] == firing[0]["id"]
    assert call["body"]["rule"]["severity"] == "critical" and call["header"] == f"{firing[0]['id']}:firing"

    send_readings(query_url, device["id"], (now - 6000, 40.0))  # still over: no second alert
    send_readings(query_url, device["id"], (now - 5000, 29.0))  # clears
    resolved = poll(lambda: [a for a in list_alerts(query_url, rule_id=rule["id"]) if a["state"] == "resolved"],
                    what="the alert resolved")
    assert len(list_alerts(query_url, rule_id=rule["id"])) == 1
    assert resolved[0]["resolved_at"] == _iso(now - 5000)
    calls = poll(lambda: receiver.on("/hook-a") if len(receiver.on("/hook-a")) >= 2 else None,
                 what="the resolving webhook")
    assert [c["body"]["state"] for c in calls] == ["firing", "resolved"]

    send_readings(query_url, device["id"], (now - 4000, 50.0))  # a new episode: a new alert
    poll(lambda: len(list_alerts(query_url, rule_id=rule["id"])) == 2, what="a second episode")
    assert [a["state"] for a in list_alerts(query_url, rule_id=rule["id"])] == ["firing", "resolved"]
    assert [a["state"] for a in list_alerts(query_url, rule_id=rule["id"], state="firing")] == ["firing"]


def test_for_seconds_needs_the_condition_to_hold_that_long(registry_url, query_url, alerting_aggregator):
    device = create_device(registry_url)
    rule = create_rule(registry_url, metric="pressure", op=">=", threshold=5, for_seconds=10, device_id=device["id"])
    t0 = int(time.time() * 1000) - 60_000
    # Over for 9 s, a dip, then over for 12 s: only the second stretch lasts 10 s.
    send_readings(query_url, device["id"], *[(t0 + i * 1000, 6.0) for i in range(10)], (t0 + 10_000, 1.0),
          *[(t0 + 11_000 + i * 1000, 5.0 + i) for i in range(13)], metric="pressure")
    firing = poll(lambda: list_alerts(query_url, rule_id=rule["id"]), what="the alert firing")
    assert firing[0]["started_at"] == _iso(t0 + 11_000) and firing[0]["value"] == 15.0  # held 10 s at t0+21 s
    time.sleep(1.5)
    assert len(list_alerts(query_url, rule_id=rule["id"])) == 1


def test_a_failing_webhook_is_retried_with_backoff_until_it_succeeds(registry_url, query_url, receiver,
                                                                     alerting_aggregator):
    receiver.fail_first["/hook-flaky"] = 2
    device = create_device(registry_url)
    create_rule(registry_url, metric="temperature", op="<", threshold=0, device_id=device["id"],
          webhook_url=receiver.url("/hook-flaky"))
    send_readings(query_url, device["id"], (int(time.time() * 1000) - 1000, -5.0))
    calls = poll(lambda: receiver.on("/hook-flaky") if len(receiver.on("/hook-flaky")) >= 3 else None,
                 timeout=30, what="three webhook attempts")
    assert [c["status"] for c in calls] == [503, 503, 200]
    assert len({c["header"] for c in calls}) == 1
    gaps = [b["at"] - a["at"] for a, b in zip(calls, calls[1:])]
    assert gaps[0] >= 0.9 and gaps[1] >= 1.9, gaps  # 1 s, then 2 s
    time.sleep(1)
    assert len(receiver.on("/hook-flaky")) == 3


def test_inactivity_fires_for_a_silent_device_of_the_type_and_resolves_on_data(registry_url, query_url, receiver,
                                                                               alerting_aggregator):
    kind = f"pump-{uuid.uuid4().hex[:6]}"
    quiet, other = create_device(registry_url, type=kind), create_device(registry_url)
    rule = create_rule(registry_url, kind="inactivity", after_seconds=2, device_type=kind,
                 webhook_url=receiver.url("/hook-quiet"))
    firing = poll(lambda: list_alerts(query_url, rule_id=rule["id"]), what="the inactivity alert")
    assert [(a["device_id"], a["state"]) for a in firing] == [(quiet["id"], "firing")]
    send_readings(query_url, quiet["id"], (int(time.time() * 1000), 1.0))
    poll(lambda: list_alerts(query_url, rule_id=rule["id"], state="resolved"), what="the inactivity alert resolved")
    assert not list_alerts(query_url, device_id=other["id"])
    calls = poll(lambda: receiver.on("/hook-quiet") if len(receiver.on("/hook-quiet")) >= 2 else None,
                 what="both webhooks")
    assert [c["body"]["state"] for c in calls] == ["firing", "resolved"]


def _state(db, rule_id: int, device_id: int):
    with db.cursor() as cur:
        cur.execute("SELECT watermark, since FROM alert_state WHERE rule_id = %s AND device_id = %s",
                    (rule_id, device_id))
        return cur.fetchone()


def test_for_seconds_fires_by_the_clock_when_no_later_reading_comes(registry_url, query_url, receiver, db,
                                                                     alerting_aggregator):
    kind = f"fan-{uuid.uuid4().hex[:6]}"
    quiet, cleared, stale = (create_device(registry_url, type=kind) for _ in range(3))
    rule = create_rule(registry_url, metric="load", op=">", threshold=0.9, for_seconds=2, device_type=kind,
                 webhook_url=receiver.url("/hook-held"))
    with db.cursor() as cur:  # an old rule, so it sees readings from before the stale limit
        cur.execute("UPDATE alert_rules SET updated_at = now() - interval '1 hour' WHERE id = %s", (rule["id"],))
    now = int(time.time() * 1000)
    # Over, then silent for longer than for_seconds + 5 min: the old reading no longer stands for the condition.
    send_readings(query_url, stale["id"], (now - 400_000, 1.0), metric="load")
    # Over, then back under before for_seconds passed.
    send_readings(query_url, cleared["id"], (now - 1500, 1.0), (now - 1000, 0.5), metric="load")
    poll(lambda: _state(db, rule["id"], stale["id"]) and _state(db, rule["id"], cleared["id"]),
         what="both readings evaluated")
    assert _state(db, rule["id"], cleared["id"])[1] is None

    sent = int(time.time() * 1000)
    send_readings(query_url, quiet["id"], (sent, 1.0), metric="load")  # over, and then nothing more
    firing = poll(lambda: list_alerts(query_url, rule_id=rule["id"]), what="the alert firing by the clock")
    assert [(a["device_id"], a["state"], a["value"], a["started_at"]) for a in firing] == [
        (quiet["id"], "firing", 1.0, _iso(sent))]
    assert time.time() * 1000 >= sent + 2000, "fired before the condition held for for_seconds"
    call = poll(lambda: receiver.on("/hook-held"), what="the firing webhook")[0]
    assert (call["body"]["id"], call["body"]["state"]) == (firing[0]["id"], "firing")
    # That evaluation also passed over the stale and the cleared devices, whose holds began earlier.
    assert len(list_alerts(query_url, rule_id=rule["id"])) == 1


def _firing_rule(registry_url, query_url, receiver, hook: str) -> tuple[dict, dict, dict]:
    """A rule with a webhook and one firing alert: (rule, alert, its firing webhook call)."""
    device = create_device(registry_url)
    rule = create_rule(registry_url, metric="temperature", op=">", threshold=30, device_id=device["id"],
                 webhook_url=receiver.url(hook))
    send_readings(query_url, device["id"], (int(time.time() * 1000) - 1000, 40.0))
    alert = poll(lambda: list_alerts(query_url, rule_id=rule["id"]), what="the alert firing")[0]
    call = poll(lambda: receiver.on(hook), what="the firing webhook")[0]
    return rule, alert, call


def _resolved_call(receiver, hook: str, alert: dict, firing_call: dict) -> dict:
    calls = poll(lambda: receiver.on(hook) if len(receiver.on(hook)) >= 2 else None, what="the resolving webhook")
    assert [c["body"]["state"] for c in calls] == ["firing", "resolved"]
    body = calls[1]["body"]
    assert body.keys() == firing_call["body"].keys() and body["rule"] == firing_call["body"]["rule"]
    assert (body["id"], body["value"], body["started_at"]) == (alert["id"], alert["value"], alert["started_at"])
    assert body["resolved_at"] >= body["started_at"] and calls[1]["header"] == f"{alert['id']}:resolved"
    return body


def test_disabling_a_rule_resolves_its_firing_alerts_with_their_webhooks(registry_url, query_url, receiver,
                                                                         alerting_aggregator):
    rule, alert, call = _firing_rule(registry_url, query_url, receiver, "/hook-disabled")
    resp = requests.patch(f"{registry_url}/api/alert-rules/{rule['id']}", json={"enabled": False}, headers=ADMIN)
    assert resp.status_code == 200
    body = _resolved_call(receiver, "/hook-disabled", alert, call)
    assert [(a["id"], a["state"], a["resolved_at"]) for a in list_alerts(query_url, rule_id=rule["id"])] == [
        (alert["id"], "resolved", body["resolved_at"])]


def test_deleting_a_rule_resolves_its_firing_alerts_with_their_webhooks_then_removes_them(
        registry_url, query_url, receiver, db, alerting_aggregator):
    rule, alert, call = _firing_rule(registry_url, query_url, receiver, "/hook-deleted")
    url = f"{registry_url}/api/alert-rules/{rule['id']}"
    assert requests.delete(url, headers=ADMIN).status_code == 204
    assert requests.get(url, headers=ADMIN).status_code == 404  # gone from the API at once
    _resolved_call(receiver, "/hook-deleted", alert, call)

    def removed():
        with db.cursor() as cur:
            cur.execute("SELECT count(*) FROM alert_rules WHERE id = %s", (rule["id"],))
            return cur.fetchone()[0] == 0
    poll(removed, what="the deleted rule removed")
    assert list_alerts(query_url, rule_id=rule["id"]) == []
    assert len(receiver.on("/hook-deleted")) == 2


def test_deleting_a_device_resolves_its_firing_alerts_with_their_webhooks_then_removes_them(
        registry_url, query_url, receiver, db, alerting_aggregator):
    rule, alert, call = _firing_rule(registry_url, query_url, receiver, "/hook-device-gone")
    assert requests.delete(f"{registry_url}/api/devices/{alert['device_id']}", headers=ADMIN).status_code == 204
    url = f"{registry_url}/api/alert-rules/{rule['id']}"
    assert requests.get(url, headers=ADMIN).status_code == 404  # its rule is gone from the API at once
    _resolved_call(receiver, "/hook-device-gone", alert, call)

    def removed():
        with db.cursor() as cur:
            cur.execute("SELECT (SELECT count(*) FROM alert_rules WHERE id = %(r)s) + "
                        "(SELECT count(*) FROM alert_events WHERE device_id = %(d)s)",
                        {"r": rule["id"], "d": alert["device_id"]})
            return cur.fetchone()[0] == 0
    poll(removed, what="the rule and alerts of the deleted device removed")
    assert list_alerts(query_url, device_id=alert["device_id"]) == []
    assert len(receiver.on("/hook-device-gone")) == 2


def test_alert_list_filters_and_pages(query_url):
    everything = list_alerts(query_url, limit=1000)
    assert len(everything) >= 4
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = requests.get(f"{query_url}/api/alerts/", params=params, headers=READER).json()
        seen += [a["id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [a["id"] for a in everything] == sorted(seen, reverse=True)
    first = everything[-1]
    assert all(a["started_at"] >= first["started_at"] for a in list_alerts(query_url, **{"from": first["started_at"]}))
    assert list_alerts(query_url, to=first["started_at"], rule_id=first["rule_id"]) == []
    bad = requests.get(f"{query_url}/api/alerts/", params={"state": "open"}, headers=READER)
    assert bad.status_code == 400 and bad.json()["details"][0]["field"] == "state"
