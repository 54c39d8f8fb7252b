"""Each part SIGKILLed in turn (its whole process group: Postgres with every backend) under a steady load
through the ingress, then brought back by `make up`. Every reading answered 202 is stored exactly once with
its value, nothing is stored that was never sent, the rollups equal the raw rows, and alerts still fire and
resolve with their webhooks. Ingest is refused only while its own path is down: with 503 and Retry-After
(nginx answering for a dead ingestor, the ingestor for a dead Redis), or with no answer while nginx itself is
gone; killing a part off that path costs ingest nothing."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.drills import drill_stack
from tests.drills.checks import NO_ANSWER, ONLY_RETRY_LATER, assert_exactly_once, bring_back, rollup_mismatches
from tests.drills.table import Row
from tests.load import RETRY_LATER, LoadGenerator

RATE, BATCH = 300.0, 2  # readings/s, per request: 150 requests/s
STEADY, DOWN = 1.0, 0.5  # seconds of load before the kill and after the part is back; seconds it stays dead
PARTS = ("ingestor", "worker", "beat", "registry", "query", "postgres", "redis", "nginx")
REFUSALS = {"ingestor": ONLY_RETRY_LATER, "redis": ONLY_RETRY_LATER, "nginx": {RETRY_LATER, NO_ANSWER}}


@pytest.mark.parametrize("part", PARTS)
def test_a_part_killed_under_load_comes_back_and_loses_nothing(part, stack, probe, alerts, table):
    load = LoadGenerator(stack.url, stack.admin_token, devices=4, rate=RATE, batch=BATCH).start()
    with ThreadPoolExecutor(1) as background:
        try:
            time.sleep(STEADY)
            killed = stack.kill(part)
            time.sleep(DOWN)
            recovered = bring_back(stack, probe, load)
            alert = background.submit(alerts.check)
            time.sleep(STEADY)
        finally:
            load.stop()
        summary = load.verify(stack.reader_token, timeout=120)
        table.add(Row.of(f"SIGKILL {part}", summary, recovered))
        status = stack.status()
        assert status[part] not in (None, killed), f"{part} not brought back: {status}"
        stopped = [name for name, pid in status.items() if pid is None and name != "simulator"]  # SIM=0
        assert not stopped, f"stopped after the {part} drill: {status}"
        assert_exactly_once(summary, REFUSALS.get(part, set()))
        if part not in REFUSALS:
            assert summary.refused == {}, summary.report()
        with drill_stack.database(stack) as conn:
            assert rollup_mismatches(conn, [d.id for d in load.devices]) == []
        alert.result()
