"""Drills: faults under a steady load through the ingress (nginx), on a stack of their own started as `make up`
starts it (tests/drills/drill_stack.py), shared by every drill: each leaves it whole, or fails.

The load is tests/load.py's: readings known one by one, so every reading answered 202 can be found stored
exactly once with its value. Each drill adds a row to one table (tests/drills/table.py), printed at the end
of the session and written to run/drills-table.txt.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from stack.services import INGESTOR_BINARY
from tests.drills import drill_stack
from tests.drills.alert_probe import AlertProbe
from tests.drills.checks import IngressProbe
from tests.drills.table import TABLE, DrillTable

TABLE_FILE = Path(__file__).resolve().parents[2] / "run" / "drills-table.txt"


@pytest.fixture(scope="session")
def stack():
    if not INGESTOR_BINARY.exists():
        pytest.skip(f"ingestor binary not built ({INGESTOR_BINARY}); run `make ingestor-build`")
    stack = drill_stack.start()
    yield stack
    stack.down()


@pytest.fixture(scope="session")
def redis_client(stack):
    client = drill_stack.redis_client(stack)
    yield client
    client.close()


@pytest.fixture(scope="session")
def probe(stack) -> IngressProbe:
    return IngressProbe(stack)


@pytest.fixture(scope="session")
def alerts(stack):
    probe = AlertProbe(stack.url, stack.admin_token)
    yield probe
    probe.close()


@pytest.fixture(scope="session")
def table() -> DrillTable:
    return TABLE


def pytest_terminal_summary(terminalreporter):
    TABLE.report(terminalreporter, "drills", TABLE_FILE)
