"""Whether a process the stack started still runs: judged by the process in /proc, never by a file alone.

A pid file outlives its process after a SIGKILL, an OOM kill or a reboot, and the pid in it is soon given
to another process. So every pid `make up` records comes with the process's start time (clock ticks after
boot, /proc/<pid>/stat) and the boot's id: the part runs only while a process with that pid, start time
and boot exists and is not a zombie (a killed child not yet reaped still answers signal 0). A file that
cannot be read whole (written half when the machine went down) names no process.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
BOOT_ID = PROC / "sys" / "kernel" / "random" / "boot_id"


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: when it started, in clock ticks after boot
    boot_id: str

    def line(self) -> str:
        return f"pid={self.pid} start_ticks={self.start_ticks} boot_id={self.boot_id}\n"

    @classmethod
    def parse(cls, text: str) -> "ProcessIdentity | None":
        """The identity a pid file's line records; None for anything else (a line cut short, say)."""
        if not text.endswith("\n"):
            return None
        fields = dict(item.partition("=")[::2] for item in text.split())
        if set(fields) != {"pid", "start_ticks", "boot_id"}:
            return None
        if not (fields["pid"].isdigit() and fields["start_ticks"].isdigit() and fields["boot_id"]):
            return None
        return cls(int(fields["pid"]), int(fields["start_ticks"]), fields["boot_id"])


@dataclass(frozen=True)
class _Stat:
    state: str  # R, S, D, ...; Z: a zombie, exited and waiting to be reaped
    group: int  # its process group
    start_ticks: int

    @property
    def live(self) -> bool:
        return self.state not in ("Z", "X")


def _stat(pid: int) -> _Stat | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # Field 2, the command name, is in parentheses and may itself hold spaces and parentheses.
    fields = text[text.rindex(")") + 2:].split()
    return _Stat(fields[0], int(fields[2]), int(fields[19]))  # fields 3 (state), 5 (pgrp), 22 (starttime)


def exists(pid: int) -> bool:
    """A process with this pid exists and is not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat.live


def group_members(group: int) -> list[int]:
    """The live processes of a process group."""
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat.live and stat.group == group:
                found.append(int(entry.name))
    return found


def boot_id() -> str:
    return BOOT_ID.read_text().strip()


def identify(pid: int) -> ProcessIdentity | None:
    """The identity of a live process, None if it is gone."""
    stat = _stat(pid)
    if stat is None or not stat.live:
        return None
    return ProcessIdentity(pid, stat.start_ticks, boot_id())


def is_running(identity: ProcessIdentity) -> bool:
    return identify(identity.pid) == identity


def command_line(pid: int) -> list[str]:
    """A live process's argv ([] if it is gone or a zombie)."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1]]


def write_pid_file(path: Path, pid: int) -> None:
    """Record a process just started; written whole or not at all (a rename), so a crash leaves no half.
    A process already gone is not recorded (any earlier record is removed)."""
    identity = identify(pid)
    if identity is None:
        path.unlink(missing_ok=True)
        return
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(identity.line())
    os.replace(scratch, path)


def _started_before(pid: int, moment: float) -> bool:
    """Whether the process started no later than `moment` (epoch seconds); for pid files holding a bare pid."""
    stat = _stat(pid)
    if stat is None:
        return False
    boot = next(int(line.split()[1]) for line in (PROC / "stat").read_text().splitlines()
                if line.startswith("btime "))
    return boot + stat.start_ticks / os.sysconf("SC_CLK_TCK") <= moment + 1.0  # btime has whole seconds


def read_pid_file(path: Path) -> ProcessIdentity | None:
    """The process a pid file records while it runs; None when the file is missing, cut short or stale."""
    try:
        text = path.read_text()
        written = path.stat().st_mtime
    except OSError:
        return None
    if text.isdigit():
        # A bare pid, as written before start times were recorded (`pid=` starts every line since, so a line
        # cut short is never one): that process if it started before the file was written; one given the pid
        # later (after a crash, a reboot) started after it.
        pid = int(text)
        return identify(pid) if exists(pid) and _started_before(pid, written) else None
    identity = ProcessIdentity.parse(text)
    return identity if identity is not None and is_running(identity) else None


def wait_group_gone(group: int, timeout: float) -> bool:
    """Wait until a process group has no live process; whether it emptied within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while group_members(group):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
