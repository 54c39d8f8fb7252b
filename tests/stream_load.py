"""A background load written straight to the telemetry stream, as the ingestor writes it: entries of one
reading, at a fixed rate, until stopped (SIGTERM) or for --seconds. A process of its own, so that the test
measuring beside it shares no interpreter with it.

    python -m tests.stream_load --redis-url redis://127.0.0.1:6379/0 --key vt:telemetry --rate 10000 \\
        --device 7100000 --seconds 60
"""
from __future__ import annotations

import argparse
import json
import signal
import time

import redis

TICK = 0.01  # one pipelined round trip every 10 ms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--rate", type=float, required=True, help="entries (readings) per second")
    parser.add_argument("--device", type=int, required=True)
    parser.add_argument("--devices", type=int, default=100, help="devices taking turns, from --device on")
    parser.add_argument("--seconds", type=float, default=300)
    args = parser.parse_args()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    client = redis.Redis.from_url(args.redis_url)
    started = time.monotonic()
    base_ms = int(time.time() * 1000) - 600_000
    sent = 0
    while not stop and time.monotonic() - started < args.seconds:
        due = int((time.monotonic() - started) * args.rate)
        pipe = client.pipeline(transaction=False)
        now_ms = int(time.time() * 1000)
        for n in range(sent, due):
            reading = [["load", base_ms + n // args.devices, float(n)]]
            pipe.xadd(args.key, {"v": "1", "d": str(args.device + n % args.devices),
                                 "r": json.dumps(reading, separators=(",", ":")), "at": str(now_ms)})
        pipe.execute()
        sent = max(sent, due)
        time.sleep(TICK)


if __name__ == "__main__":
    main()
