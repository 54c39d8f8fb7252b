"""Whether a recorded process still runs (stack/liveness.py) and whether Postgres does (stack/servers.py): by the
process, never by a file alone. Real processes (`sleep`, `sh`), no servers."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from stack import liveness
from stack.servers import Postgres


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []

    def start(*argv: str, executable: str | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(list(argv or ("sleep", "300")), executable=executable, start_new_session=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:  # each process group, whatever is left of it
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def test_a_recorded_process_runs_until_killed_even_while_a_zombie(processes, tmp_path):
    proc = processes()
    record = tmp_path / "part.pid"
    liveness.write_pid_file(record, proc.pid)
    assert liveness.read_pid_file(record).pid == proc.pid
    os.kill(proc.pid, signal.SIGKILL)
    time.sleep(0.2)  # not reaped: a zombie, which signal 0 still reaches
    os.kill(proc.pid, 0)
    assert liveness.read_pid_file(record) is None
    proc.wait()


def test_a_recorded_pid_another_process_holds_now_is_not_the_part(processes, tmp_path):
    proc = processes()
    record = tmp_path / "part.pid"
    liveness.write_pid_file(record, proc.pid)
    line = record.read_text()
    earlier = liveness.ProcessIdentity.parse(line)
    # The same pid, started at another time, or in another boot: another process.
    record.write_text(line.replace(f"start_ticks={earlier.start_ticks}", f"start_ticks={earlier.start_ticks - 1}"))
    assert liveness.read_pid_file(record) is None
    record.write_text(line.replace(earlier.boot_id, "00000000-0000-0000-0000-000000000000"))
    assert liveness.read_pid_file(record) is None
    record.write_text(line)
    assert liveness.read_pid_file(record) == earlier


def test_a_record_cut_short_names_no_process(processes, tmp_path):
    proc = processes()
    record = tmp_path / "part.pid"
    liveness.write_pid_file(record, proc.pid)
    line = record.read_text()
    for end in range(len(line)):
        record.write_text(line[:end])
        assert liveness.read_pid_file(record) is None, repr(line[:end])
    assert liveness.read_pid_file(tmp_path / "missing.pid") is None


def test_a_bare_pid_from_before_start_times_were_recorded_is_judged_by_the_files_age(processes, tmp_path):
    proc = processes()
    record = tmp_path / "part.pid"
    record.write_text(str(proc.pid))  # as `make up` wrote it before: written after the process started
    assert liveness.read_pid_file(record).pid == proc.pid
    an_hour_ago = time.time() - 3600  # written before this process existed: its pid was another's then
    os.utime(record, (an_hour_ago, an_hour_ago))
    assert liveness.read_pid_file(record) is None


def test_a_process_gone_is_not_recorded(processes, tmp_path):
    proc = processes("true")
    proc.wait()
    record = tmp_path / "part.pid"
    record.write_text("pid=1 start_ticks=1 boot_id=x\n")
    liveness.write_pid_file(record, proc.pid)
    assert not record.exists()


def _fake_postmaster(processes, data_dir: Path) -> subprocess.Popen:
    """A process whose command line is a postmaster's of data_dir: argv[0] `postgres`, then `-D data_dir`."""
    proc = processes("postgres", "-c", "sleep 300; :", "-D", str(data_dir), executable="/bin/sh")
    deadline = time.monotonic() + 10
    while liveness.command_line(proc.pid)[:1] != ["postgres"]:  # until it has exec'd
        assert time.monotonic() < deadline, liveness.command_line(proc.pid)
        time.sleep(0.01)
    return proc


def _postmaster_pid_file(data_dir: Path, pid: int) -> None:
    data_dir.mkdir(exist_ok=True)
    (data_dir / "postmaster.pid").write_text(f"{pid}\n{data_dir}\n1700000000\n5432\n")


def test_postgres_runs_only_while_its_postmaster_runs_on_its_data_directory(processes, tmp_path):
    data_dir, other_dir = tmp_path / "pg", tmp_path / "other"
    pg = Postgres(data_dir, 5432, tmp_path / "pg.log")
    assert pg.pid() is None  # no postmaster.pid
    postmaster = _fake_postmaster(processes, data_dir)
    _postmaster_pid_file(data_dir, postmaster.pid)
    assert pg.pid() == postmaster.pid and pg.running()
    assert pg.remove_stale_pid_file() is None and pg.pid_file.exists()

    _postmaster_pid_file(data_dir, processes().pid)  # the pid is a sleep's now
    assert not pg.running()
    _postmaster_pid_file(data_dir, _fake_postmaster(processes, other_dir).pid)  # another cluster's postmaster
    assert not pg.running()
    (data_dir / "postmaster.pid").write_text("12")  # cut short
    assert not pg.running()


def test_a_stale_postmaster_pid_goes_with_its_socket_lock_and_the_backends_left_behind(processes, tmp_path):
    data_dir = tmp_path / "pg"
    # A postmaster that died alone, its backend still running in its process group.
    leader = processes("sh", "-c", f"sleep 300 & echo $! > {tmp_path}/backend; exit 0")
    leader.wait()
    backend = int((tmp_path / "backend").read_text())
    assert backend and liveness.exists(backend) and liveness.group_members(leader.pid) == [backend]
    _postmaster_pid_file(data_dir, leader.pid)
    (data_dir / ".s.PGSQL.5432.lock").write_text(f"{leader.pid}\n")
    pg = Postgres(data_dir, 5432, tmp_path / "pg.log")

    assert pg.remove_stale_pid_file() == leader.pid
    assert not liveness.exists(backend)
    assert not pg.pid_file.exists() and not (data_dir / ".s.PGSQL.5432.lock").exists()
    assert pg.remove_stale_pid_file() is None  # nothing left to remove
