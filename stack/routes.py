"""The public routes, path prefix -> part: the Helm chart's files/routes.json, the one list the Ingress, the
HTTPRoute and the local nginx (stack/nginx.py) route by."""
from __future__ import annotations

import json
from pathlib import Path

ROUTES_FILE = Path(__file__).resolve().parent.parent / "charts" / "visiontrack" / "files" / "routes.json"


def load_routes(path: Path = ROUTES_FILE) -> dict[str, str]:
    """Path prefix -> part (the chart's component), in the file's order."""
    return {route["path"]: route["component"] for route in json.loads(path.read_text())}


ROUTES = load_routes()
