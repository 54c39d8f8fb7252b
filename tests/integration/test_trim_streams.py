"""The trim task over shards some of which nothing was written to yet (aggregator.tasks.ingest.trim_streams).

Run in a subprocess: the Celery app reads its settings from the environment when imported.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

from tests.conftest import ROOT


def test_a_shard_not_written_to_yet_does_not_stop_the_others_being_trimmed(base_env, redis_client):
    key = f"vt:test-trim:{uuid.uuid4().hex[:8]}"
    written = f"{key}:{{2}}"  # shards 0 and 1 do not exist
    redis_client.xgroup_create(written, "aggregators", id="$", mkstream=True)
    for n in range(3):
        redis_client.xadd(written, {"n": str(n)})
    delivered = redis_client.xreadgroup("aggregators", "c1", {written: ">"})[0][1]
    redis_client.xack(written, "aggregators", *[entry_id for entry_id, _ in delivered])
    env = {**os.environ, **base_env, "VT_STREAM_KEY": key, "VT_STREAM_SHARDS": "3", "VT_METRICS_PORT": "0"}
    try:
        proc = subprocess.run([sys.executable, "-c", "from aggregator.tasks.ingest import trim_streams; "
                               "print(trim_streams())"], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.split()[-1] == "3"  # entries trimmed
        assert redis_client.xlen(written) == 0
    finally:
        redis_client.delete(written)
