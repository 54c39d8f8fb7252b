"""Through the ingress with real Celery processes: aggregates of ingested data equal what the raw rows give
(1m, 15m, 1h and a non-UTC day), latest is right, and a threshold rule fires once, calls its webhook and
resolves. Against a deployment (tests/e2e/conftest.py) the webhook test needs VT_E2E_WEBHOOK_URL."""
from __future__ import annotations

import math
import random
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
import requests

from stack.services import INGESTOR_BINARY
from tests.conftest import poll
from tests.e2e.conftest import ADMIN, READER, TARGET, local_aggregator
from tests.receiver import Receiver

MINUTE = 60_000


@pytest.fixture(scope="module")
def aggregator(request):
    yield from local_aggregator(request, VT_ALERT_EVAL_SECONDS="0.5", VT_WEBHOOK_BACKOFF_SECONDS="1")


def _webhook_receiver() -> tuple[Receiver, str]:
    """A receiver and the URL a rule posts to: on loopback locally; for a deployment, at the address and
    port of VT_E2E_WEBHOOK_URL, an address of this machine that the cluster's pods reach."""
    if not TARGET.deployed:
        receiver = Receiver()
        return receiver, receiver.url("/hook")
    if not TARGET.webhook_url:
        pytest.skip("needs a webhook receiver the deployment reaches: set VT_E2E_WEBHOOK_URL")
    where = urlsplit(TARGET.webhook_url)
    return Receiver(where.hostname, where.port), TARGET.webhook_url


@pytest.fixture(scope="module")
def hooks():
    receiver, url = _webhook_receiver()
    yield url, receiver
    receiver.shutdown()


def _device(ingress) -> dict:
    resp = requests.post(f"{ingress}/api/devices/", json={"name": f"e2e-agg-{uuid.uuid4().hex[:8]}",
                                                          "type": "e2e-agg"}, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    return resp.json()


def _ingest(ingress, device: dict, messages: list[dict]) -> None:
    path = "/api/ingest" if TARGET.deployed or INGESTOR_BINARY.exists() else "/api/telemetry/"
    for i in range(0, len(messages), 500):
        resp = requests.post(f"{ingress}{path}", json=messages[i:i + 500],
                             headers={"Authorization": f"Bearer {device['token']}"})
        assert resp.status_code == 202, resp.text


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _raw_buckets(readings: list[tuple[int, float]], start_of, frm: int, to: int) -> list[tuple]:
    groups: dict[int, list[float]] = {}
    for ts, v in readings:
        if frm <= ts < to:
            groups.setdefault(start_of(ts), []).append(v)
    return [(_iso(k), len(v), min(v), max(v), math.fsum(v)) for k, v in sorted(groups.items())]


def _fixed(step: int):
    return lambda ts: ts - ts % step


def _local_day(zone: str):
    tz = ZoneInfo(zone)

    def start(ts: int) -> int:
        local = datetime.fromtimestamp(ts / 1000, tz)
        midnight = datetime(local.year, local.month, local.day, tzinfo=tz)
        return int(midnight.timestamp() * 1000)

    return start


def test_aggregates_and_latest_of_ingested_data_through_the_ingress(ingress, aggregator):
    device = _device(ingress)
    now = int(time.time() * 1000)
    rng = random.Random(4)
    # Three days of readings, at ragged times, with a resent stretch (duplicates the pipeline drops).
    readings = sorted({now - rng.randrange(60_000, 3 * 86_400_000): round(rng.uniform(-20, 40), 3)
                       for _ in range(3000)}.items())
    messages = [{"ts": ts, "values": {"temperature": v}} for ts, v in readings]
    _ingest(ingress, device, messages + messages[100:300])
    latest_ts, latest_value = readings[-1]

    def latest():
        got = requests.get(f"{ingress}/api/telemetry/latest", params={"device_id": device["id"]},
                           headers=READER).json()
        return got if got["values"].get("temperature", {}).get("ts") == _iso(latest_ts) else None

    got = poll(latest, timeout=30, interval=0.2, what="the latest reading")
    assert got == {"device_id": device["id"], "values": {"temperature": {"ts": _iso(latest_ts),
                                                                         "value": latest_value}}}
    frm, to = now - 2 * 86_400_000 - 12_345, now - 3_333
    cases = [("1m", "UTC", _fixed(MINUTE)), ("15m", "UTC", _fixed(15 * MINUTE)), ("1h", "UTC", _fixed(3_600_000)),
             ("1d", "America/New_York", _local_day("America/New_York")),
             ("1d", "Asia/Kolkata", _local_day("Asia/Kolkata"))]
    for interval, zone, start_of in cases:
        resp = requests.get(f"{ingress}/api/telemetry/aggregate", headers=READER,
                            params={"device_id": device["id"], "metric": "temperature", "interval": interval,
                                    "tz": zone, "from": frm, "to": to, "agg": "count,min,max,sum,avg"})
        assert resp.status_code == 200, resp.text
        items = resp.json()["items"]
        want = _raw_buckets(readings, start_of, frm, to)
        assert [(i["ts"], i["count"], i["min"], i["max"]) for i in items] == [w[:4] for w in want], interval
        for item, w in zip(items, want):
            assert item["sum"] == pytest.approx(w[4], rel=1e-9, abs=1e-9)
            assert item["avg"] == pytest.approx(w[4] / w[1], rel=1e-9, abs=1e-9)


def test_a_threshold_rule_fires_once_calls_its_webhook_and_resolves_through_the_ingress(ingress, aggregator,
                                                                                     hooks):
    url, receiver = hooks

    def calls() -> list[dict]:
        return [c["body"] for c in receiver.on(urlsplit(url).path)]

    device = _device(ingress)
    rule = requests.post(f"{ingress}/api/alert-rules/", headers=ADMIN,
                         json={"name": "e2e hot", "metric": "temperature", "op": ">", "threshold": 30,
                               "device_id": device["id"], "severity": "critical", "webhook_url": url}).json()
    t0 = int(time.time() * 1000) - 30_000
    _ingest(ingress, device, [{"ts": t0 + i * 1000, "values": {"temperature": 31 + i}} for i in range(5)])
    alerts = poll(lambda: requests.get(f"{ingress}/api/alerts/", params={"rule_id": rule["id"]},
                                       headers=READER).json()["items"], timeout=20, what="the alert firing")
    assert [(a["state"], a["device_id"], a["value"]) for a in alerts] == [("firing", device["id"], 31.0)]
    _ingest(ingress, device, [{"ts": t0 + 10_000, "values": {"temperature": 20}}])
    poll(lambda: [c for c in calls() if c["rule_id"] == rule["id"] and c["state"] == "resolved"], timeout=20,
         what="the resolving webhook")
    assert [c["state"] for c in calls() if c["rule_id"] == rule["id"]] == ["firing", "resolved"]
    alerts = requests.get(f"{ingress}/api/alerts/", params={"rule_id": rule["id"]}, headers=READER).json()["items"]
    assert [(a["state"], a["resolved_at"]) for a in alerts] == [("resolved", _iso(t0 + 10_000))]


@pytest.mark.local_processes  # a local simulator process, its state in run_dir, its demo rule made once
def test_the_simulator_demo_rule_fires_and_resolves(ingress, aggregator, run_dir):
    """What `make up` shows: the simulator's hot devices trip its demo rule, which then resolves."""
    import os
    import subprocess
    import sys

    from stack import simulator

    env = {**os.environ, "VT_URL": ingress, "VT_ADMIN_TOKEN": TARGET.admin_token, "SIM_DEVICES": "3",
           "SIM_STATE": str(run_dir / f"sim-{uuid.uuid4().hex[:6]}.json"), "SIM_HOT_PERIOD": "30",
           "SIM_HOT_SECONDS": "14", "SIM_WEBHOOK_PORT": "0", "PYTHONPATH": str(simulator.__file__).rsplit("/stack/", 1)[0]}
    log = open(run_dir / "logs" / "simulator-e2e.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "stack.simulator"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def demo_rule():
            page = requests.get(f"{ingress}/api/alert-rules/", params={"device_type": "sim-thermo"},
                                headers=READER).json()
            return next((r for r in page["items"] if r["name"] == simulator.DEMO_RULE["name"]), None)

        rule = poll(demo_rule, timeout=20, what="the demo rule")

        def resolved():
            items = requests.get(f"{ingress}/api/alerts/", params={"rule_id": rule["id"], "state": "resolved"},
                                 headers=READER).json()["items"]
            return items or None

        alert = poll(resolved, timeout=90, interval=0.5, what="a demo alert firing and resolving")[0]
        assert alert["value"] > 30
    finally:
        proc.terminate()
        proc.wait(10)
