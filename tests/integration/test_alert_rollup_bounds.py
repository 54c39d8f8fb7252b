"""Threshold evaluation skips the readings of devices whose 1-minute rollups rule the condition out.

The evaluator runs here on a database of its own (no aggregator evaluates beside it), over rows written
directly. Where a test wants to see whether the raw readings were walked, the rollup row tells a lie that
the readings contradict: the outcome then shows which of the two the evaluation believed.
"""
from __future__ import annotations

import itertools
import uuid

import psycopg2
import pytest
from prometheus_client import REGISTRY

from aggregator.alerting import COULD_HOLD, OPS, Evaluator
from tests.integration.conftest import own_database


@pytest.fixture(scope="module")
def eval_db(postgres, base_env, run_dir):
    with own_database(postgres, base_env, run_dir, "vt_alert_bounds") as url:
        conn = psycopg2.connect(url)
        conn.autocommit = True
        yield conn
        conn.close()


def _device_and_rule(cur, op: str = ">", threshold: float = 50.0, for_seconds: int = 0) -> tuple[int, int]:
    cur.execute("INSERT INTO devices (name) VALUES (%s) RETURNING id", (f"bounds-{uuid.uuid4().hex[:8]}",))
    device = cur.fetchone()[0]
    cur.execute("""INSERT INTO alert_rules (name, kind, metric, op, threshold, for_seconds, device_id,
                                           created_at, updated_at)
                   VALUES ('bounds', 'threshold', 'temp', %s, %s, %s, %s, now() - interval '10 minutes',
                           now() - interval '10 minutes') RETURNING id""", (op, threshold, for_seconds, device))
    return device, cur.fetchone()[0]


def _readings(cur, device: int, values: list[float], rollup: tuple[float, float] | None) -> None:
    """`values` one second apart, all in the minute before the current one, with that minute's rollup row
    saying `rollup` (lo, hi) about them, whatever they are (None: no rollup row)."""
    cur.execute("SELECT date_bin('1 minute', now() - interval '1 minute', timestamptz 'epoch')")
    minute = cur.fetchone()[0]
    cur.executemany("INSERT INTO telemetry (device_id, metric, ts, value) "
                    "VALUES (%s, 'temp', %s + %s * interval '1 second', %s)",
                    [(device, minute, i + 1, v) for i, v in enumerate(values)])
    cur.execute("INSERT INTO telemetry_latest (device_id, metric, ts, value) "
                "VALUES (%s, 'temp', %s + %s * interval '1 second', %s)", (device, minute, len(values), values[-1]))
    if rollup is not None:
        cur.execute("INSERT INTO telemetry_1m (device_id, metric, bucket, count, sum, min, max) "
                    "VALUES (%s, 'temp', %s, %s, %s, %s, %s)", (device, minute, len(values), sum(values), *rollup))


def _evaluate(conn) -> None:
    """One evaluation of every rule. Nothing else evaluates on this database, so it never finds the lock
    taken; each test's outcome (alerts, or the state row) shows that it ran."""
    Evaluator(conn).run()


def _devices_counted() -> dict[str, float]:
    return {path: REGISTRY.get_sample_value("visiontrack_aggregator_alert_devices_total", {"path": path})
            for path in ("walked", "passed_over")}


def _alerts(cur, rule: int) -> list[tuple]:
    cur.execute("SELECT state, value FROM alert_events WHERE rule_id = %s ORDER BY id", (rule,))
    return cur.fetchall()


def _state(cur, rule: int, device: int) -> tuple:
    cur.execute("""SELECT s.watermark = l.ts, s.since FROM alert_state s
                   JOIN telemetry_latest l ON l.device_id = s.device_id AND l.metric = 'temp'
                   WHERE s.rule_id = %s AND s.device_id = %s""", (rule, device))
    return cur.fetchone()


def test_a_device_whose_rollups_rule_the_condition_out_is_not_walked(eval_db):
    with eval_db.cursor() as cur:
        device, rule = _device_and_rule(cur)
        _readings(cur, device, [10.0, 99.0, 12.0], rollup=(10.0, 12.0))  # the rollup hides the 99
        before = _devices_counted()
        _evaluate(eval_db)
        assert _alerts(cur, rule) == []
        assert _state(cur, rule, device) == (True, None)  # the watermark moved to the latest reading
        after = _devices_counted()
        assert (after["passed_over"] - before["passed_over"], after["walked"] - before["walked"]) == (1, 0)


@pytest.mark.parametrize("rollup", [(10.0, 99.0), None], ids=["rollups-say-it-could-hold", "no-rollup-rows"])
def test_a_device_whose_rollups_allow_the_condition_is_walked(eval_db, rollup):
    with eval_db.cursor() as cur:
        device, rule = _device_and_rule(cur)
        _readings(cur, device, [10.0, 99.0, 12.0], rollup=rollup)
        before = _devices_counted()
        _evaluate(eval_db)
        assert _alerts(cur, rule) == [("resolved", 99.0)]  # fired at the 99, resolved at the 12
        after = _devices_counted()
        assert (after["passed_over"] - before["passed_over"], after["walked"] - before["walked"]) == (0, 1)


def test_a_hold_under_way_is_walked_whatever_the_rollups_say(eval_db):
    with eval_db.cursor() as cur:
        device, rule = _device_and_rule(cur, for_seconds=2)
        cur.execute("""INSERT INTO alert_state (rule_id, device_id, watermark, since)
                       VALUES (%s, %s, now() - interval '5 minutes', now() - interval '5 minutes')""",
                    (rule, device))
        _readings(cur, device, [70.0, 80.0], rollup=(1.0, 2.0))
        _evaluate(eval_db)
        assert _alerts(cur, rule) == [("firing", 70.0)]


def test_a_firing_alert_is_walked_whatever_the_rollups_say(eval_db):
    with eval_db.cursor() as cur:
        device, rule = _device_and_rule(cur)
        cur.execute("""INSERT INTO alert_events (rule_id, device_id, state, value, started_at)
                       VALUES (%s, %s, 'firing', 60, now() - interval '5 minutes')""", (rule, device))
        _readings(cur, device, [70.0, 20.0], rollup=(10.0, 20.0))  # the 20 resolves it; the rollup hides the 70
        _evaluate(eval_db)
        assert _alerts(cur, rule) == [("resolved", 60.0)]


def test_an_old_watermark_is_walked_whatever_the_rollups_say(eval_db):
    """Rollups of minutes long past may have gone with their retention; only a recent range is trusted."""
    with eval_db.cursor() as cur:
        device, rule = _device_and_rule(cur)
        cur.execute("INSERT INTO alert_state (rule_id, device_id, watermark) "
                    "VALUES (%s, %s, now() - interval '2 hours')", (rule, device))
        _readings(cur, device, [10.0, 99.0], rollup=(10.0, 12.0))
        _evaluate(eval_db)
        assert _alerts(cur, rule) == [("firing", 99.0)]


@pytest.mark.parametrize("op", sorted(OPS))
def test_could_hold_is_true_exactly_when_some_value_in_the_range_meets_the_condition(eval_db, op):
    """Checked on a grid of integers, where "some value in [lo, hi]" can be listed: Postgres' verdict on the
    range against the walk's own comparison of every value in it."""
    grid = range(-3, 4)
    ranges = [(lo, hi, t) for lo, hi, t in itertools.product(grid, grid, grid) if lo <= hi]
    with eval_db.cursor() as cur:
        cur.execute(f"""SELECT b.lo, b.hi, b.t, {COULD_HOLD[op].replace("%(threshold)s", "b.t")}
                        FROM unnest(%s::float8[], %s::float8[], %s::float8[]) AS b(lo, hi, t)""",
                    [list(column) for column in zip(*ranges)])
        verdicts = cur.fetchall()
    assert len(verdicts) == len(ranges)
    for lo, hi, t, could in verdicts:
        assert could == any(OPS[op](v, t) for v in range(int(lo), int(hi) + 1)), (op, lo, hi, t)


def test_an_evaluation_rolled_back_counts_no_devices(eval_db):
    """The walked/passed-over counts are of committed evaluations: one rolled back (here: failing after its
    work, before the commit) counts nothing, and the evaluation that does commit counts each device once."""

    class FailingBeforeCommit(Evaluator):
        def _outbox(self, cur, changes):
            raise RuntimeError("the transaction never commits")

    with eval_db.cursor() as cur:
        walked, walked_rule = _device_and_rule(cur)
        _readings(cur, walked, [10.0, 99.0, 12.0], rollup=None)
        passed, passed_rule = _device_and_rule(cur)
        _readings(cur, passed, [10.0, 12.0], rollup=(10.0, 12.0))
    conn = psycopg2.connect(eval_db.dsn)  # not autocommit, unlike eval_db: a rollback undoes the work
    try:
        before = _devices_counted()
        with pytest.raises(RuntimeError):
            FailingBeforeCommit(conn).run()
        assert _devices_counted() == before
        with eval_db.cursor() as cur:
            assert _alerts(cur, walked_rule) == [] and _state(cur, passed_rule, passed) is None  # rolled back
        Evaluator(conn).run()
        after = _devices_counted()
        assert (after["passed_over"] - before["passed_over"], after["walked"] - before["walked"]) == (1, 1)
        with eval_db.cursor() as cur:
            assert _alerts(cur, walked_rule) == [("resolved", 99.0)]
            assert _state(cur, passed_rule, passed) == (True, None)
    finally:
        conn.close()
