"""`make bench`'s Python side (bench/pipeline.py) run end to end at toy sizes.

The numbers at these sizes mean nothing; what is checked is that the harness still starts everything it
starts, drains, verifies and queries what it should, and prints every row of its table with a figure. A
benchmark that broke would otherwise be found only by the next person who needs its numbers.
"""
from __future__ import annotations

import re

import pytest

from bench.pipeline import QUERY_KINDS, RollupCost, Rounds
from tests.bench.table import run_bench

TOY = {"BENCH_ENTRIES": "3000", "BENCH_SINGLE_ENTRIES": "50000", "BENCH_QUERY_ROWS": "20000",
       "BENCH_QUERY_SECONDS": "1", "BENCH_ROUNDS": "1", "BENCH_STALL_ENTRIES": "5000", "BENCH_TX_BATCHES": "4"}


@pytest.fixture(scope="module")
def table() -> dict[str, tuple[str, str]]:
    return run_bench("bench.pipeline", TOY, timeout=400)


def test_every_row_should_carry_a_figure(table):
    assert len(table) == 12 + len(QUERY_KINDS) + 2
    for measure, (result, _) in table.items():
        assert re.search(r"\d", result), f"{measure}: {result!r}"


def test_the_rollup_rows_should_report_their_cost_against_the_target(table):
    result, note = table["aggregator as deployed (2 worker processes), rollups+alerts"]
    assert result.endswith("readings/s")
    assert re.search(r"rollups\+alerts cost -?\d+% \(pair by pair -?\d+%", note) and "(target <= 20%)" in note


def test_the_device_stats_rows_should_report_their_cost_against_the_target(table):
    for shape in ("entries of 100 readings", "entries of 1 reading"):
        result, note = table[f"as deployed, {shape}, device stats on vs off"]
        assert re.fullmatch(r"[\d,]+ vs [\d,]+ readings/s", result)
        assert re.match(r"device stats cost -?\d+\.\d% \(pair by pair -?\d+\.\d%", note) and "(target <= 5%)" in note
    result, note = table["one batch's transaction, 10,000 one-reading entries of 1,000 devices"]
    assert re.fullmatch(r"\d+\.\d ms vs \d+\.\d ms", result) and re.match(r"with device stats vs without: [+-]\d", note)


def test_the_redis_stall_row_should_compare_the_aggregators_calls_with_whole_batches(table):
    result, note = table["writers' XADD while the aggregator drains 5,000 one-reading entries (calls of 1,000)"]
    assert re.fullmatch(r"p99 \d+\.\d\d ms, p99\.9 \d+\.\d\d ms", result)
    assert re.fullmatch(r"in calls of a whole batch \(10,000\): p99 \d+\.\d\d ms, p99\.9 \d+\.\d\d ms; "
                        r"drained in \d+\.\d\d s vs \d+\.\d\d s", note)


def test_each_query_kind_should_report_p50_and_p99_against_its_target(table):
    for _, what, target in QUERY_KINDS:
        result, note = table[f"{what}, 20,000 rows, via nginx"]
        assert re.fullmatch(r"p50 \d+\.\d\d ms, p99 \d+\.\d\d ms", result)
        assert f"(target p99 < {target} ms)" in note


def test_the_rollup_cost_should_come_from_the_medians_and_from_the_pairs():
    cost = RollupCost(raw=Rounds(rates=[100.0, 200.0, 300.0]), full=Rounds(rates=[90.0, 150.0, 270.0]))
    # medians 150 against 200: 25%; pairs 10%, 25%, 10%: median 10%
    assert cost.summary().startswith("rollups+alerts cost 25% (pair by pair 10%, pairs 10% to 25%)")
