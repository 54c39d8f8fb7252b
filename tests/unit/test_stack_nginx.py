"""The local nginx (stack/nginx.py) routes by the chart's route file (charts/visiontrack/files/routes.json), as
the Ingress and the HTTPRoute do (tests/chart/test_crosschecks.py)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from stack import nginx
from stack.routes import ROUTES, ROUTES_FILE

PORTS = {"ingestor": 1, "registry": 2, "query": 3}


def _locations(conf: str) -> dict[str, str]:
    return dict(re.findall(r"location (/api/\S+) \{[^}]*proxy_pass http://(\w+);", conf))


def test_the_local_nginx_routes_every_route_of_the_file_to_its_part():
    conf = nginx.render(8080, PORTS, Path("/run"), Path("/logs"), 1024)
    assert _locations(conf) == ROUTES == {r["path"]: r["component"] for r in json.loads(ROUTES_FILE.read_text())}
    assert set(ROUTES.values()) == set(PORTS)


def test_a_part_not_started_gets_no_location():
    conf = nginx.render(8080, {"registry": 2, "query": 3}, Path("/run"), Path("/logs"), 1024)
    assert _locations(conf) == {path: part for path, part in ROUTES.items() if part != "ingestor"}


