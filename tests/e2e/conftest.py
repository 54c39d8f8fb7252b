"""Where the end-to-end tests run: the local stack (default) or a deployed one (`make test-cluster`).

With no environment set, the fixtures start the local stack (tests/conftest.py): Postgres, Redis, gunicorn,
the ingestor, Celery and nginx routing the Ingress paths, on free ports, with the tokens of tests/conftest.py.

Against a deployment, set:

    VT_E2E_URL           the ingress's base URL (say http://localhost for kind through Traefik); when set,
                         nothing local starts: `ingress` is this URL and `aggregator` does nothing (the
                         deployment runs its own worker and beat)
    VT_E2E_ADMIN_TOKEN   one of the deployment's VT_ADMIN_TOKENS (required with VT_E2E_URL)
    VT_E2E_READER_TOKEN  one of the deployment's VT_READER_TOKENS (required with VT_E2E_URL)
    VT_E2E_WEBHOOK_URL   optional: the URL the deployment's worker reaches this machine at, with a port, for
                         the alert tests' webhook receiver (it listens at that address and port, so the
                         address must be one of this machine's); without it, the tests that need a webhook
                         are skipped

Tests that check the local nginx itself (its own refusals in the API's error shape, its body and header
limits, a stopped part answering 503) carry the marker `local_ingress`; tests that need the local processes
or files (the simulator, the run directory, Postgres itself, stopping a part) carry `local_processes`.
Both are skipped against a deployment, with the reason.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
import requests

from stack.services import INGESTOR_BINARY
from tests.conftest import ADMIN_TOKEN, READER_TOKEN, Aggregator

LOCAL_ONLY = {
    "local_ingress": "checks the local nginx itself; VT_E2E_URL points at a deployment's ingress",
    "local_processes": "needs the local stack's processes or files; VT_E2E_URL points at a deployment",
}


@dataclass(frozen=True)
class Target:
    """What the tests talk to: url None means the local stack, started by the fixtures."""
    url: str | None
    admin_token: str
    reader_token: str
    webhook_url: str | None = None

    @property
    def deployed(self) -> bool:
        return self.url is not None


def target_from_env(environ=os.environ) -> Target:
    url = environ.get("VT_E2E_URL", "").strip().rstrip("/")
    if not url:
        return Target(None, ADMIN_TOKEN, READER_TOKEN)
    missing = [name for name in ("VT_E2E_ADMIN_TOKEN", "VT_E2E_READER_TOKEN") if not environ.get(name)]
    if missing:
        raise pytest.UsageError(f"VT_E2E_URL is set, so {' and '.join(missing)} must be too (see {__file__})")
    webhook = environ.get("VT_E2E_WEBHOOK_URL", "").strip() or None
    if webhook and urlsplit(webhook).port is None:
        raise pytest.UsageError(f"VT_E2E_WEBHOOK_URL needs an explicit port (the receiver listens on it): {webhook}")
    return Target(url, environ["VT_E2E_ADMIN_TOKEN"], environ["VT_E2E_READER_TOKEN"], webhook)


TARGET = target_from_env()
ADMIN = {"Authorization": f"Bearer {TARGET.admin_token}"}
READER = {"Authorization": f"Bearer {TARGET.reader_token}"}
# A deployment always has its ingestor; locally it must have been built.
needs_ingestor = pytest.mark.skipif(not TARGET.deployed and not INGESTOR_BINARY.exists(),
                                    reason=f"ingestor not built ({INGESTOR_BINARY}); run `make ingestor-build`")


def pytest_collection_modifyitems(config, items):
    if not TARGET.deployed:
        return
    for item in items:
        for marker, reason in LOCAL_ONLY.items():
            if item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=reason))


def _check_deployment(target: Target) -> None:
    """Fail once, clearly, when the deployment does not answer or refuses a token (not in every test)."""
    for path, token, name in (("/api/devices/", target.admin_token, "VT_E2E_ADMIN_TOKEN"),
                              ("/api/telemetry/", target.reader_token, "VT_E2E_READER_TOKEN")):
        try:
            resp = requests.get(f"{target.url}{path}", params={"limit": 1},
                                headers={"Authorization": f"Bearer {token}"}, timeout=10)
        except requests.RequestException as exc:
            raise RuntimeError(f"VT_E2E_URL={target.url} does not answer: {exc}") from None
        if resp.status_code != 200:
            raise RuntimeError(f"GET {target.url}{path} with {name}: {resp.status_code} {resp.text[:200]}")


@pytest.fixture(scope="session")
def target() -> Target:
    return TARGET


@pytest.fixture(scope="session")
def ingress(request) -> str:
    """The base URL the tests send to: the deployment's, or the local nginx (started on first use)."""
    if TARGET.deployed:
        _check_deployment(TARGET)
        return TARGET.url
    return request.getfixturevalue("nginx_ingress")


def local_aggregator(request, **env: str):
    """The body of a module's `aggregator` fixture (`yield from local_aggregator(request, **env)`): a local
    Celery worker and beat with these settings, or nothing against a deployment, which runs its own."""
    if TARGET.deployed:
        yield None
        return
    agg = Aggregator(request.getfixturevalue("base_env"), request.getfixturevalue("run_dir"), **env).start()
    yield agg
    agg.stop()
