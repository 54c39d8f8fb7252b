"""Per-process connections and pipelines of a worker, made lazily after the fork and never shared."""
from __future__ import annotations

import os
import socket
from functools import cached_property

from visiontrack import config as config_module
from visiontrack import redis_client
from visiontrack.db import Database

from .consumer import StreamConsumer
from .listen_lease import ListenLease
from .pipeline import Pipeline
from .storage import TelemetryStorage


NODE_NAME = {"value": f"celery@{socket.gethostname()}"}  # replaced by the worker's real node name at start


def consumer_name() -> str:
    """<celery node name>:<pool slot>: stable across restarts of the same worker slot, so a restarted
    process first finds its own pending entries; other nodes claim them if it never comes back."""
    try:
        from billiard.process import current_process

        index = current_process().index
    except (ImportError, AttributeError):
        index = None
    return f"{NODE_NAME['value']}:{index if index is not None else os.getpid()}"


class WorkerState:
    def __init__(self, config=None):
        self.config = config or config_module.load()
        self.pid = os.getpid()
        self._pipelines: dict[str, Pipeline] = {}

    @cached_property
    def redis(self) -> redis_client.Client:
        # A listening drain's reads block for at most pipeline.LONGEST_BLOCK_SECONDS, well inside the timeout.
        return redis_client.from_config(self.config, socket_timeout=10, socket_connect_timeout=5,
                                        health_check_interval=30)

    @cached_property
    def db(self) -> Database:
        return Database(self.config.database_url, pool_size=2, application_name="visiontrack-aggregator")

    @cached_property
    def storage_conn(self):
        return self.db.connect()

    def consumer(self, key: str) -> StreamConsumer:
        c = self.config
        return StreamConsumer(self.redis, key, c.stream_group, consumer_name(), c.dead_letter_key,
                              c.claim_idle_ms, c.max_deliveries)

    def pipeline(self, key: str) -> Pipeline:
        pipe = self._pipelines.get(key)
        if pipe is None or pipe.storage.conn.closed:
            if pipe is not None:
                self.__dict__.pop("storage_conn", None)
            consumer = self.consumer(key)
            consumer.ensure_group()
            storage = TelemetryStorage(self.storage_conn, self.config.rollups_enabled,
                                       self.config.device_stats_enabled, self.config.standby_confirm_seconds)
            pipe = Pipeline(consumer, storage, self.config.batch_entries,
                            self.config.retention_days, self.config.batch_readings,
                            max_wait_seconds=self.config.batch_max_wait_ms / 1000)
            self._pipelines[key] = pipe
        return pipe

    def listen_lease(self, key: str) -> ListenLease:
        """The leases a drain of `key` needs to listen (aggregator.listen_lease): they outlive its budget a
        little, so that a killed listener's are free again soon after it would have handed over."""
        c = self.config
        return ListenLease(self.redis, key, NODE_NAME["value"], c.worker_concurrency - 1,
                           c.drain_budget_seconds + 10)

    def close(self) -> None:
        conn = self.__dict__.get("storage_conn")
        if conn is not None and not conn.closed:
            conn.close()


_state: WorkerState | None = None


def get() -> WorkerState:
    global _state
    if _state is None or _state.pid != os.getpid():
        _state = WorkerState()
    return _state


def reset() -> None:
    global _state
    if _state is not None and _state.pid == os.getpid():
        _state.close()
    _state = None
