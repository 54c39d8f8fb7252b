"""VisionTrack's own processes, started exactly as the Helm chart starts them.

Each part is the chart's container command run through `vt-entrypoint`, with the settings passed as
environment variables. `make up` and the integration tests both start them from here.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .servers import StackError, _tail, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
# VT_INGESTOR_BINARY points the stack and the tests at another build (a debug one, say).
INGESTOR_BINARY = Path(os.environ.get("VT_INGESTOR_BINARY",
                                      ROOT / "rust-ingestor" / "target" / "release" / "visiontrack-ingestor"))

# The container commands of the chart (charts/visiontrack), one per part.
COMMANDS: dict[str, list[str]] = {
    "migrate": ["visiontrack", "migrate"],
    "registry": ["gunicorn", "--config", "python:visiontrack.web.gunicorn_conf", "registry.app:create_app()"],
    "query": ["gunicorn", "--config", "python:visiontrack.web.gunicorn_conf", "query.app:create_app()"],
    "worker": ["celery", "--app", "aggregator.celery_app", "worker", "--loglevel", "INFO"],
    "beat": ["celery", "--app", "aggregator.celery_app", "beat", "--loglevel", "INFO"],
    "ingestor": ["visiontrack-ingestor"],
}
USES_MULTIPROC_DIR = {"registry", "query", "worker"}


def bin_dir() -> Path:
    return Path(sys.executable).parent


def argv(part: str) -> list[str]:
    cmd = COMMANDS[part]
    if part == "ingestor":
        return [str(INGESTOR_BINARY)]
    return [str(bin_dir() / "vt-entrypoint"), str(bin_dir() / cmd[0]), *cmd[1:]]


@dataclass
class Process:
    name: str
    part: str
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None
    extra_args: list[str] = field(default_factory=list)

    def start(self, run_dir: Path) -> "Process":
        env = {**os.environ, **self.env, "PATH": f"{bin_dir()}{os.pathsep}{os.environ.get('PATH', '')}"}
        if self.part in USES_MULTIPROC_DIR:
            env["PROMETHEUS_MULTIPROC_DIR"] = str(run_dir / "metrics" / self.name)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([*argv(self.part), *self.extra_args], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=run_dir, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_http(self, port: int, path: str = "/readyz", timeout: float = 30.0) -> None:
        wait_for_port(port, timeout, self.name, self.proc, self.log)
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise StackError(f"{self.name} exited with {self.proc.returncode}{_tail(self.log)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise StackError(f"{self.name} not ready on :{port}{path} ({last}){_tail(self.log)}")

    def run_to_end(self, run_dir: Path, timeout: float = 60.0) -> None:
        self.start(run_dir)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise StackError(f"{self.name} did not finish within {timeout:.0f}s{_tail(self.log)}") from None
        if code != 0:
            raise StackError(f"{self.name} failed with exit code {code}{_tail(self.log)}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
