"""gunicorn settings for both Flask services, from the same VT_ variables as everything else."""
from __future__ import annotations

import os
import time

from visiontrack import config as _config

_cfg = _config.load()

bind = _cfg.http_bind
workers = _cfg.http_workers
threads = _cfg.http_threads
worker_class = "gthread"
# No max_requests: each recycled worker would leave its Prometheus files behind and slow every scrape.
graceful_timeout = 20
timeout = 30
keepalive = 5
# gunicorn answers its own refusals with an HTML page, not the API's error shape, so the ingress must refuse
# first. These are above what nginx's 4 x 8k header buffers pass (stack/nginx.py): a request line of 8190
# bytes (gunicorn's maximum), a header line of 8k plus the space nginx may add after the colon, and header
# lines by the thousand (32768 is gunicorn's maximum).
limit_request_line = 8190
limit_request_field_size = 16384
limit_request_fields = 32768
# The heartbeat file is touched on every loop turn: on tmpfs that costs nothing, on a disk it can stall a
# worker (gunicorn's own advice for containers). /dev/shm is a tmpfs on Linux and in every Kubernetes pod.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
accesslog = None
errorlog = "-"
loglevel = _cfg.log_level
proc_name = "visiontrack"
# No gunicornc control socket (gunicorn 25.1+): nothing uses it, locally or in a pod, and its per-user default path
# (~/.gunicorn/gunicorn.ctl) made the registry's and the query's gunicorns take it from each other.
control_socket_disable = True

# A body the app answered without reading (a 401 or 415 comes before it) stays on the socket, and gunicorn
# drains only 64 KiB before closing: closing on unread bytes resets the connection under a proxy still
# sending, which then answers 502 (nginx: 503 to the client) instead of the app's answer. So the rest is read
# first, within bounds: twice nginx's client_max_body_size (stack/nginx.py), and gunicorn's 5 s drain time.
_DRAIN_BYTES = 4 << 20
_DRAIN_SECONDS = 5.0


def post_request(worker, req, environ, resp):
    body, sock = getattr(req, "body", None), getattr(resp, "sock", None)
    if body is None or sock is None or getattr(body.reader, "length", None) == 0:
        return  # nothing left to read (no body, or all of it read): the common case costs no syscall
    deadline = time.monotonic() + _DRAIN_SECONDS
    prior = sock.gettimeout()
    drained = 0
    try:
        while drained < _DRAIN_BYTES and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            chunk = body.read(65536)
            if not chunk:
                break
            drained += len(chunk)
    except Exception:  # a broken or stalled upload: gunicorn marks the body failed and closes
        pass
    finally:
        sock.settimeout(prior)


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

        GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)
