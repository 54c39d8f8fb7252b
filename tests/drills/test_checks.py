"""The drills' own checks report what they must, on the drills' stack: a rollup that differs from its raw rows,
and registry writes that went through, in Postgres and in the token index. So a drill that passes them means
something. (tests/e2e/test_load.py does the same for the load's exactly-once verifier.)"""
from __future__ import annotations

import time

import requests

from tests.conftest import poll
from tests.drills import drill_stack
from tests.drills.checks import rollup_mismatches, rows_of
from tests.drills.registry_writes import RegistryWrites


def test_the_rollup_check_reports_rollups_that_differ_from_the_raw_rows(stack):
    admin = {"Authorization": f"Bearer {stack.admin_token}"}
    device = requests.post(f"{stack.url}/api/devices/", json={"name": "drill-rollup-check"}, headers=admin,
                           timeout=10).json()
    now = int(time.time() * 1000)
    resp = requests.post(f"{stack.url}/api/ingest", json=[{"ts": now - i, "values": {"load": i + 0.5}}
                                                          for i in range(3)],
                         headers={"Authorization": f"Bearer {device['token']}"}, timeout=10)
    assert resp.status_code == 202, resp.text
    with drill_stack.database(stack) as conn, conn.cursor() as cur:
        poll(lambda: rows_of(conn, [device["id"]]) == 3, timeout=30, what="the readings stored")
        assert rollup_mismatches(conn, [device["id"]]) == []
        for table, change, undo in (("telemetry_1m", "count = count + 1", "count = count - 1"),
                                    ("telemetry_1h", "max = max + 1", "max = max - 1")):
            cur.execute(f"UPDATE {table} SET {change} WHERE device_id = %s", (device["id"],))
            try:
                assert [row[0] for row in rollup_mismatches(conn, [device["id"]])] == [table]
            finally:
                cur.execute(f"UPDATE {table} SET {undo} WHERE device_id = %s", (device["id"],))
        assert rollup_mismatches(conn, [device["id"]]) == []


def test_the_registry_check_reports_writes_that_went_through(stack):
    writes = RegistryWrites(stack, "drill-registry-check")
    assert writes.changes() == []
    writes.attempt(rules=True)  # with everything up: each write goes through
    assert [answer[1] for answer in writes.answers] == [201, 200, 200, 204, 201], writes.answers
    assert len(writes.refusals_not_503("unreachable")) == 5
    changes = writes.changes()
    for expected in ("device drill-registry-check-new-1 registered", "alert rule drill-registry-check-rule-1 created",
                     "the device to delete has a purge queued", "disable: Postgres holds", "rotate: Postgres holds",
                     "delete: Postgres holds", "disable: the token index holds", "rotate: the token index holds",
                     "delete: the token index holds"):
        assert any(change.startswith(expected) for change in changes), (expected, changes)
