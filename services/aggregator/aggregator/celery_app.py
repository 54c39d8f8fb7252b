"""The Celery app: `celery --app aggregator.celery_app worker|beat`.

The stream and Postgres, not Celery, carry durability: every task is short and idempotent, so a lost or
repeated task message costs nothing but a little time (a lost webhook call is enqueued again from the
outbox by `sweep_webhooks`; a repeated one reaches the receiver, which can drop it).
"""
from __future__ import annotations

import gc
import logging

from celery import Celery, signals

from visiontrack import config as config_module
from visiontrack import logs

from . import metrics, state

config = config_module.load()
# The aggregator drops the expired partitions, so it alone checks that the retentions nest: worker and beat
# both load this module, and a bad nesting stops either at start with the variables named.
config_module.check_retention(config)
# Celery's broker: kombu's Redis transport cannot use a Redis Cluster, so with one VT_BROKER_URL names a
# plain Redis (a missing one stops worker and beat here, naming it); otherwise REDIS_URL serves as well.
broker_url = config_module.broker_url(config)
# What /readyz checks: the broker on its own only when it is not the stream's Redis.
_BROKER = () if broker_url == config.redis_url and not config.redis_cluster else ("broker",)

app = Celery("aggregator", include=["aggregator.tasks.ingest", "aggregator.tasks.maintenance",
                                      "aggregator.tasks.alerts", "aggregator.tasks.retention"])
app.conf.update(
    broker_url=broker_url,
    broker_connection_retry_on_startup=True,
    # Redis redelivers an unacked task after visibility_timeout; tasks are short, so keep it short too.
    broker_transport_options={"visibility_timeout": 300},
    result_backend=None,
    task_ignore_result=True,
    task_default_queue="visiontrack",
    task_time_limit=120,
    task_soft_time_limit=90,
    worker_concurrency=config.worker_concurrency,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
    beat_schedule_filename=config.beat_schedule_file,
    timezone="UTC",
)


def _schedule() -> dict:
    drain_every = config.drain_interval_seconds
    schedule = {
        f"drain-{i}": {"task": "aggregator.drain", "schedule": drain_every, "args": (key,),
                       "options": {"expires": max(drain_every * 2, 2)}}
        for i, key in enumerate(config.stream_keys)
    }
    schedule.update({
        "trim-streams": {"task": "aggregator.trim_streams", "schedule": config.trim_interval_seconds,
                         "options": {"expires": config.trim_interval_seconds * 2}},
        "ensure-partitions": {"task": "aggregator.ensure_partitions", "schedule": 600.0},
        # Repairs queued up during an outage are stale by the time a worker runs them: one is enough.
        "repair-token-index": {"task": "aggregator.repair_token_index",
                               "schedule": config.token_index_repair_seconds,
                               "options": {"expires": config.token_index_repair_seconds}},
        "purge-deleted-devices": {"task": "aggregator.purge_deleted_devices", "schedule": 30.0},
        "compact-device-stats": {"task": "aggregator.compact_device_stats", "schedule": 600.0},
        "evaluate-alerts": {"task": "aggregator.evaluate_alerts", "schedule": config.alert_eval_seconds,
                            "options": {"expires": max(config.alert_eval_seconds * 2, 2)}},
        "apply-retention": {"task": "aggregator.apply_retention", "schedule": config.retention_interval_seconds},
        "sweep-webhooks": {"task": "aggregator.sweep_webhooks", "schedule": config.webhook_sweep_seconds,
                           "options": {"expires": max(config.webhook_sweep_seconds * 2, 2)}},
    })
    return schedule


app.conf.beat_schedule = _schedule()


@signals.setup_logging.connect
def _logging(**_):
    logs.configure(config.log_level, config.log_format, "aggregator")
    # A line per task received/succeeded/scheduled, every second, buries what matters.
    for chatty in ("celery.app.trace", "celery.worker.strategy", "celery.beat"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))


@signals.worker_init.connect
def _serve_metrics(sender=None, **_):
    if sender is not None and getattr(sender, "hostname", None):
        state.NODE_NAME["value"] = sender.hostname  # inherited by the pool's children
    metrics.serve(config.metrics_port, config, dependencies=("postgres", "redis", *_BROKER))


@signals.beat_init.connect
def _serve_beat_metrics(**_):
    metrics.serve(config.metrics_port, config, dependencies=_BROKER or ("redis",))  # beat needs only the broker


# Allocations between two young-generation collections. A batch keeps its entries' objects alive until it is
# stored, so at the default (700) each one was walked by collection after collection: a fifth of a worker's
# CPU with one reading a request. Batch objects hold no cycles; they are freed by their counts.
YOUNG_COLLECTION_EVERY = 50_000


@signals.worker_process_init.connect
def _fresh_connections(**_):
    state.reset()  # nothing opened by the parent may be used by a child
    # What the process holds from its start (Celery, the modules) lives as long as it: out of the collector's
    # walks for good. Then fewer, larger young collections.
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, *gc.get_threshold()[1:])


@signals.worker_process_shutdown.connect
def _child_exit(pid=None, **_):
    state.reset()
    if pid:
        metrics.process_exited(pid)


logging.getLogger("aggregator").debug("celery app ready with %d stream shard(s)", len(config.stream_keys))
