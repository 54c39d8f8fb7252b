"""What every drill checks after its fault: the load's readings stored exactly once, the rollups equal to the
raw rows, and how long the stack took to be whole again."""
from __future__ import annotations

import time

import psycopg2
import requests

from tests.drills import drill_stack
from tests.load import ACCEPTED, METRIC, RETRY_LATER, LoadGenerator, Summary
from tests.local_stack import LocalStack

NO_ANSWER = "connection error ConnectionError"  # nothing listening: the ingress itself is down


def assert_exactly_once(summary: Summary, allowed_refusals: set[str]) -> None:
    """Every reading answered 202 stored once with its value, nothing stored that was never sent or was refused,
    the pipeline drained, and every refusal of a kind allowed here."""
    assert summary.drained, f"not every accepted reading was stored in time\n{summary.report()}"
    counts = {name: getattr(summary, name) for name in ("missing", "duplicated", "wrong_value", "unexpected",
                                                         "stored_refused")}
    assert counts == dict.fromkeys(counts, 0), f"{counts}\n{summary.report()}"
    refusals = set(summary.refused) - allowed_refusals
    assert not refusals, f"refusals of kinds not allowed here: {refusals}\n{summary.report()}"
    assert summary.stored == summary.accepted + summary.stored_after_error + summary.stored_in_doubt, summary.report()


ONLY_RETRY_LATER = {RETRY_LATER}


def rollup_mismatches(conn, device_ids: list[int]) -> list[tuple]:
    """(rollup, device, metric, bucket, raw (count, sum, min, max), rollup's) wherever a 1-minute or 1-hour
    rollup of these devices differs from what their raw rows give; [] when they all agree."""
    found = []
    for table, unit in (("telemetry_1m", "minute"), ("telemetry_1h", "hour")):
        with conn.cursor() as cur:
            cur.execute(f"""
                WITH raw AS (SELECT device_id, metric, date_trunc(%(unit)s, ts) AS bucket, count(*) AS count,
                                    sum(value) AS sum, min(value) AS min, max(value) AS max
                               FROM telemetry WHERE device_id = ANY(%(ids)s) GROUP BY 1, 2, 3),
                     rollup AS (SELECT device_id, metric, bucket, count, sum, min, max
                                  FROM {table} WHERE device_id = ANY(%(ids)s))
                SELECT coalesce(r.device_id, u.device_id), coalesce(r.metric, u.metric),
                       coalesce(r.bucket, u.bucket), (r.count, r.sum, r.min, r.max)::text,
                       (u.count, u.sum, u.min, u.max)::text
                  FROM raw r FULL JOIN rollup u
                    ON (r.device_id, r.metric, r.bucket) = (u.device_id, u.metric, u.bucket)
                 WHERE (r.count, r.sum, r.min, r.max) IS DISTINCT FROM (u.count, u.sum, u.min, u.max)
                 LIMIT 5""", {"unit": unit, "ids": device_ids})
            found += [(table, *row) for row in cur.fetchall()]
    return found


def rows_of(conn, device_ids: list[int]) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM telemetry WHERE device_id = ANY(%s)", (device_ids,))
        return cur.fetchone()[0]


class IngressProbe:
    """A device of its own whose single readings show whether ingest answers 202 through the ingress, and the
    read paths of both APIs whether they answer."""

    def __init__(self, stack: LocalStack):
        self.url = stack.url
        self.admin = {"Authorization": f"Bearer {stack.admin_token}"}
        resp = requests.post(f"{self.url}/api/devices/", json={"name": "drill-probe"}, headers=self.admin, timeout=10)
        assert resp.status_code == 201, resp.text
        self.device = resp.json()

    def not_answering(self) -> list[str]:
        """What does not answer as it should through the ingress; [] when everything does."""
        calls = {
            "ingest": lambda: requests.post(f"{self.url}/api/ingest", json={"probe": 1}, timeout=5,
                                            headers={"Authorization": f"Bearer {self.device['token']}"}),
            "registry": lambda: requests.get(f"{self.url}/api/devices/{self.device['id']}", headers=self.admin,
                                             timeout=5),
            "query": lambda: requests.get(f"{self.url}/api/telemetry/latest", headers=self.admin, timeout=5,
                                          params={"device_id": self.device["id"]}),
        }
        wanted = {"ingest": (202,), "registry": (200,), "query": (200, 404)}
        failing = []
        for name, call in calls.items():
            try:
                status = call().status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            if status not in wanted[name]:
                failing.append(f"{name}: {status}")
        return failing


def stored_readings(stack: LocalStack, device_ids: list[int]) -> set[tuple[int, int]]:
    """(device id, ts in epoch ms) of every load reading of these devices in Postgres."""
    with drill_stack.database(stack) as conn, conn.cursor() as cur:
        cur.execute("SELECT device_id, (extract(epoch FROM ts) * 1000)::bigint FROM telemetry "
                    "WHERE device_id = ANY(%s) AND metric = %s", (device_ids, METRIC))
        return set(cur.fetchall())


def wait_whole(stack: LocalStack, probe: IngressProbe, load: LoadGenerator, since: float, started: float,
               timeout: float = 180) -> float:
    """Wait until the ingress answers again and every reading the load had accepted by `since` (wall clock)
    is stored; the seconds from `started` (monotonic) until then. The stack's recovery from a fault."""
    accepted = {(o.device_id, ts) for o in list(load.outcomes) if o.kind == ACCEPTED and o.at < since
                for ts, _ in o.readings}
    ids = [d.id for d in load.devices]
    deadline = started + timeout
    while True:
        failing = probe.not_answering()
        try:
            missing: int | str = len(accepted - stored_readings(stack, ids))
        except psycopg2.Error as exc:  # Postgres still starting
            missing = str(exc).strip()
        if not failing and missing == 0:
            return time.monotonic() - started
        assert time.monotonic() < deadline, (f"not whole {timeout:.0f}s on: not answering {failing}; of "
                                             f"{len(accepted)} readings accepted, not stored: {missing}")
        time.sleep(0.25)


def bring_back(stack: LocalStack, probe: IngressProbe, load: LoadGenerator) -> float:
    """`make up`, then `wait_whole`: the seconds from `make up` called until the stack is whole again."""
    since, started = time.time(), time.monotonic()
    stack.up()
    return wait_whole(stack, probe, load, since, started)
