"""The drills' one table: a row per drill, printed at the end of the session and kept in run/drills-table.txt."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.load import Summary

COLUMNS = ("drill", "requests", "accepted", "stored", "lost", "doubled", "seconds to recover")
NOTE = ("accepted, stored, lost (answered 202, not stored) and doubled (stored twice) count readings; seconds to "
        "recover: from the part started again (make up) or the fault cleared until the ingress answers again and "
        "every reading accepted before is stored")


@dataclass(frozen=True)
class Row:
    drill: str
    requests: int
    accepted: int
    stored: int
    lost: int
    doubled: int
    recover_seconds: float | None

    @classmethod
    def of(cls, drill: str, summary: Summary, recover_seconds: float | None) -> "Row":
        return cls(drill, summary.requests, summary.accepted, summary.stored, summary.missing, summary.duplicated,
                   recover_seconds)

    def cells(self) -> tuple[str, ...]:
        seconds = "-" if self.recover_seconds is None else f"{self.recover_seconds:.1f}"
        return (self.drill, str(self.requests), str(self.accepted), str(self.stored), str(self.lost),
                str(self.doubled), seconds)


class DrillTable:
    def __init__(self, note: str = NOTE) -> None:
        self.rows: list[Row] = []
        self.note = note  # what the columns mean, printed under the table

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def render(self) -> str:
        cells = [COLUMNS, *(row.cells() for row in self.rows)]
        widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
        lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
                 for line in cells]
        return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:], self.note])

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render() + "\n")

    def report(self, terminalreporter, title: str, path: Path) -> None:
        """At the end of a session that ran drills: the table in its own section, and kept in `path`."""
        if not self.rows:
            return
        self.write(path)
        terminalreporter.section(title)
        terminalreporter.write_line(self.render())
        terminalreporter.write_line(f"(also in {path})")


TABLE = DrillTable()  # the session's: filled by the drills, printed by conftest.py's terminal summary
