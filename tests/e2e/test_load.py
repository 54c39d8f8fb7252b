"""The steady-load generator (tests/load.py) through the ingress: a clean run is stored exactly once; a
stopped ingestor costs only 503s with Retry-After and nothing accepted; and its verifier reports what it
must (a reading missing, changed, never sent, or stored though refused), so a green run means something."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace

import pytest

from tests.conftest import listen_port
from tests.e2e.conftest import TARGET, local_aggregator, needs_ingestor
from tests.load import ACCEPTED, RETRY_LATER, LoadGenerator, Outcome
from visiontrack.stream_writer import MAY_BE_STORED

RATE, SECONDS, BATCH = 200.0, 3.0, 5


@pytest.fixture(scope="module")
def aggregator(request):
    yield from local_aggregator(request)


def _load(ingress: str, **settings) -> LoadGenerator:
    return LoadGenerator(ingress, TARGET.admin_token, **{"devices": 4, "rate": RATE, "batch": BATCH, **settings})


@pytest.fixture(scope="module")
def clean_run(ingress, aggregator):
    gen = _load(ingress, seconds=SECONDS)
    return gen, gen.run(TARGET.reader_token, timeout=60)


@needs_ingestor
def test_a_steady_load_through_the_ingestor_is_stored_exactly_once(clean_run):
    _, summary = clean_run
    assert summary.ok and summary.drained, summary.report()
    assert summary.refused == {} and summary.stored == summary.accepted == summary.sent
    assert summary.sent >= 0.9 * RATE * SECONDS, "the generator did not hold its rate"
    assert (summary.missing, summary.duplicated, summary.unexpected) == (0, 0, 0)


def test_a_steady_load_through_post_telemetry_is_stored_exactly_once(ingress, aggregator):
    summary = _load(ingress, seconds=1.0, path="/api/telemetry/").run(TARGET.reader_token, timeout=60)
    assert summary.ok and summary.stored == summary.sent > 0, summary.report()


def _first_accepted(outcomes: list[Outcome]) -> int:
    return next(i for i, o in enumerate(outcomes) if o.kind == ACCEPTED)


def _with(outcomes: list[Outcome], **changes) -> list[Outcome]:
    """The outcomes with the first accepted request recorded otherwise."""
    i = _first_accepted(outcomes)
    return [*outcomes[:i], replace(outcomes[i], **changes), *outcomes[i + 1:]]


def _never_sent(outcomes: list[Outcome]) -> list[Outcome]:
    ts, value = outcomes[_first_accepted(outcomes)].readings[0]
    return [*outcomes, replace(outcomes[_first_accepted(outcomes)], readings=((ts + 10_000_000, value),))]


def _other_value(outcomes: list[Outcome]) -> list[Outcome]:
    (ts, value), *rest = outcomes[_first_accepted(outcomes)].readings
    return _with(outcomes, readings=((ts, value + 1), *rest))


def _forgotten(outcomes: list[Outcome]) -> list[Outcome]:
    i = _first_accepted(outcomes)
    return outcomes[:i] + outcomes[i + 1:]


# (what the records claim, the field that must count it, how many, the refusal kind it adds)
TAMPERED = {
    "accepted-never-sent": (_never_sent, "missing", 1, None),
    "stored-another-value": (_other_value, "wrong_value", 1, None),
    "stored-never-sent": (_forgotten, "unexpected", BATCH, None),
    "stored-though-503": (lambda o: _with(o, status=503, retry_after="1"), "stored_refused", BATCH, RETRY_LATER),
    "stored-though-500": (lambda o: _with(o, status=500), "stored_refused", BATCH, "status 500"),
    "503-without-retry-after": (lambda o: _with(o, status=503), "stored_refused", BATCH,
                                "503 without Retry-After"),
    "no-answer": (lambda o: _with(o, status=None, error="ConnectionError: reset"), "stored_after_error", BATCH,
                  "connection error ConnectionError"),
}


@needs_ingestor
@pytest.mark.parametrize("tamper, field, count, kind", TAMPERED.values(), ids=TAMPERED.keys())
def test_the_verifier_reports_records_that_do_not_match_what_is_stored(clean_run, tamper, field, count, kind):
    gen, clean = clean_run
    assert clean.ok, clean.report()
    summary = gen.verify(TARGET.reader_token, timeout=10, settle=1, outcomes=tamper(gen.outcomes))
    assert getattr(summary, field) == count, summary.report()
    assert summary.refused == ({kind: BATCH} if kind else {}), summary.report()
    assert not summary.ok and summary.line().endswith("FAILED")
    assert summary.examples.get(field), summary.report()


@needs_ingestor
def test_the_verifier_counts_a_write_refused_as_perhaps_stored_apart_and_not_as_a_defect(clean_run):
    """A 503 saying the write reached the stream but too few replicas (VT_STREAM_WAIT_REPLICAS) says it may be
    stored: finding it stored is counted, not failed. Any other 503 still fails when stored."""
    gen, clean = clean_run
    in_doubt = _with(gen.outcomes, status=503, retry_after="1", message=MAY_BE_STORED)
    summary = gen.verify(TARGET.reader_token, timeout=10, settle=1, outcomes=in_doubt)
    assert (summary.stored_in_doubt, summary.stored_refused) == (BATCH, 0), summary.report()
    assert summary.ok, summary.report()


@pytest.mark.local_processes  # changes rows in the local Postgres
def test_the_verifier_reports_rows_deleted_and_added_behind_its_back(ingress, aggregator, db):
    gen = _load(ingress, seconds=1.0, devices=2)
    assert gen.run(TARGET.reader_token, timeout=60).ok
    device = gen.devices[0].id
    with db.cursor() as cur:
        cur.execute("DELETE FROM telemetry WHERE device_id = %s AND ts = (SELECT min(ts) FROM telemetry "
                    "WHERE device_id = %s)", (device, device))
        # A second after the first reading: the run's readings of a device are a millisecond apart.
        cur.execute("INSERT INTO telemetry (device_id, metric, ts, value) SELECT %s, 'load', min(ts) + "
                    "interval '1 second', 7.5 FROM telemetry WHERE device_id = %s", (device, device))
    summary = gen.verify(TARGET.reader_token, timeout=10, settle=1)
    assert (summary.missing, summary.unexpected, summary.ok) == (1, 1, False), summary.report()


@contextmanager
def _stopped(proc, run_dir):
    """The process stopped for the block, then started again and ready, whatever the block does."""
    proc.stop()
    try:
        yield
    finally:
        proc.start(run_dir)
        proc.wait_http(listen_port(proc))


@pytest.mark.local_processes  # stops the local ingestor behind nginx
@needs_ingestor
def test_a_stopped_ingestor_costs_only_503s_with_retry_after_and_nothing_accepted(ingress, aggregator,
                                                                                ingestor_process, run_dir):
    with _load(ingress) as gen:
        time.sleep(1.0)
        stopped = time.time()
        with _stopped(ingestor_process, run_dir):
            time.sleep(1.5)
        restarted = time.time()
        time.sleep(1.0)
    summary = gen.verify(TARGET.reader_token, timeout=60)
    assert summary.ok and summary.drained, summary.report()
    assert set(summary.refused) == {RETRY_LATER} and summary.refused[RETRY_LATER] >= 10 * BATCH, summary.line()
    assert summary.stored == summary.accepted > 0 and summary.stored_refused == 0, summary.report()
    # The refusals fall in the outage (a request sent just before the stop may still meet it).
    assert stopped - 0.5 <= summary.first_error_at <= summary.last_error_at <= restarted, summary.line()
