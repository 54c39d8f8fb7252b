"""`make dashboard-snapshot` (stack/snapshot.py) at toy size: both dashboards drawn from the live test
system into non-empty PNGs, one per panel and one per dashboard; a panel whose query fails is drawn as an
error (red), never skipped; and the settings default to what `make up` runs."""
from __future__ import annotations

import copy

import pytest

from stack import dashboards, snapshot

from .conftest import DASHBOARDS

OVERVIEW = dashboards.load(DASHBOARDS / "visiontrack-overview.json")
DEVICE = dashboards.load(DASHBOARDS / "visiontrack-device-telemetry.json")
PNG = b"\x89PNG\r\n\x1a\n"


def error_pixels(path) -> int:
    """How many pixels have the error panels' background colour (which no line or text is drawn in)."""
    import matplotlib.colors
    import matplotlib.image
    import numpy

    image = matplotlib.image.imread(path)[..., :3]
    wanted = numpy.array(matplotlib.colors.to_rgb(snapshot.ERROR_BACKGROUND))
    return int((numpy.abs(image - wanted).max(axis=-1) < 0.01).sum())


def assert_drawn(out, board: dict, drawn: list[snapshot.Drawn]) -> None:
    """A non-empty PNG for the dashboard and for every panel copy, and every panel of the board drawn."""
    uid = board["uid"]
    for path in [out / f"{uid}.png"] + [out / uid / f"{d.panel['id']}-{d.copy}.png" for d in drawn]:
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000, path
    panels = {p["id"] for p in dashboards.all_panels(board) if p["type"] != "row"}
    assert {d.panel["id"] for d in drawn} == panels


@pytest.mark.unit
def test_every_panel_should_be_drawn_as_an_error_when_nothing_answers(tmp_path):
    sources = dashboards.Sources(prometheus="http://127.0.0.1:9", postgres="postgresql://nobody@127.0.0.1:9/none",
                                 timeout=3)
    for board in (OVERVIEW, DEVICE):
        drawn = snapshot.snapshot(board, sources, tmp_path)
        assert_drawn(tmp_path, board, drawn)
        assert {d.status for d in drawn} == {"error"}
        assert all(error_pixels(tmp_path / board["uid"] / f"{d.panel['id']}-{d.copy}.png") > 5000 for d in drawn)


@pytest.mark.unit
def test_the_settings_should_default_to_make_up_and_follow_the_environment(tmp_path):
    default = snapshot.settings({})
    assert default["sources"].prometheus == "http://127.0.0.1:19090"
    assert default["sources"].postgres == "postgresql://visiontrack@127.0.0.1:15432/visiontrack"
    assert default["sources"].prometheus_interval == "5s" and default["window"] is None and default["given"] == {}
    assert default["out"].parts[-2:] == ("run", "dashboards")
    given = snapshot.settings({"DASHBOARD_PROMETHEUS_URL": "http://prom:9090", "DASHBOARD_DATABASE_URL": "postgresql://x/y",
                               "DASHBOARD_SCRAPE_INTERVAL": "30s", "DASHBOARD_WINDOW": "30m", "DASHBOARD_OUT": str(tmp_path),
                               "DASHBOARD_VARIABLES": "device=3 metric=temperature,humidity namespace=All"})
    assert (given["sources"].prometheus, given["sources"].postgres, given["sources"].prometheus_interval) == (
        "http://prom:9090", "postgresql://x/y", "30s")
    assert given["window"].seconds == 1800 and given["out"] == tmp_path
    assert given["given"] == {"device": "3", "metric": ["temperature", "humidity"], "namespace": "All"}
    with pytest.raises(ValueError):
        snapshot.parse_variables("device")


@pytest.mark.unit
def test_values_should_be_shown_in_the_panels_units():
    assert [snapshot.format_value(v, u) for v, u in [(0.0042, "s"), (3 * 2**20, "bytes"), (0.125, "percentunit"),
                                                     (12500, "short"), (float("nan"), "short"), (None, "s")]] == [
        "4.2 ms", "3 MiB", "12.5%", "12.5K", "-", "-"]


@pytest.mark.integration
def test_both_dashboards_should_be_drawn_from_the_live_system(monitored, traffic, tmp_path):
    window = dashboards.TimeRange.last("10m")
    dashboards.run_until_data(OVERVIEW, monitored.sources, window=window, timeout=30)  # scraped by now
    given = {"device": str(traffic.devices[0]["id"])}
    for board in (OVERVIEW, DEVICE):
        drawn = snapshot.snapshot(board, monitored.sources, tmp_path, given, window)
        assert_drawn(tmp_path, board, drawn)
        assert not [f"{d.title}: {d.status} {d.errors}" for d in drawn if d.status != "ok"]
        assert error_pixels(tmp_path / f"{board['uid']}.png") < 500  # a few antialiased line pixels at most
    repeated = [d.title for d in drawn if d.panel.get("repeat")]
    assert repeated == ["humidity: avg, min and max", "temperature: avg, min and max"]


@pytest.mark.integration
def test_a_panel_whose_query_fails_should_be_drawn_as_an_error(monitored, traffic, tmp_path):
    board = copy.deepcopy(OVERVIEW)
    broken = next(p for p in board["panels"] if p["title"] == "Duplicates/s")
    broken["targets"][0]["expr"] = "sum(rate(visiontrack_aggregator_readings_total[$__rate_interval]"
    drawn = snapshot.snapshot(board, monitored.sources, tmp_path, window=dashboards.TimeRange.last("10m"))
    assert_drawn(tmp_path, board, drawn)
    failed, = [d for d in drawn if d.status == "error"]
    assert failed.title == "Duplicates/s" and "parse error" in failed.errors[0]
    assert error_pixels(tmp_path / board["uid"] / f"{failed.panel['id']}-0.png") > 5000
    assert error_pixels(tmp_path / f"{board['uid']}.png") > 5000
