"""The ingestor's per-device rate limits in the chart: the values reach the Deployment as the variables the
ingestor reads, and the replica count each pod divides the limit by follows replicaCount, the HPA's
minReplicas when it scales, or an explicit rateLimit.replicas."""
from __future__ import annotations

import pytest

from .helpers import CHART, MODES, NAMESPACE, RELEASE, container_env, find, load_yaml_all, run

FULL = f"{RELEASE}-visiontrack"
VARIABLES = ("VT_RATE_LIMIT", "VT_RATE_LIMIT_BURST", "VT_BACKFILL_RATE_LIMIT", "VT_BACKFILL_RATE_LIMIT_BURST",
             "VT_BACKFILL_AFTER_SECONDS", "VT_RATE_LIMIT_REPLICAS")


def _ingestor_env(helm: str, *args: str) -> dict[str, str]:
    text = run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args]).stdout
    objs = [o for o in load_yaml_all(text) if isinstance(o, dict)]
    deployment = find(objs, "Deployment", f"{FULL}-ingestor")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {k: v["value"] for k, v in container_env(objs, container).items() if k in VARIABLES}


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_should_give_the_ingestor_its_rate_limits(render, mode, rust_settings):
    objs = render(mode)
    container = find(objs, "Deployment", f"{FULL}-ingestor")["spec"]["template"]["spec"]["containers"][0]
    env = container_env(objs, container)
    for name in VARIABLES:
        assert name in rust_settings, f"{name} is not a setting of the ingestor"
        assert env[name]["source"] == "env" and int(env[name]["value"]) >= 0, name


def test_the_defaults_should_match_the_ingestor_own_and_share_over_the_hpa_floor(helm, values, rust_settings):
    env = _ingestor_env(helm)
    for name in VARIABLES[:-1]:
        assert env[name] == rust_settings[name].replace("_", ""), f"{name}: chart {env[name]}, ingestor {rust_settings[name]}"
    assert values["ingestor"]["autoscaling"]["enabled"]
    assert env["VT_RATE_LIMIT_REPLICAS"] == str(values["ingestor"]["autoscaling"]["minReplicas"])


def test_the_share_should_follow_replica_count_without_autoscaling_or_the_value_given(helm):
    env = _ingestor_env(helm, "--set", "ingestor.autoscaling.enabled=false", "--set", "ingestor.replicaCount=5")
    assert env["VT_RATE_LIMIT_REPLICAS"] == "5"
    env = _ingestor_env(helm, "--set", "ingestor.autoscaling.minReplicas=3")
    assert env["VT_RATE_LIMIT_REPLICAS"] == "3"
    env = _ingestor_env(helm, "--set", "ingestor.rateLimit.replicas=7")
    assert env["VT_RATE_LIMIT_REPLICAS"] == "7"


def test_limits_set_in_values_should_reach_the_pod_and_zero_should_turn_them_off(helm):
    env = _ingestor_env(helm, "--set", "ingestor.rateLimit.readingsPerSecond=0",
                        "--set", "ingestor.rateLimit.backfill.readingsPerSecond=250",
                        "--set", "ingestor.rateLimit.backfill.afterSeconds=60")
    assert (env["VT_RATE_LIMIT"], env["VT_BACKFILL_RATE_LIMIT"], env["VT_BACKFILL_AFTER_SECONDS"]) == ("0", "250", "60")


@pytest.mark.parametrize("bad", ["ingestor.rateLimit.readingsPerSecond=-1", "ingestor.rateLimit.burst=0",
                                 "ingestor.rateLimit.backfill.afterSeconds=0", "ingestor.rateLimit.replicas=-1",
                                 "ingestor.rateLimit.perDevice=1"])
def test_the_schema_should_refuse_a_bad_limit(helm, bad):
    proc = run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--set", bad], check=False)
    assert proc.returncode != 0 and "rateLimit" in proc.stderr, proc.stderr[-2000:]
