"""How steady this machine's CPU is: the same unit of work timed again and again, by the thread's own CPU clock.

On a quiet dedicated machine every unit takes about as long as the median. On a virtual machine whose host
takes the CPU away now and then without the guest seeing it as steal time, some units take several times as
long while counting as CPU time. Any latency percentile measured here carries that tail: a request whose work
takes 1 ms and falls in such a unit takes several ms, whatever the code. The table reports it next to the
latency figures so they can be read against it.
"""
from __future__ import annotations

import sys
import time

UNIT_SECONDS = 0.0005  # about the CPU time of a small API request's own work
GAP_SECONDS = 0.0005  # idle time between units, as between sequential requests


def _work(n: int) -> int:
    x = 0
    for j in range(n):
        x += j * j
    return x


def _calibrate() -> int:
    """Loop iterations taking about UNIT_SECONDS of CPU. The fastest of a few tries, not their median: a
    stall during the calibration would otherwise shrink every unit measured after it."""
    n = 1000
    while True:
        took = min(_timed(n) for _ in range(9))
        if took >= UNIT_SECONDS / 4:
            return max(1, int(n * UNIT_SECONDS / took))
        n *= 4


def _timed(n: int) -> float:
    started = time.thread_time()
    _work(n)
    return time.thread_time() - started


def cpu_noise(seconds: float = 5.0) -> dict:
    """Percentiles (ms) of a fixed unit's CPU time, and the share of units taking 3x the median or more."""
    n = _calibrate()
    times = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        times.append(_timed(n))
        time.sleep(GAP_SECONDS)
    times.sort()
    median = times[len(times) // 2]
    return {"units": len(times), "p50": median * 1000, "p99": times[int(len(times) * 0.99)] * 1000,
            "max": times[-1] * 1000, "slow_share": sum(t >= 3 * median for t in times) / len(times)}


def describe(got: dict) -> str:
    return (f"{got['units']} units: p50 {got['p50']:.2f} ms, p99 {got['p99']:.2f} ms, max {got['max']:.2f} ms, "
            f"{got['slow_share']:.1%} took 3x the median or more")


if __name__ == "__main__":
    got = cpu_noise()
    # --tsv: the share first, for a shell script's table, then the sentence.
    print(f"{got['slow_share']:.1%}\t{describe(got)}" if "--tsv" in sys.argv[1:] else describe(got))
