"""Print, as JSON, what the Python code says about itself: its settings, the Flask url maps and the
Celery app. Run in a fresh interpreter by the chart cross-checks (tests/chart/), so importing the apps
cannot leak into the test process. Creating the apps opens no connection (pools are lazy).

Usage: python tests/chart/introspect.py settings|urlmap <module:factory>|celery <module>|aggregator-health|
       cli <visiontrack arguments>
"""
from __future__ import annotations

import importlib
import json
import sys


def settings() -> list[dict]:
    from visiontrack import config

    return [{"name": s.name, "default": s.default, "required": s.required, "parts": sorted(s.parts),
             "secret": s.secret} for s in config.SETTINGS]


def parse(pairs: list[str]) -> dict:
    """Parse NAME=VALUE pairs with the code's own parsers; report every problem."""
    from visiontrack import config

    problems = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            config.setting(name).parse(value)
        except KeyError:
            problems[name] = "not a setting of the Python parts"
        except ValueError as exc:
            problems[name] = str(exc)
    return problems


def urlmap(target: str) -> list[dict]:
    module, _, factory = target.partition(":")
    app = getattr(importlib.import_module(module), factory.removesuffix("()"))()
    return [{"rule": r.rule, "methods": sorted(r.methods - {"HEAD", "OPTIONS"})} for r in app.url_map.iter_rules()]


def celery(module: str) -> dict:
    from celery import Celery

    app = importlib.import_module(module).app
    app.loader.import_default_modules()  # the task modules a worker imports at start
    return {"is_celery": isinstance(app, Celery),
            "tasks": sorted(t for t in app.tasks if not t.startswith("celery.")),
            "beat_tasks": sorted({entry["task"] for entry in (app.conf.beat_schedule or {}).values()})}


def cli(args: list[str]) -> dict:
    """Parse `visiontrack <args>` with the command's own parser: its options, or the parser's complaint."""
    import contextlib
    import io

    from visiontrack import cli as cli_module

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return {"args": vars(cli_module.parser().parse_args(args))}
    except SystemExit:
        return {"error": err.getvalue().strip()}


def aggregator_health() -> dict:
    """Start the aggregator's metrics server (aggregator.metrics.serve) with Postgres and Redis on closed
    ports, and GET what the chart probes: each path's status, Retry-After and JSON body (or whether the
    text holds the aggregator's metrics)."""
    import socket
    import urllib.error
    import urllib.request

    from aggregator import metrics
    from visiontrack import readiness
    from visiontrack import config as config_module

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    closed = free_port()
    config = config_module.load({"DATABASE_URL": f"postgresql://x@127.0.0.1:{closed}/x",
                                 "REDIS_URL": f"redis://127.0.0.1:{closed}/0"})
    port = free_port()
    server = metrics.serve(port, config)
    answers = {}
    try:
        for path in ("/healthz", "/readyz", "/metrics"):
            try:
                resp = urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)
            except urllib.error.HTTPError as err:
                resp = err
            body = resp.read().decode()
            answers[path] = {"status": resp.status, "retry_after": resp.headers.get("Retry-After"),
                             "json": json.loads(body) if path != "/metrics" else None,
                             "aggregator_metrics": "visiontrack_aggregator_" in body}
    finally:
        server.shutdown()
    return {"paths": answers, "check_timeout_seconds": readiness.CHECK_TIMEOUT_SECONDS}


if __name__ == "__main__":
    what, *args = sys.argv[1:]
    result = {"settings": lambda: settings(), "parse": lambda: parse(args), "urlmap": lambda: urlmap(args[0]),
              "celery": lambda: celery(args[0]), "aggregator-health": aggregator_health, "cli": lambda: cli(args)}[what]()
    json.dump(result, sys.stdout)
