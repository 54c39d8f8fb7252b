"""Running a `make bench` script at toy sizes and reading back the table it prints."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def run_bench(module: str, toy: dict[str, str], timeout: float) -> dict[str, tuple[str, str]]:
    """`python -m <module>` with the toy settings; its table as {measure: (result, note)}."""
    out = subprocess.run([sys.executable, "-m", module], cwd=ROOT, env={**os.environ, **toy},
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("measure ") and line.endswith("| note"))
    rows = {}
    for line in lines[header + 2:]:
        measure, result, note = (cell.strip() for cell in line.split(" | ", 2))
        rows[measure] = (result, note)
    return rows
