"""The benchmarks' one output format: a table of (measure, result, note) rows."""
from __future__ import annotations


def print_table(rows: list[tuple[str, str, str]]) -> None:
    width = max(len("measure"), *(len(r[0]) for r in rows))
    value_width = max(len("result"), *(len(r[1]) for r in rows))
    print()
    print(f"{'measure'.ljust(width)} | {'result'.ljust(value_width)} | note")
    print(f"{'-' * width}-|-{'-' * value_width}-|-----")
    for name, value, note in rows:
        print(f"{name.ljust(width)} | {value.ljust(value_width)} | {note}")
