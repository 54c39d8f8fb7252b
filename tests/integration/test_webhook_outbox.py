"""The alert webhook outbox with real Postgres, Redis, Celery worker and beat, and a real local HTTP
receiver: a change whose enqueue was lost is delivered by the sweep, a delivered call is never sent again,
a retrying call is not doubled by the sweep, a call given up stays given up, and deleting a device resolves
its firing alerts with "resolved" webhooks even when no evaluation runs.

The module's aggregator does not evaluate on its own (VT_ALERT_EVAL_SECONDS is an hour): each test runs
the evaluation itself, in this process, or asks the worker for one."""
from __future__ import annotations

import time
import uuid

import psycopg2
import pytest
import requests
from celery import Celery

from tests.conftest import poll
from tests.integration.api import ADMIN, create_device, create_rule, list_alerts, send_readings

GRACE = 3.0  # VT_WEBHOOK_SWEEP_GRACE_SECONDS of this module
SWEEP = 0.5  # VT_WEBHOOK_SWEEP_SECONDS


@pytest.fixture(scope="module")
def aggregator(base_env, run_dir):
    from tests.conftest import Aggregator

    agg = Aggregator(base_env, run_dir, VT_ALERT_EVAL_SECONDS="3600", VT_WEBHOOK_SWEEP_SECONDS=str(SWEEP),
                     VT_WEBHOOK_SWEEP_GRACE_SECONDS=str(GRACE), VT_WEBHOOK_BACKOFF_SECONDS="1",
                     VT_WEBHOOK_MAX_RETRIES="3").start()
    yield agg
    agg.stop()


@pytest.fixture(scope="module")
def celery_client(base_env):
    client = Celery(broker=base_env["REDIS_URL"])
    yield client
    client.close()


@pytest.fixture
def crashing_enqueue(postgres, monkeypatch):
    """evaluate_alerts run here, against the test database, with a broker that is gone: the evaluation
    commits, and no webhook task is enqueued (as if the worker died right after the commit)."""
    from aggregator.tasks import alerts as tasks

    conn = psycopg2.connect(postgres.url)
    monkeypatch.setattr(tasks, "_connection", lambda: conn)
    monkeypatch.setattr(tasks, "config", tasks.config.replace(webhook_sweep_grace_seconds=GRACE))

    def broker_gone(*args, **kwargs):
        raise ConnectionError("broker gone")

    monkeypatch.setattr(tasks.notify_webhook, "apply_async", broker_gone)
    yield tasks.evaluate_alerts
    conn.close()


def _outbox(db, path: str) -> list[tuple]:
    with db.cursor() as cur:
        cur.execute("SELECT id, attempts, gave_up_at IS NOT NULL, last_error FROM webhook_outbox "
                    "WHERE url LIKE %s ORDER BY id", ("%" + path,))
        return cur.fetchall()


def _latest_stored(db, device_id: int, metric: str, ms: int):
    def stored():
        with db.cursor() as cur:
            cur.execute("SELECT 1 FROM telemetry_latest WHERE device_id = %s AND metric = %s "
                        "AND ts >= to_timestamp(%s / 1000.0)", (device_id, metric, ms))
            return cur.fetchone()
    poll(stored, what="the reading stored")


def _hot_device(registry_url, query_url, db, receiver, hook: str) -> tuple[dict, dict]:
    """A device whose stored reading breaches a new rule with a webhook on `hook` (not yet evaluated)."""
    device = create_device(registry_url, type=f"ob-{uuid.uuid4().hex[:6]}")
    rule = create_rule(registry_url, metric="temperature", op=">", threshold=30, device_id=device["id"],
                 webhook_url=receiver.url(hook))
    ms = int(time.time() * 1000) - 1000
    send_readings(query_url, device["id"], (ms, 40.0))
    _latest_stored(db, device["id"], "temperature", ms)
    return device, rule


def test_a_change_whose_enqueue_was_lost_is_delivered_by_the_sweep_once(registry_url, query_url, db, receiver,
                                                                        aggregator, crashing_enqueue):
    device, rule = _hot_device(registry_url, query_url, db, receiver, "/ob-lost")
    # The row is written after this instant; the sweep may send it GRACE after it was written. (Taken
    # after the evaluation returns, the instant would be late by however long a loaded machine makes
    # the evaluation take after its commit.)
    began = time.monotonic()
    assert crashing_enqueue() >= 1  # the evaluation committed; its enqueue failed
    alert = list_alerts(query_url, rule_id=rule["id"])[0]
    assert alert["state"] == "firing" and len(_outbox(db, "/ob-lost")) == 1

    call = poll(lambda: receiver.on("/ob-lost"), timeout=GRACE + 15, what="the swept webhook")[0]
    assert call["at"] - began >= GRACE - 0.5, "sent before the grace period: not by the sweep"
    assert (call["status"], call["header"]) == (200, f"{alert['id']}:firing")
    assert call["body"] == {**{k: alert[k] for k in ("id", "rule_id", "device_id", "state", "value", "started_at",
                                                    "resolved_at")},
                            "rule": {k: rule[k] for k in ("name", "kind", "severity", "metric", "op", "threshold",
                                                          "for_seconds", "after_seconds", "device_id",
                                                          "device_type")}}
    poll(lambda: not _outbox(db, "/ob-lost"), what="the delivered row removed")
    time.sleep(GRACE + 4 * SWEEP)  # several sweeps later: not sent again
    assert len(receiver.on("/ob-lost")) == 1


def test_a_call_delivered_by_the_fast_path_is_not_sent_again_by_the_sweep(registry_url, query_url, db, receiver,
                                                                         aggregator, celery_client):
    _hot_device(registry_url, query_url, db, receiver, "/ob-fast")
    asked = time.monotonic()
    celery_client.send_task("aggregator.evaluate_alerts", queue="visiontrack")
    call = poll(lambda: receiver.on("/ob-fast"), timeout=15, what="the webhook")[0]
    assert call["at"] - asked < GRACE, "not sent by the task enqueued after the commit"
    poll(lambda: not _outbox(db, "/ob-fast"), what="the delivered row removed")
    time.sleep(GRACE + 4 * SWEEP)
    assert [c["status"] for c in receiver.on("/ob-fast")] == [200]


def test_a_call_retrying_longer_than_the_grace_period_is_not_doubled_by_the_sweep(
        registry_url, query_url, db, receiver, aggregator, celery_client):
    receiver.fail_first["/ob-flaky"] = 3  # attempts after 0, 1, 3 and 7 s: the last one past two graces
    _hot_device(registry_url, query_url, db, receiver, "/ob-flaky")
    celery_client.send_task("aggregator.evaluate_alerts", queue="visiontrack")
    poll(lambda: any(c["status"] == 200 for c in receiver.on("/ob-flaky")), timeout=30, what="the delivery")
    poll(lambda: not _outbox(db, "/ob-flaky"), what="the delivered row removed")
    time.sleep(GRACE + 4 * SWEEP)
    calls = receiver.on("/ob-flaky")
    assert [c["status"] for c in calls] == [503, 503, 503, 200]
    assert len({c["header"] for c in calls}) == 1
    gaps = [b["at"] - a["at"] for a, b in zip(calls, calls[1:])]
    assert gaps[0] >= 0.9 and gaps[1] >= 1.9 and gaps[2] >= 3.9, gaps  # one chain: no attempt from the sweep


def test_a_call_given_up_after_its_retries_is_kept_marked_and_not_swept_again(
        registry_url, query_url, db, receiver, aggregator, celery_client):
    receiver.fail_first["/ob-dead"] = 1000
    _hot_device(registry_url, query_url, db, receiver, "/ob-dead")
    celery_client.send_task("aggregator.evaluate_alerts", queue="visiontrack")
    rows = poll(lambda: [r for r in _outbox(db, "/ob-dead") if r[2]], timeout=30, what="the call given up")
    assert [(attempts, error) for _id, attempts, _gave_up, error in rows] == [(4, "HTTP 503")]  # 1 + 3 retries
    time.sleep(GRACE + 4 * SWEEP)
    assert len(receiver.on("/ob-dead")) == 4


def test_deleting_a_device_resolves_its_firing_alerts_with_webhooks_before_its_purge_removes_them(
        registry_url, query_url, db, receiver, aggregator, crashing_enqueue, celery_client):
    device, own = _hot_device(registry_url, query_url, db, receiver, "/ob-gone-own")
    typed = create_rule(registry_url, metric="temperature", op=">", threshold=30, device_type=device["type"],
                  webhook_url=receiver.url("/ob-gone-typed"))
    assert crashing_enqueue() >= 2  # both fire; the sweep sends their webhooks
    fired = {r["id"]: list_alerts(query_url, rule_id=r["id"]) for r in (own, typed)}
    assert all(len(a) == 1 and a[0]["state"] == "firing" for a in fired.values())
    for hook in ("/ob-gone-own", "/ob-gone-typed"):
        poll(lambda hook=hook: receiver.on(hook), timeout=GRACE + 15, what="the firing webhook")

    assert requests.delete(f"{registry_url}/api/devices/{device['id']}", headers=ADMIN).status_code == 204
    # The rule scoped to the device is gone from the API at once; the rule for its type stays.
    assert requests.get(f"{registry_url}/api/alert-rules/{own['id']}", headers=ADMIN).status_code == 404
    assert requests.get(f"{registry_url}/api/alert-rules/{typed['id']}", headers=ADMIN).status_code == 200
    # No evaluation runs in this module: the purge resolves the alerts itself before it removes them.
    celery_client.send_task("aggregator.purge_deleted_devices", queue="visiontrack")
    for rule, hook in ((own, "/ob-gone-own"), (typed, "/ob-gone-typed")):
        calls = poll(lambda hook=hook: receiver.on(hook) if len(receiver.on(hook)) >= 2 else None,
                     timeout=GRACE + 15, what=f"the resolving webhook on {hook}")
        assert [c["body"]["state"] for c in calls] == ["firing", "resolved"]
        alert, resolved = fired[rule["id"]][0], calls[1]["body"]
        assert (resolved["id"], resolved["device_id"], resolved["value"], resolved["started_at"]) == (
            alert["id"], device["id"], alert["value"], alert["started_at"])
        assert resolved["resolved_at"] >= alert["started_at"] and resolved["rule"] == calls[0]["body"]["rule"]
        assert calls[1]["header"] == f"{alert['id']}:resolved"

    def device_alerts():
        with db.cursor() as cur:
            cur.execute("SELECT count(*) FROM alert_events WHERE device_id = %s", (device["id"],))
            return cur.fetchone()[0]
    poll(lambda: device_alerts() == 0, what="the device's alerts removed")
    assert list_alerts(query_url, device_id=device["id"]) == []
    time.sleep(GRACE + 4 * SWEEP)
    assert len(receiver.on("/ob-gone-own")) == len(receiver.on("/ob-gone-typed")) == 2


def test_a_rule_can_only_name_an_existing_device(registry_url):
    device = create_device(registry_url)
    rule = create_rule(registry_url, metric="t", op=">", threshold=1, device_id=device["id"])
    url = f"{registry_url}/api/alert-rules/{rule['id']}"
    assert requests.patch(url, json={"device_id": device["id"], "name": "same"}, headers=ADMIN).status_code == 200
    bad = requests.patch(url, json={"device_id": 987654321}, headers=ADMIN)
    assert bad.status_code == 400 and bad.json()["details"][0]["field"] == "device_id"
    assert requests.delete(f"{registry_url}/api/devices/{device['id']}", headers=ADMIN).status_code == 204
    made = requests.post(f"{registry_url}/api/alert-rules/", headers=ADMIN,
                         json={"name": "late", "metric": "t", "op": ">", "threshold": 1, "device_id": device["id"]})
    assert made.status_code == 400 and made.json()["details"][0]["field"] == "device_id"


def test_the_sweep_prunes_calls_given_up_more_than_a_week_ago(db, aggregator):
    with db.cursor() as cur:
        cur.execute("""INSERT INTO webhook_outbox (url, body, next_attempt_at, gave_up_at, last_error)
                       VALUES ('http://127.0.0.1:9/ob-old', '{}', now(), now() - interval '8 days', 'HTTP 503'),
                              ('http://127.0.0.1:9/ob-recent', '{}', now(), now() - interval '6 days', 'HTTP 503')""")
    poll(lambda: not _outbox(db, "/ob-old"), timeout=GRACE + 10, what="the week-old given-up call pruned")
    assert [(gave_up, error) for _id, _attempts, gave_up, error in _outbox(db, "/ob-recent")] == [(True, "HTTP 503")]
