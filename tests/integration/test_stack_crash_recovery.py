"""`make up` after a crash: each part SIGKILLed (its whole process group) is reported stopped by `make status`
and brought back by `make up`, whatever files the crash left: Postgres' postmaster.pid, an AOF cut mid-write,
records in run/pids naming pids other processes hold by now or cut short, nginx's own pid file half-written,
Prometheus' lock file. The stack runs as `make up` runs it (tests/local_stack.py), with its simulator."""
from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest
import requests

from stack import liveness
from tests.conftest import poll
from tests.local_stack import PARTS, LocalStack

ADMIN_TOKEN = "crash-admin-token-0123456789"
READER_TOKEN = "crash-reader-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def stack():
    stack = LocalStack("vt-crash-", ADMIN_TOKEN, READER_TOKEN, simulator=True)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


def _everything_runs(stack: LocalStack) -> dict[str, int | None]:
    status = stack.status()
    assert list(status) == list(PARTS), status
    stopped = [part for part, pid in status.items() if pid is None]
    assert not stopped, f"`make status` says stopped: {stopped}"
    return status


def _device_with_a_reading(stack: LocalStack) -> tuple[dict, int]:
    """A device registered through the ingress, and the time of its one reading, stored in Postgres."""
    resp = requests.post(f"{stack.url}/api/devices/", json={"name": f"crash-{uuid.uuid4().hex[:8]}"}, headers=ADMIN,
                         timeout=10)
    assert resp.status_code == 201, resp.text
    device = resp.json()
    ts = int(time.time() * 1000) - 1000
    _ingest(stack, device, ts)
    _wait_stored(stack, device, ts)
    return device, ts


def _ingest(stack: LocalStack, device: dict, ts: int) -> None:
    resp = requests.post(f"{stack.url}/api/ingest", json={"ts": ts, "values": {"crash": 1.5}},
                         headers={"Authorization": f"Bearer {device['token']}"}, timeout=10)
    assert resp.status_code == 202, resp.text


def _wait_stored(stack: LocalStack, device: dict, ts: int) -> None:
    def stored():
        resp = requests.get(f"{stack.url}/api/telemetry/", params={"device_id": device["id"], "limit": 100},
                            headers=ADMIN, timeout=10)
        return resp.status_code == 200 and any(i["value"] == 1.5 and i["ts"].startswith(_iso_prefix(ts))
                                               for i in resp.json()["items"])
    poll(stored, timeout=60, interval=0.2, what=f"device {device['id']}'s reading at {ts} stored")


def _iso_prefix(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts / 1000))


def test_status_names_every_part_with_the_pid_of_its_process(stack):
    status = _everything_runs(stack)
    for part, pid in status.items():
        assert pid == stack.recorded_pid(part) and liveness.exists(pid), part


def test_each_part_killed_is_reported_stopped_and_only_it_is_started_again(stack):
    before = _everything_runs(stack)
    for part in PARTS:
        stack.kill(part)
        status = stack.status()
        assert status[part] is None, f"{part} was SIGKILLed, `make status` says running: {status}"
        assert {p: pid for p, pid in status.items() if p != part} == {p: pid for p, pid in before.items()
                                                                       if p != part}, f"after killing {part}"
        out = stack.up()
        after = _everything_runs(stack)
        assert after[part] != before[part], f"{part} has its old pid after `make up`"
        assert {p: pid for p, pid in after.items() if p != part} == {p: pid for p, pid in before.items()
                                                                      if p != part}, \
            f"`make up` after killing {part} restarted others:\n{out}"
        before = after
    _device_with_a_reading(stack)  # and the stack, every part restarted once, works


def _cut_aof_mid_write(stack: LocalStack) -> None:
    """Half an XADD at the end of Redis' append-only file: the write a crash interrupted."""
    increments = sorted((stack.run_dir / "redis" / "appendonlydir").glob("*.incr.aof"))
    assert increments, "no AOF increment file"
    with open(increments[-1], "ab") as aof:
        aof.write(b"*5\r\n$4\r\nXADD\r\n$12\r\nvt:telemetry\r\n$1\r\n*\r\n$1\r\nv")


def test_everything_killed_at_once_comes_back_whatever_files_the_crash_left(stack):
    _everything_runs(stack)
    device, ts = _device_with_a_reading(stack)
    for part in reversed(PARTS):
        stack.kill(part)
    # Pids the crash left now belong to other processes (as after a reboot): a sleep holds one of them.
    impostor = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        postmaster = stack.pid_file("postgres")
        postmaster.write_text(f"{impostor.pid}\n" + postmaster.read_text().split("\n", 1)[1])
        liveness.write_pid_file(stack.pid_file("worker"), impostor.pid)
        record = stack.pid_file("worker").read_text()  # the impostor's pid with another start: another process
        stack.pid_file("worker").write_text(record.replace("start_ticks=", "start_ticks=1"))
        stack.pid_file("registry").write_text(record[:7])  # records cut short mid-write
        stack.pid_file("nginx").write_text("")
        (stack.run_dir / "nginx" / "nginx.pid").write_text("4")
        (stack.run_dir / "prometheus" / "data" / "lock").write_text("")
        (stack.run_dir / "simulator.json").write_text('{"sim-0000": {"id": ')
        _cut_aof_mid_write(stack)

        status = stack.status()
        assert status == {part: None for part in PARTS}, f"everything was killed, `make status` says {status}"
        out = stack.up()
        assert "postmaster.pid, left by a crash" in out, out
        redis_log = (stack.run_dir / "logs" / "redis.log").read_text()
        assert "loaded anyway because aof-load-truncated is enabled" in redis_log, redis_log[-2000:]
        _everything_runs(stack)
        assert impostor.poll() is None, "`make up` killed a process that only held a recorded pid"
    finally:
        impostor.kill()
        impostor.wait()
    # What was stored before the crash still is, the device's token still works, and new readings go through.
    _wait_stored(stack, device, ts)
    _ingest(stack, device, ts + 1000)
    _wait_stored(stack, device, ts + 1000)
    # The simulator found its devices again by name and wrote its state anew.
    poll(lambda: len(_simulator_state(stack)) == 2, timeout=60, what="the simulator's state written anew")


def _simulator_state(stack: LocalStack) -> dict:
    try:
        return json.loads((stack.run_dir / "simulator.json").read_text())
    except ValueError:
        return {}
