"""The table of every setting, generated from `config.SETTINGS`: printed by `visiontrack settings`, and kept in
docs/settings.md between the markers below (`visiontrack settings --update docs/settings.md`, `make settings-doc`;
tests/unit/test_settings_table.py fails while the file differs)."""
from __future__ import annotations

from pathlib import Path

from . import config

START = "<!-- settings:start -->"
END = "<!-- settings:end -->"
_HEADER = ["| variable | default | used by | meaning |", "| --- | --- | --- | --- |"]


def rows() -> list[dict]:
    return [{"name": s.name, "default": s.default, "required": s.required, "parts": sorted(s.parts),
             "secret": s.secret, "help": s.help} for s in config.SETTINGS]


def _default(row: dict) -> str:
    return "(required)" if row["required"] else f"`{row['default']}`" if row["default"] else "(empty)"


def _users(row: dict) -> str:
    return "all" if set(row["parts"]) == config.ALL_PARTS else ", ".join(row["parts"])


def markdown() -> str:
    """The table in Markdown, one line per setting."""
    lines = [f"| `{r['name']}` | {_default(r)} | {_users(r)} | {r['help']} |" for r in rows()]
    return "\n".join(_HEADER + lines) + "\n"


def with_table(text: str) -> str:
    """`text` with the table between its markers (ValueError when they are missing)."""
    head, start, rest = text.partition(START)
    _old, end, tail = rest.partition(END)
    if not start or not end:
        raise ValueError(f"no {START} ... {END} block")
    return f"{head}{START}\n{markdown()}{END}{tail}"


def update(path: Path) -> bool:
    """Write the table into `path` between its markers; whether the file changed."""
    text = path.read_text()
    new = with_table(text)
    if new != text:
        path.write_text(new)
    return new != text
