"""Settings: defaults, parsing, and failing at start with the variable's name."""
from __future__ import annotations

import pytest

from visiontrack import config


def test_defaults_are_safe_local_values():
    cfg = config.load({})
    assert cfg.stream_key == "vt:telemetry" and cfg.stream_shards == 1
    assert cfg.max_body_bytes == 1_048_576 and cfg.max_readings == 10_000
    assert cfg.max_future_skew == 300 and cfg.retention_days == 30
    assert cfg.admin_tokens == () and cfg.stream_keys == ["vt:telemetry"]


def test_an_empty_variable_takes_the_default():
    """As in the ingestor (`VT_X=` in an env file); a value of only spaces is still refused."""
    cfg = config.load({"VT_MAX_READINGS": "", "VT_STREAM_KEY": "", "VT_LOG_FORMAT": ""})
    assert cfg.max_readings == 10_000 and cfg.stream_key == "vt:telemetry" and cfg.log_format == "text"
    with pytest.raises(config.ConfigError, match="VT_STREAM_KEY must not be empty"):
        config.load({"VT_STREAM_KEY": " "})


def test_sharded_stream_keys_use_cluster_hash_tags():
    cfg = config.load({"VT_STREAM_SHARDS": "3"})
    assert cfg.stream_keys == ["vt:telemetry:{0}", "vt:telemetry:{1}", "vt:telemetry:{2}"]


@pytest.mark.parametrize("name,value,fragment", [
    ("VT_STREAM_SHARDS", "zero", "must be an integer"),
    ("VT_STREAM_SHARDS", "0", "must be >= 1"),
    ("VT_LOG_FORMAT", "xml", "must be one of text, json"),
    ("VT_ADMIN_TOKENS", "short", "at least 16 characters"),
    ("DATABASE_URL", "mysql://x", "must be a URL starting with postgresql://"),
    ("VT_WORKER_CONCURRENCY", "65", "must be <= 64"),
])
def test_a_bad_value_stops_start_naming_the_variable(name, value, fragment):
    with pytest.raises(config.ConfigError) as err:
        config.load({name: value})
    assert name in str(err.value) and fragment in str(err.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(config.ConfigError) as err:
        config.load({"VT_HTTP_WORKERS": "many", "VT_MAX_READINGS": "-1"})
    assert "VT_HTTP_WORKERS" in str(err.value) and "VT_MAX_READINGS" in str(err.value)


def test_token_lists_are_trimmed():
    cfg = config.load({"VT_ADMIN_TOKENS": " aaaaaaaaaaaaaaaa , bbbbbbbbbbbbbbbb,"})
    assert cfg.admin_tokens == ("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb")


def test_every_setting_is_named_once_and_documented():
    names = [s.name for s in config.SETTINGS]
    assert len(names) == len(set(names))
    assert all(s.help and s.parts for s in config.SETTINGS)
    assert all(s.name.startswith("VT_") or s.name in ("DATABASE_URL", "REDIS_URL") for s in config.SETTINGS)


def test_the_settings_page_documents_every_setting():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "settings.md").read_text()
    missing = [s.name for s in config.SETTINGS if f"`{s.name}`" not in page]
    assert not missing, f"docs/settings.md's table lacks {missing}"


BAD_NESTING = [
    {"VT_RETENTION_DAYS": "100"},  # past the 1-minute rollups' 90
    {"VT_ROLLUP_1M_RETENTION_DAYS": "10"},  # under the raw rows' 30
    {"VT_ROLLUP_1M_RETENTION_DAYS": "800"},  # past the 1-hour rollups' 730
]


@pytest.mark.parametrize("env", BAD_NESTING)
def test_rollups_must_outlive_what_they_sum(env):
    cfg = config.load(env)  # each value is fine alone; only the aggregator, which applies them, checks them together
    with pytest.raises(config.ConfigError, match="rollups outlive what they sum") as err:
        config.check_retention(cfg)
    assert all(name in str(err.value) for name in ("VT_RETENTION_DAYS", "VT_ROLLUP_1M_RETENTION_DAYS",
                                                    "VT_ROLLUP_1H_RETENTION_DAYS"))


def test_retention_settings_may_be_equal():
    cfg = config.load({"VT_RETENTION_DAYS": "90", "VT_ROLLUP_1M_RETENTION_DAYS": "90", "VT_ROLLUP_1H_RETENTION_DAYS": "90"})
    config.check_retention(cfg)
    assert cfg.rollup_1h_retention_days == 90
    config.check_retention(config.load({}))  # the defaults nest


@pytest.mark.parametrize("env", BAD_NESTING)
def test_the_registry_and_query_start_whatever_the_rollup_retention(env):
    """The rollup retention settings are the aggregator's alone: a registry or query given the same
    environment (one ConfigMap, say) loads its configuration."""
    cfg = config.load({**env, "VT_ADMIN_TOKENS": "a" * 16})
    assert cfg.admin_tokens == ("a" * 16,)
    retention = {"VT_ROLLUP_1M_RETENTION_DAYS", "VT_ROLLUP_1H_RETENTION_DAYS"}
    assert not any("registry" in s.parts or "query" in s.parts for s in config.SETTINGS if s.name in retention)


@pytest.mark.parametrize("env,starts", [({"VT_RETENTION_DAYS": "100"}, False), ({}, True)],
                         ids=["bad-nesting", "defaults"])
def test_the_aggregator_refuses_to_start_over_bad_retention_nesting(env, starts):
    """The Celery app (worker and beat load the same module) stops at start naming the variables."""
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not (k.startswith("VT_") or k in ("DATABASE_URL", "REDIS_URL"))}
    proc = subprocess.run([sys.executable, "-c", "import aggregator.celery_app"], env={**clean, **env},
                          capture_output=True, text=True, timeout=120)
    if starts:
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        assert proc.returncode != 0
        assert "ConfigError" in proc.stderr and "VT_RETENTION_DAYS (100)" in proc.stderr
        assert "VT_ROLLUP_1M_RETENTION_DAYS (90)" in proc.stderr


def test_scale_out_settings_default_to_one_redis_and_one_postgres():
    cfg = config.load({})
    assert cfg.redis_cluster is False and cfg.stream_wait_replicas == 0 and cfg.stream_wait_timeout_ms == 500
    assert config.broker_url(cfg) == cfg.redis_url
    assert config.read_database_url(cfg) == cfg.database_url


def test_broker_and_read_server_are_taken_when_given():
    cfg = config.load({"VT_BROKER_URL": "redis://broker:6379/1",
                       "VT_DATABASE_READ_URL": "postgresql://u@standby:5432/db"})
    assert config.broker_url(cfg) == "redis://broker:6379/1"
    assert config.read_database_url(cfg) == "postgresql://u@standby:5432/db"


def test_a_cluster_needs_its_own_broker_named():
    cfg = config.load({"VT_REDIS_CLUSTER": "true"})  # loads: only the aggregator needs a broker
    with pytest.raises(config.ConfigError, match="VT_BROKER_URL is required with VT_REDIS_CLUSTER=true"):
        config.broker_url(cfg)
    assert config.broker_url(cfg.replace(broker_url="redis://broker:6379/0")) == "redis://broker:6379/0"


def test_the_aggregator_refuses_to_start_on_a_cluster_without_a_broker():
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not (k.startswith("VT_") or k in ("DATABASE_URL", "REDIS_URL"))}
    proc = subprocess.run([sys.executable, "-c", "import aggregator.celery_app"],
                          env={**clean, "VT_REDIS_CLUSTER": "true"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "ConfigError" in proc.stderr and "VT_BROKER_URL" in proc.stderr


@pytest.mark.parametrize("url", [
    "postgresql://u@127.0.0.1:5432,127.0.0.1:5433/db?target_session_attrs=read-write",
    "postgresql://u:p%40ss@primary:5432,standby:5432/db?target_session_attrs=read-write&connect_timeout=2",
])
def test_multi_host_postgres_urls_are_accepted(url):
    cfg = config.load({"DATABASE_URL": url, "VT_DATABASE_READ_URL": url})
    assert cfg.database_url == url and cfg.database_read_url == url


@pytest.mark.parametrize("name,value,fragment", [
    ("VT_STREAM_WAIT_REPLICAS", "17", "must be <= 16"),
    ("VT_STREAM_WAIT_REPLICAS", "-1", "must be >= 0"),
    ("VT_STREAM_WAIT_TIMEOUT_MS", "0", "must be >= 1"),
    ("VT_STREAM_WAIT_TIMEOUT_MS", "60001", "must be <= 60000"),
    ("VT_REDIS_CLUSTER", "maybe", "must be true or false"),
    ("VT_BROKER_URL", "amqp://rabbit", "must be a URL starting with redis://"),
    ("VT_DATABASE_READ_URL", "mysql://x", "must be a URL starting with postgresql://"),
])
def test_bad_scale_out_values_stop_start_naming_the_variable(name, value, fragment):
    with pytest.raises(config.ConfigError) as err:
        config.load({name: value})
    assert name in str(err.value) and fragment in str(err.value)
