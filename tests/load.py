"""A steady load with an exactly-once check, for drills against any VisionTrack: the local stack, `make up`,
or a cluster through its ingress (upgrade under load, pod kills).

It registers a few devices, sends readings at a steady rate through `POST /api/ingest` (or another device
path) with their tokens, records every request's outcome, then reads everything back through
`GET /api/telemetry/` and checks that every reading answered 202 is stored exactly once with its value,
that nothing is stored that was never sent, and that every refusal was a 503 carrying Retry-After.

From a test:

    from tests.load import LoadGenerator

    gen = LoadGenerator(url, admin_token, devices=5, rate=300, batch=5)
    gen.start()                                  # registers the devices, sends in the background
    ...                                          # upgrade, kill a pod, stop a process
    gen.stop()
    summary = gen.verify(reader_token, timeout=120)
    assert summary.ok, summary.report()

or `LoadGenerator(url, admin_token, seconds=30).run()` for start, wait, stop and verify in one call. By hand:
`.venv/bin/python -m tests.load --url http://localhost --admin-token ... --seconds 60` (or the VT_E2E_*
variables of tests/e2e/conftest.py) prints one line and exits 1 on a failure.

Every reading is unique and known: device d's j-th reading has metric `load`, ts = start - 60 s + j ms
and value j + 0.25. So a device takes at most 1000 readings/s (one a millisecond), its times never run
ahead of the clock, and they stay well inside the ingest window (not in the future, not older than the
retention; docs/contracts.md section 3).
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import requests

METRIC = "load"
ACCEPTED = "accepted"
# The one refusal a steady load may meet: the ingestor's backpressure, or a proxy with no part behind it.
RETRY_LATER = "503 with Retry-After"
EXAMPLES = 3  # examples kept per kind of failure
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Device:
    id: int
    token: str


@dataclass(frozen=True)
class Outcome:
    """One request: the readings it carried and how it was answered."""
    device_id: int
    readings: tuple[tuple[int, float], ...]  # (ts in epoch ms, value)
    at: float  # wall clock when it was sent (epoch seconds)
    seconds: float  # how long the answer took
    status: int | None  # None: no answer (connection error, timeout)
    retry_after: str | None = None
    error: str | None = None  # "ConnectionError: ..." when there was no answer
    message: str | None = None  # a refusal's message (the API's error body)

    @property
    def may_be_stored(self) -> bool:
        """A 503 saying the write may be stored (too few replicas confirmed it, or its answer was lost and
        Redis could not say): unlike other refusals, finding it stored is no defect."""
        return self.status == 503 and "may be stored" in (self.message or "")

    @property
    def kind(self) -> str:
        if self.status == 202:
            return ACCEPTED
        if self.status is None:
            return f"connection error {self.error.split(':', 1)[0] if self.error else ''}".rstrip()
        if self.status == 503:
            return RETRY_LATER if (self.retry_after or "").strip().isdigit() else "503 without Retry-After"
        return f"status {self.status}"


@dataclass
class Summary:
    """What a run sent and what the query API holds afterwards. Counts are readings, not requests."""
    requests: int
    sent: int
    accepted: int
    refused: dict[str, int]  # kind -> readings; only RETRY_LATER is allowed
    stored: int  # rows of the run's devices
    missing: int  # answered 202, not stored
    duplicated: int  # extra copies of a reading
    wrong_value: int  # stored with another value than sent
    unexpected: int  # stored, never sent
    stored_refused: int  # answered with a refusal (503 included), stored all the same: a defect
    stored_after_error: int  # no answer, stored: the outcome was unknown, so not a defect; counted
    seconds: float  # how long the sending lasted
    drained: bool  # every accepted reading was found before the timeout
    stored_in_doubt: int = 0  # refused with a 503 saying it may be stored (too few replicas confirmed it; its answer lost), stored
    first_error_at: float | None = None  # wall clock of the first and last request not answered 202
    last_error_at: float | None = None
    examples: dict[str, list[str]] = field(default_factory=dict)

    def failures(self) -> list[str]:
        found = [f"{n} readings refused: {kind}" for kind, n in sorted(self.refused.items()) if kind != RETRY_LATER]
        for name in ("missing", "duplicated", "wrong_value", "unexpected", "stored_refused"):
            if getattr(self, name):
                found.append(f"{getattr(self, name)} {name.replace('_', ' ')}")
        return found

    @property
    def ok(self) -> bool:
        return not self.failures()

    def line(self) -> str:
        refused = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.refused.items())) or "none"
        errors = (f"; refusals from {_clock(self.first_error_at)} to {_clock(self.last_error_at)}"
                  if self.first_error_at else "")
        rate = self.sent / self.seconds if self.seconds else 0.0
        return (f"load: sent {self.sent} readings in {self.requests} requests over {self.seconds:.1f}s "
                f"({rate:.0f}/s), accepted {self.accepted}, refused {refused}; stored {self.stored}: "
                f"missing {self.missing}, duplicated {self.duplicated}, wrong value {self.wrong_value}, "
                f"unexpected {self.unexpected}, stored though refused {self.stored_refused}, "
                f"stored after no answer {self.stored_after_error}, stored after a 503 saying it may be "
                f"{self.stored_in_doubt}{'' if self.drained else ' (not drained)'}"
                f"{errors}: {'OK' if self.ok else 'FAILED'}")

    def report(self) -> str:
        """The line, then a few examples of each kind of refusal and failure: an assertion message."""
        lines = [self.line()]
        for name, examples in self.examples.items():
            lines += [f"  {name}: {example}" for example in examples]
        return "\n".join(lines)


def _clock(epoch_seconds: float | None) -> str:
    if epoch_seconds is None:
        return "-"
    return datetime.fromtimestamp(epoch_seconds, timezone.utc).strftime("%H:%M:%S.%f")[:-3]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _epoch_ms(text: str) -> int:
    return (datetime.fromisoformat(text) - _EPOCH) // timedelta(milliseconds=1)


# --- the API calls -------------------------------------------------------------------------------------------

def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def register_devices(session: requests.Session, url: str, admin_token: str, count: int, tag: str) -> list[Device]:
    devices = []
    for i in range(count):
        resp = session.post(f"{url}/api/devices/", json={"name": f"load-{tag}-{i}", "type": "load"},
                            headers=_bearer(admin_token), timeout=30)
        if resp.status_code != 201:
            raise RuntimeError(f"registering load device {i}: {resp.status_code} {resp.text[:200]}")
        devices.append(Device(resp.json()["id"], resp.json()["token"]))
    return devices


def read_device(session: requests.Session, url: str, token: str, device_id: int) -> list[tuple[tuple, float]]:
    """Every stored reading of a device as ((device_id, metric, ts_ms), value), following the cursors."""
    rows, cursor = [], None
    while True:
        params = {"device_id": device_id, "order": "asc", "limit": 5000, **({"cursor": cursor} if cursor else {})}
        resp = session.get(f"{url}/api/telemetry/", params=params, headers=_bearer(token), timeout=30)
        resp.raise_for_status()
        page = resp.json()
        rows += [((i["device_id"], i["metric"], _epoch_ms(i["ts"])), i["value"]) for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            return rows


# --- sending ---------------------------------------------------------------------------------------------------

def send_batch(session: requests.Session, url: str, device: Device, readings: tuple, timeout: float) -> Outcome:
    body = [{"ts": ts, "values": {METRIC: value}} for ts, value in readings]
    at, started = time.time(), time.monotonic()
    try:
        resp = session.post(url, json=body, headers=_bearer(device.token), timeout=timeout)
    except requests.RequestException as exc:
        return Outcome(device.id, readings, at, time.monotonic() - started, None, error=f"{type(exc).__name__}: {exc}")
    message = None
    if resp.status_code != 202:
        try:
            message = resp.json().get("message")
        except ValueError:
            message = resp.text[:200]
    return Outcome(device.id, readings, at, time.monotonic() - started, resp.status_code,
                   retry_after=resp.headers.get("Retry-After"), message=message)


class LoadGenerator:
    """Sends `rate` readings/s, `batch` per request, round robin over `devices` new devices, from
    `concurrency` threads with a keep-alive session each; for `seconds`, or until stop()."""

    def __init__(self, url: str, admin_token: str, *, devices: int = 5, rate: float = 300.0, batch: int = 5,
                 seconds: float | None = None, concurrency: int = 8, path: str = "/api/ingest",
                 timeout: float = 10.0):
        if not 1 <= batch <= 10_000:
            raise ValueError("batch must be 1 to 10000 readings")
        if rate / devices > 1000:
            raise ValueError("more than 1000 readings/s per device: add devices (one reading a ms each)")
        self.url = url.rstrip("/")
        self.admin_token = admin_token
        self.device_count, self.rate, self.batch, self.seconds = devices, rate, batch, seconds
        self.concurrency, self.path, self.timeout = concurrency, path, timeout
        self.tag = uuid.uuid4().hex[:10]
        self.devices: list[Device] = []
        self.outcomes: list[Outcome] = []  # appended from the sender threads (list.append is atomic)
        self._base_ms = int(time.time() * 1000) - 60_000
        self._next_request = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = self._ended = 0.0

    # Request k goes to device k mod n and carries that device's readings batch*(k div n) onwards.
    def batch_of(self, k: int) -> tuple[Device, tuple[tuple[int, float], ...]]:
        device = self.devices[k % len(self.devices)]
        first = (k // len(self.devices)) * self.batch
        return device, tuple((self._base_ms + j, j + 0.25) for j in range(first, first + self.batch))

    def start(self) -> "LoadGenerator":
        if not self.devices:
            with requests.Session() as session:
                self.devices = register_devices(session, self.url, self.admin_token, self.device_count, self.tag)
        self._started = time.monotonic()
        self._threads = [threading.Thread(target=self._send_loop, name=f"load-{i}", daemon=True)
                         for i in range(self.concurrency)]
        for thread in self._threads:
            thread.start()
        return self

    def _claim(self) -> int:
        with self._lock:
            self._next_request += 1
            return self._next_request - 1

    def _send_loop(self) -> None:
        interval = self.batch / self.rate
        with requests.Session() as session:
            while True:
                k = self._claim()
                due = self._started + k * interval
                if self.seconds is not None and due >= self._started + self.seconds:
                    return
                # A late request goes at once: the schedule, not the answers, sets the rate.
                if self._stopping.wait(max(0.0, due - time.monotonic())):
                    return
                device, readings = self.batch_of(k)
                self.outcomes.append(send_batch(session, self.url + self.path, device, readings, self.timeout))

    def wait(self) -> None:
        """Until the sending threads are done (`seconds` passed, or stop() was called)."""
        for thread in self._threads:
            thread.join()
        self._ended = self._ended or time.monotonic()

    def stop(self) -> None:
        """Stop sending; the requests in flight finish and are recorded."""
        self._stopping.set()
        self._ended = self._ended or time.monotonic()
        self.wait()

    def __enter__(self) -> "LoadGenerator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def verify(self, reader_token: str | None = None, timeout: float = 120.0, settle: float | None = None,
               outcomes: list[Outcome] | None = None) -> Summary:
        """Stop sending, then check what is stored against `outcomes` (default: this run's); see `verify`."""
        self.stop()
        return verify(self.url, reader_token or self.admin_token, self.devices,
                      self.outcomes if outcomes is None else outcomes, self._ended - self._started, timeout, settle)

    def run(self, reader_token: str | None = None, timeout: float = 120.0) -> Summary:
        if self.seconds is None:
            raise ValueError("run() needs seconds")
        self.start()
        self.wait()
        return self.verify(reader_token, timeout)


# --- verifying -------------------------------------------------------------------------------------------------

def _sent(outcomes: list[Outcome]) -> dict[tuple, tuple[float, Outcome]]:
    """Every reading sent, by (device_id, metric, ts): its value and the request that carried it."""
    return {(o.device_id, METRIC, ts): (value, o) for o in outcomes for ts, value in o.readings}


def wait_for_rows(url: str, token: str, device_ids: list[int], accepted: set[tuple], timeout: float,
                  settle: float | None, interval: float = 1.0) -> tuple[dict[tuple, list[float]], bool]:
    """The stored rows by key, once every accepted reading is there (drained: True), or once `timeout`
    passed, or the number of rows has not moved for `settle` seconds (False). With settle None only the
    timeout ends the wait: a pipeline that stalls for a while (a worker restarting) is not yet "missing".
    A device found complete is not read again. Read errors (a query pod restarting) count as no news."""
    rows: dict[int, dict[tuple, list[float]]] = {d: {} for d in device_ids}
    waiting = set(device_ids)
    deadline = time.monotonic() + timeout
    count, moved = -1, time.monotonic()
    with requests.Session() as session:
        while True:
            for device_id in sorted(waiting):
                try:
                    found: dict[tuple, list[float]] = {}
                    for key, value in read_device(session, url, token, device_id):
                        found.setdefault(key, []).append(value)
                    rows[device_id] = found
                except (requests.RequestException, ValueError):
                    continue
                if all(key in found for key in accepted if key[0] == device_id):
                    waiting.discard(device_id)
            total = sum(len(v) for by_key in rows.values() for v in by_key.values())
            now = time.monotonic()
            if total != count:
                count, moved = total, now
            if not waiting or now >= deadline or (settle is not None and now - moved >= settle):
                return {k: v for by_key in rows.values() for k, v in by_key.items()}, not waiting
            time.sleep(interval)


def verify(url: str, token: str, devices: list[Device], outcomes: list[Outcome], seconds: float,
           timeout: float = 120.0, settle: float | None = None) -> Summary:
    """Wait for the pipeline to drain, then compare the stored rows with what was sent and answered."""
    sent = _sent(outcomes)
    accepted = {key for key, (_, o) in sent.items() if o.kind == ACCEPTED}
    rows, drained = wait_for_rows(url.rstrip("/"), token, [d.id for d in devices], accepted, timeout, settle)
    summary = _count_outcomes(outcomes, seconds)
    summary.stored, summary.drained = sum(len(v) for v in rows.values()), drained
    _compare(summary, sent, accepted, rows)
    return summary


def _count_outcomes(outcomes: list[Outcome], seconds: float) -> Summary:
    refused: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    errors = sorted(o.at for o in outcomes if o.kind != ACCEPTED)
    for o in outcomes:
        if o.kind != ACCEPTED:
            refused[o.kind] = refused.get(o.kind, 0) + len(o.readings)
            _example(examples, o.kind, f"device {o.device_id} at {_clock(o.at)} after {o.seconds:.3f}s: "
                                       f"{o.status} retry-after={o.retry_after} {o.error or ''}".rstrip())
    sent = sum(len(o.readings) for o in outcomes)
    return Summary(requests=len(outcomes), sent=sent, accepted=sent - sum(refused.values()), refused=refused,
                   stored=0, missing=0, duplicated=0, wrong_value=0, unexpected=0, stored_refused=0,
                   stored_after_error=0, seconds=seconds, drained=False,
                   first_error_at=errors[0] if errors else None, last_error_at=errors[-1] if errors else None,
                   examples=examples)


def _compare(summary: Summary, sent: dict, accepted: set, rows: dict[tuple, list[float]]) -> None:
    for key, values in rows.items():
        what = f"device {key[0]} {key[1]} ts {_iso(key[2])} stored {values}"
        if key not in sent:
            summary.unexpected += len(values)
            _example(summary.examples, "unexpected", what)
            continue
        value, outcome = sent[key]
        if key not in accepted:
            name = ("stored_after_error" if outcome.status is None else
                    "stored_in_doubt" if outcome.may_be_stored else "stored_refused")
            setattr(summary, name, getattr(summary, name) + 1)
            _example(summary.examples, name, f"{what}, answered {outcome.kind} at {_clock(outcome.at)}")
            continue
        if len(values) > 1:
            summary.duplicated += len(values) - 1
            _example(summary.examples, "duplicated", what)
        if any(v != value for v in values):
            summary.wrong_value += 1
            _example(summary.examples, "wrong_value", f"{what}, sent {value}")
    for key in sorted(accepted - rows.keys()):
        summary.missing += 1
        _example(summary.examples, "missing", f"device {key[0]} {key[1]} ts {_iso(key[2])} value {sent[key][0]}, "
                                              f"answered 202 at {_clock(sent[key][1].at)}")


def _example(examples: dict[str, list[str]], name: str, text: str) -> None:
    kept = examples.setdefault(name, [])
    if len(kept) < EXAMPLES:
        kept.append(text)


# --- by hand -----------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m tests.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=env("VT_E2E_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--admin-token", default=env("VT_E2E_ADMIN_TOKEN") or env("VT_ADMIN_TOKEN"))
    parser.add_argument("--reader-token", default=env("VT_E2E_READER_TOKEN"))
    parser.add_argument("--devices", type=int, default=5)
    parser.add_argument("--rate", type=float, default=300.0, help="readings per second")
    parser.add_argument("--batch", type=int, default=5, help="readings per request")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--path", default="/api/ingest")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the pipeline to drain")
    args = parser.parse_args(argv)
    if not args.admin_token:
        parser.error("--admin-token (or VT_E2E_ADMIN_TOKEN) is required")
    gen = LoadGenerator(args.url, args.admin_token, devices=args.devices, rate=args.rate, batch=args.batch,
                        seconds=args.seconds, concurrency=args.concurrency, path=args.path)
    summary = gen.run(args.reader_token, args.timeout)
    print(summary.report() if not summary.ok else summary.line())
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
