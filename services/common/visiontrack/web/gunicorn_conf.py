"""gunicorn settings for both Flask services, from the same VT_ variables as everything else."""
from __future__ import annotations

import os

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
# The heartbeat file is touched on every loop turn: on tmpfs that costs nothing, on a disk it can stall a
# worker (gunicorn's own advice for containers). /dev/shm is a tmpfs on Linux and in every Kubernetes pod.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
accesslog = None
errorlog = "-"
loglevel = _cfg.log_level
proc_name = "visiontrack"


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

        GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)
