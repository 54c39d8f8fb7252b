"""Postgres down for a minute, then Redis down for half a minute, each SIGKILLed under a steady load through
the ingress and brought back by `make up` at the end.

Postgres down: ingest keeps answering 202 while the stream has room (the ingestor needs only Redis), then 503
with Retry-After once the backlog passes the high-water mark, never another 5xx; registry writes answer 503
and change nothing; once Postgres is back, every reading accepted is stored exactly once and the backlog
drains. Redis down: ingest answers 503 with Retry-After, and so do the registry writes that change the token
index (register, disable, rotate, delete), leaving nothing half-done in Postgres. (Alert rules live in
Postgres only: their writes need no Redis.)"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import poll
from tests.drills import drill_stack
from tests.drills.checks import ONLY_RETRY_LATER, assert_exactly_once, bring_back, rollup_mismatches
from tests.drills.registry_writes import RegistryWrites
from tests.drills.table import Row
from tests.load import ACCEPTED, RETRY_LATER, LoadGenerator, Outcome

RATE, BATCH = 300.0, 3  # 100 requests/s: the stream passes its high-water mark ~25 s into the Postgres outage
POSTGRES_DOWN, REDIS_DOWN = 60.0, 30.0
WRITE_ROUNDS = 4  # rounds of registry writes spread over each outage


def _outage(stack, part: str, seconds: float, writes: RegistryWrites, rules: bool, load: LoadGenerator,
            probe) -> tuple[float, float, float]:
    """SIGKILL `part` under the load, try the registry writes during the outage, bring it back after `seconds`;
    (wall clock when it was gone, when `make up` began, seconds to recover)."""
    time.sleep(2)
    stack.kill(part)
    gone_at, back_at = time.time(), time.monotonic() + seconds
    for _ in range(WRITE_ROUNDS):
        time.sleep(seconds / (WRITE_ROUNDS + 1))
        writes.attempt(rules=rules)
    time.sleep(max(0.0, back_at - time.monotonic()))
    restarted_at = time.time()
    return gone_at, restarted_at, bring_back(stack, probe, load)


def _sent_between(outcomes: list[Outcome], start: float, end: float) -> list[Outcome]:
    return [o for o in outcomes if start <= o.at < end]


def _backlog_drains(redis_client) -> None:
    poll(lambda: drill_stack.backlog(redis_client) == 0, timeout=60, interval=0.5, what="the stream's backlog drained")


def test_postgres_down_for_a_minute(stack, probe, redis_client, alerts, table):
    writes = RegistryWrites(stack, "pg-outage")
    load = LoadGenerator(stack.url, stack.admin_token, devices=4, rate=RATE, batch=BATCH).start()
    with ThreadPoolExecutor(1) as background:
        try:
            gone_at, restarted_at, recovered = _outage(stack, "postgres", POSTGRES_DOWN, writes, True, load, probe)
            alert = background.submit(alerts.check)
            time.sleep(2)
        finally:
            load.stop()
        summary = load.verify(stack.reader_token, timeout=180)
        table.add(Row.of(f"Postgres down {POSTGRES_DOWN:.0f} s", summary, recovered))
        assert_exactly_once(summary, ONLY_RETRY_LATER)
        _backlog_drains(redis_client)

        during = _sent_between(load.outcomes, gone_at, restarted_at)
        accepted = [o for o in during if o.kind == ACCEPTED]
        refused = [o for o in during if o.kind == RETRY_LATER]
        # One stream entry per accepted request: the stream took them up to its mark, then refused the rest.
        assert len(accepted) >= 0.8 * drill_stack.HIGH_WATER, summary.report()
        assert refused, f"the stream never reached its high-water mark\n{summary.report()}"
        full_at = min(o.at for o in refused)
        assert max(o.at for o in accepted) < full_at + 1.0, "accepted again with Postgres still down"

        assert len(writes.answers) == WRITE_ROUNDS * 5
        assert writes.refusals_not_503("the database is unreachable") == []
        assert writes.changes() == []
        with drill_stack.database(stack) as conn:
            assert rollup_mismatches(conn, [d.id for d in load.devices]) == []
        alert.result()


def test_redis_down_for_half_a_minute(stack, probe, redis_client, alerts, table):
    writes = RegistryWrites(stack, "redis-outage")
    load = LoadGenerator(stack.url, stack.admin_token, devices=4, rate=RATE, batch=BATCH).start()
    with ThreadPoolExecutor(1) as background:
        try:
            gone_at, restarted_at, recovered = _outage(stack, "redis", REDIS_DOWN, writes, False, load, probe)
            alert = background.submit(alerts.check)
            time.sleep(2)
        finally:
            load.stop()
        summary = load.verify(stack.reader_token, timeout=180)
        table.add(Row.of(f"Redis down {REDIS_DOWN:.0f} s", summary, recovered))
        assert_exactly_once(summary, ONLY_RETRY_LATER)
        _backlog_drains(redis_client)

        during = _sent_between(load.outcomes, gone_at, restarted_at)
        assert during and {o.kind for o in during} == {RETRY_LATER}, summary.report()

        assert len(writes.answers) == WRITE_ROUNDS * 4
        assert writes.refusals_not_503("the token index (Redis) is unreachable") == []
        assert writes.changes() == []
        with drill_stack.database(stack) as conn:
            assert rollup_mismatches(conn, [d.id for d in load.devices]) == []
        alert.result()
