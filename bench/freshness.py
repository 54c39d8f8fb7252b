"""Freshness: how long a reading accepted by the ingestor takes to be visible to queries.

A probe device posts one reading at a time (`POST /api/ingest`) and polls the query service's
`GET /api/telemetry/latest` until that reading shows. A reading's freshness runs from just before its POST
was sent to the first answer that shows it, so it includes the 202 itself; polls go out every
POLL_SECONDS, which bounds the resolution. Run beside a background load (bench/end_to_end.py), it gives
freshness against the offered rate.
"""
from __future__ import annotations

import calendar
import random
import statistics
import time
from dataclasses import dataclass

import requests

POLL_SECONDS = 0.002
GIVE_UP_SECONDS = 10.0
GIVE_UP_AFTER_LOST = 5  # probes lost before a run stops probing


@dataclass
class Freshness:
    seconds: list[float]  # one per reading that became visible
    lost: int  # readings not visible within GIVE_UP_SECONDS
    refused: int = 0  # probes answered 503 (the pipeline behind its high-water mark), not counted above

    def quantile(self, q: float) -> float:
        """The q-quantile (0..1) in seconds, nearest rank; a lost reading counts as infinitely late."""
        ordered = sorted(self.seconds) + [float("inf")] * self.lost
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")


def probe(ingest_url: str, device_token: str, query_url: str, reader_token: str, device_id: int,
          readings: int, pause: float = 0.02, metric: str = "probe") -> Freshness:
    """Post `readings` readings one after another, each waited for, `pause` (jittered) apart."""
    post = requests.Session()
    post.headers.update({"Authorization": f"Bearer {device_token}", "Content-Type": "application/json"})
    poll = requests.Session()
    poll.headers.update({"Authorization": f"Bearer {reader_token}"})
    latest = f"{query_url}/api/telemetry/latest"
    params = {"device_id": device_id, "metric": metric}
    seconds: list[float] = []
    lost = refused = 0
    last_ts = 0
    for _ in range(readings):
        ts = max(int(time.time() * 1000), last_ts + 1)  # one row per reading: distinct times
        last_ts = ts
        started = time.perf_counter()
        resp = post.post(f"{ingest_url}/api/ingest", data=f'{{"ts":{ts},"values":{{"{metric}":1}}}}')
        if resp.status_code == 503:  # the pipeline is behind (backlog over its high-water mark): not accepted
            refused += 1
            time.sleep(float(resp.headers.get("Retry-After", "1")))
            continue
        if resp.status_code != 202:
            raise RuntimeError(f"probe reading refused: {resp.status_code} {resp.text[:200]}")
        while True:
            got = poll.get(latest, params=params)
            if got.status_code == 200:
                value = got.json()["values"].get(metric)
                if value and _epoch_ms(value["ts"]) >= ts:
                    seconds.append(time.perf_counter() - started)
                    break
            if time.perf_counter() - started > GIVE_UP_SECONDS:
                lost += 1
                break
            time.sleep(POLL_SECONDS)
        if lost >= GIVE_UP_AFTER_LOST:  # the pipeline has fallen behind: more probes would say no more
            break
        time.sleep(pause * random.uniform(0.5, 1.5))  # off the drain's rhythm
    return Freshness(seconds, lost, refused)


def _epoch_ms(iso: str) -> int:
    """The query API's times ('2026-11-27T03:00:00.123Z') as epoch milliseconds."""
    whole, _, frac = iso.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) * 1000 + int(frac or 0)
