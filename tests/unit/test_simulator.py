"""The simulator's alert demo: two devices cross the demo rule's threshold for a while every period."""
from __future__ import annotations

from stack import simulator


def test_two_devices_run_hot_for_a_stretch_of_every_period_and_the_others_never():
    times = [1_795_000_000 + s for s in range(0, int(simulator.HOT_PERIOD) * 2)]
    over = {i: [simulator.reading(i, t)["values"]["temperature"] > simulator.DEMO_RULE["threshold"] for t in times]
            for i in range(4)}
    for i in (0, 1):
        hot_seconds = sum(over[i]) / 2
        assert simulator.HOT_SECONDS - 2 <= hot_seconds <= simulator.HOT_SECONDS + 2
        assert max(_run_lengths(over[i])) > simulator.DEMO_RULE["for_seconds"]  # long enough to fire
        assert not all(over[i])  # and it clears, so the alert resolves
    assert not any(over[2]) and not any(over[3])
    assert over[0] != over[1]  # half a period apart


def _run_lengths(flags: list[bool]) -> list[int]:
    runs, n = [0], 0
    for f in flags:
        n = n + 1 if f else 0
        runs.append(n)
    return runs
