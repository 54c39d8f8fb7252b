"""Metrics of processes with several workers are one coherent view: gunicorn's workers (prometheus-client
multiprocess mode) and the Celery worker's pool processes, merged on one /metrics. Counters count every
request exactly once, whichever worker served it, and never go down from one scrape to the next, not even
when a pool process dies."""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import poll

pytestmark = pytest.mark.integration


def sample(base: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`, from one scrape."""
    text = requests.get(f"{base}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def _pids(directory) -> set[str]:
    return {m.group(1) for p in directory.glob("*.db") if (m := re.search(r"_(\d+)\.db$", p.name))}


def test_gunicorn_workers_should_add_up_and_counters_never_go_down(monitored, query_url):
    name = "visiontrack_query_http_request_duration_seconds_count"
    labels = {"url_rule": "/api/telemetry/latest", "status": "401", "method": "GET"}
    before = sample(query_url, name, **labels)
    rejected_before = sample(query_url, "visiontrack_query_ingest_rejected_total", reason="unauthorized")
    n = 300
    seen: list[float] = []
    stop = threading.Event()

    def scrape():
        while not stop.is_set():
            seen.append(sample(query_url, name, **labels))

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        with ThreadPoolExecutor(8) as pool:  # concurrent clients, so both gunicorn workers serve
            codes = list(pool.map(lambda _: requests.get(f"{query_url}/api/telemetry/latest?device_id=1",
                                                          timeout=10).status_code, range(n)))
            posts = list(pool.map(lambda _: requests.post(f"{query_url}/api/telemetry/", json={"t": 1},
                                                          timeout=10).status_code, range(40)))
    finally:
        stop.set()
        scraper.join()
    assert set(codes) == {401} and set(posts) == {401}
    assert len(seen) >= 5
    assert all(b >= a for a, b in zip(seen, seen[1:])), f"a counter went down between scrapes: {seen}"
    assert sample(query_url, name, **labels) - before == n
    assert sample(query_url, "visiontrack_query_ingest_rejected_total", reason="unauthorized") - rejected_before == 40
    assert len(_pids(monitored.multiproc_dirs["query"])) >= 2, "only one gunicorn worker wrote metrics"


def test_the_celery_pool_should_export_one_merged_view_that_survives_a_dead_pool_process(monitored, traffic,
                                                                                        redis_client, db):
    base = monitored.worker_metrics
    entries_before = sample(base, "visiontrack_aggregator_entries_total")
    inserted_before = sample(base, "visiontrack_aggregator_readings_total", outcome="inserted")
    device = traffic.devices[2]
    start_ms = int(time.time() * 1000) - 30_000
    k, per_entry = 40, 5
    for i in range(k):
        readings = [["pool_test", start_ms + i * per_entry + j, float(j)] for j in range(per_entry)]
        redis_client.xadd("vt:telemetry", {"v": "1", "d": str(device["id"]), "at": str(start_ms),
                                           "r": str(readings).replace("'", '"').replace(" ", "")})

    def stored():
        with db.cursor() as cur:
            cur.execute("SELECT count(*) FROM telemetry WHERE device_id = %s AND metric = 'pool_test'", (device["id"],))
            return cur.fetchone()[0] == k * per_entry

    poll(stored, timeout=60, what="the test entries stored")
    poll(lambda: sample(base, "visiontrack_aggregator_readings_total", outcome="inserted") - inserted_before >= k * per_entry,
         timeout=10, what="inserted readings counted")
    assert sample(base, "visiontrack_aggregator_entries_total") - entries_before >= k
    # several pool processes wrote metrics, and one scrape shows what they all did
    assert len(_pids(monitored.multiproc_dirs["worker"])) >= 2
    # a pool process dies: what it counted stays counted
    before = [sample(base, n) for n in ("visiontrack_aggregator_entries_total", "visiontrack_aggregator_readings_total")]
    children = [int(p) for p in os.popen(f"pgrep -P {monitored.worker.pid}").read().split()]
    grandchildren = [int(p) for c in children for p in os.popen(f"pgrep -P {c}").read().split()]
    pool = grandchildren or children
    assert len(pool) >= 3, f"expected 3 pool processes under {monitored.worker.pid}, found {pool}"
    os.kill(pool[0], signal.SIGKILL)
    for _ in range(10):
        after = [sample(base, n) for n in ("visiontrack_aggregator_entries_total", "visiontrack_aggregator_readings_total")]
        assert all(b >= a for a, b in zip(before, after)), f"counters went down after a pool process died: {before} -> {after}"
        before = after
        time.sleep(0.2)
