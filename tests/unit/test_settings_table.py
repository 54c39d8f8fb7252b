"""docs/settings.md holds the table `visiontrack settings` prints, generated from config.SETTINGS; `make
settings-doc` rewrites it."""
from __future__ import annotations

from pathlib import Path

import pytest

from visiontrack import config, settings_table

PAGE = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def _table_in(text: str) -> str:
    _head, _start, rest = text.partition(settings_table.START)
    return rest.partition(settings_table.END)[0].lstrip("\n")


def test_the_settings_page_holds_the_generated_table():
    assert _table_in(PAGE.read_text()) == settings_table.markdown(), \
        "docs/settings.md's table is not the one config.SETTINGS gives: run `make settings-doc`"


def test_the_table_has_a_line_per_setting_and_names_all_parts_as_all():
    lines = settings_table.markdown().splitlines()[2:]
    assert [line.split("`")[1] for line in lines] == [s.name for s in config.SETTINGS]
    assert "| `VT_LOG_LEVEL` | `info` | all |" in settings_table.markdown()


def test_updating_writes_only_between_the_markers(tmp_path):
    page = tmp_path / "settings.md"
    page.write_text(f"# Settings\n\nintro\n{settings_table.START}\nold table\n{settings_table.END}\n\nafter\n")
    assert settings_table.update(page)
    text = page.read_text()
    assert text.startswith("# Settings\n\nintro\n") and text.endswith(f"{settings_table.END}\n\nafter\n")
    assert _table_in(text) == settings_table.markdown()
    assert not settings_table.update(page)


def test_a_page_without_markers_is_refused(tmp_path):
    page = tmp_path / "settings.md"
    page.write_text("# Settings\n")
    with pytest.raises(ValueError, match="settings:start"):
        settings_table.update(page)


def test_the_page_names_every_port_of_the_local_stack_with_its_default():
    from stack.local import PORT_SETTINGS

    text = " ".join(PAGE.read_text().split())  # the page wraps lines anywhere
    missing = [f"`{name}` ({default}" for name, default in PORT_SETTINGS.values() if f"`{name}` ({default}" not in text]
    assert not missing, f"docs/settings.md does not name these ports of `make up`: {missing}"
