"""`make test-scale`: VisionTrack on a Redis Cluster and a Postgres primary with a synchronous standby.

The session's services run on the replicated backends (tests/conftest.py, VT_TEST_BACKENDS=replicated); the
end-to-end suite (tests/e2e) runs first against them, then the tests here, the failover drills last. Each drill
adds a row to a table printed at the end of the session and written to run/scale-drills-table.txt.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Aggregator
from tests.drills.table import DrillTable

TABLE_FILE = Path(__file__).resolve().parents[2] / "run" / "scale-drills-table.txt"
TABLE = DrillTable(note=(
    "accepted, stored, lost (answered 202, not stored) and doubled (stored twice) count readings; seconds to "
    "recover: the failover, from the kill until the promoted node serves (a replica or standby taken over)"))


@pytest.fixture(scope="session")
def scale_table() -> DrillTable:
    return TABLE


@pytest.fixture(scope="module")
def aggregator(base_env, run_dir):
    """A worker and beat of the module's own (broker on the plain Redis, stream on the cluster)."""
    agg = Aggregator(base_env, run_dir).start()
    yield agg
    agg.stop()


def pytest_terminal_summary(terminalreporter):
    TABLE.report(terminalreporter, "scale-out failover drills", TABLE_FILE)
