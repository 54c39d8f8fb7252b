"""The `visiontrack` command's arguments, and which migrations a schema still lacks (no database here)."""
from __future__ import annotations

import pytest

from visiontrack import cli, migrate


@pytest.mark.parametrize("raw", ["-1", "nan", "inf", "soon", "", "1e999"])
def test_a_bad_wait_is_refused_naming_the_option(raw, capsys):
    for argv in (["wait-for-schema", "--timeout", raw], ["migrate", "--wait-for-postgres", raw]):
        with pytest.raises(SystemExit) as exit_:
            cli.parser().parse_args(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert f"{argv[1]}: must be a number of seconds >= 0, got {raw!r}" in err, err


def test_waits_take_seconds_and_default_to_what_the_chart_relies_on():
    assert cli.parser().parse_args(["wait-for-schema", "--timeout", "0"]).timeout == 0
    assert cli.parser().parse_args(["wait-for-schema", "--timeout", "2.5"]).timeout == 2.5
    assert cli.parser().parse_args(["wait-for-schema"]).timeout == cli.DEFAULT_WAIT_SECONDS
    assert cli.parser().parse_args(["migrate"]).wait_for_postgres == 0  # local runs fail at once, as before


def _applied(migrations) -> dict[int, str]:
    return {m.version: m.checksum for m in migrations}


def test_missing_should_list_the_shipped_migrations_not_applied_in_order():
    shipped = migrate.available()
    assert [m.version for m in migrate.missing({}, shipped)] == [m.version for m in shipped]
    assert migrate.missing(_applied(shipped), shipped) == []
    assert migrate.missing(_applied(shipped[:-1]), shipped) == [shipped[-1]]


def test_a_newer_schema_should_lack_nothing():
    """A rollback runs an older image against the schema of a newer one."""
    shipped = migrate.available()
    assert migrate.missing({**_applied(shipped), 9999: "from a newer image"}, shipped) == []


def test_a_changed_migration_should_be_refused_by_name():
    shipped = migrate.available()
    applied = {**_applied(shipped), shipped[0].version: "0" * 64}
    with pytest.raises(migrate.MigrationError, match=f"migration {shipped[0].label} changed after it was applied"):
        migrate.missing(applied, shipped)
