"""`make bench`'s scale-out benchmark (bench/scale_out.py) run end to end at toy sizes.

The numbers mean nothing here; what is checked is that the harness starts the aggregators over their shards,
waits for every reading, starts the ingestor against one Redis (and the cluster, when the ingestor knows
VT_REDIS_CLUSTER) and prints every row of its table with a figure.
"""
from __future__ import annotations

import os
import re

import pytest

from bench.scale_out import NO_CLUSTER, ingestor_knows_cluster
from tests.bench.table import run_bench

# Batches of 50 entries (VT_BATCH_READINGS), so that a toy stream still takes several batches per shard.
TOY = {"BENCH_SCALE_READINGS": "60000", "BENCH_SCALE_PROCESSES": "1,2", "BENCH_SCALE_INGEST_SECONDS": "1",
       "BENCH_SCALE_RATE": "1000", "BENCH_SCALE_SINGLE_RATE": "5000", "VT_BATCH_READINGS": "5000"}


@pytest.fixture(scope="module")
def table() -> dict[str, tuple[str, str]]:
    return run_bench("bench.scale_out", TOY, timeout=240)


def test_every_row_should_carry_a_figure(table):
    cluster = ingestor_knows_cluster()
    assert len(table) == 2 + 2 * 2 + 4
    for measure, (result, _) in table.items():
        if "Redis Cluster" in measure and not cluster:
            assert result == NO_CLUSTER
        else:
            assert re.search(r"\d", result), f"{measure}: {result!r}"


def test_the_header_should_give_the_cores(table):
    result, note = table["machine"]
    assert result == f"{os.cpu_count()} cores" and "load average" in note


def test_each_aggregator_count_should_report_rate_speed_up_and_cpu(table):
    assert re.fullmatch(r"[\d,]+ readings/s", table["raw binary COPY into telemetry (yardstick)"][0])
    for n, what in ((1, "1 worker process over 1 shard"), (2, "2 worker processes over 2 shards")):
        result, note = table[f"aggregator, {what}"]
        assert re.fullmatch(r"[\d,]+ readings/s", result)
        assert re.match(rf"\d+% of COPY; speed-up x\d+\.\d\d against 1 process \(linear: x{n}, the cores allow "
                        r"x\d+\.\d\d\); all 60,000 stored", note)
        assert re.search(r"cores busy \d+\.\d\d ours, \d+\.\d\d of \d+ machine-wide", note)
        result, note = table[f"aggregator, {what}: CPU per 1M readings"]
        assert re.fullmatch(r"\d+\.\d s", result)
        assert re.match(r"aggregator \d+\.\d, postgres \d+\.\d, redis \d+\.\d; x\d+\.\d\d", note)


def test_each_ingest_row_should_report_rate_and_cpu_per_reading(table):
    for readings in ("100 readings", "1 reading"):
        result, note = table[f"ingest, {readings} per request, one Redis (1 shard)"]
        assert re.fullmatch(r"[\d,]+ readings/s, \d+\.\d\d CPU us/reading", result)
        assert re.match(r"us per reading: ingestor \d+\.\d\d, redis \d+\.\d\d; offered", note)
