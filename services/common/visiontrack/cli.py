"""`visiontrack`: the operator's command for what is not a service (migrations, settings)."""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys

from . import config as config_module
from . import logs

log = logging.getLogger("visiontrack.migrate")
DEFAULT_WAIT_SECONDS = 600.0


def _seconds(raw: str) -> float:
    """An argparse type: a finite number of seconds, 0 or more."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {raw!r}")
    return value


def _cmd_migrate(args: argparse.Namespace) -> int:
    from .migrate import migrate

    cfg = config_module.load()
    logs.configure(cfg.log_level, cfg.log_format, "migrate")
    applied = migrate(cfg.database_url, cfg.partitions_ahead_days, wait_seconds=args.wait_for_postgres)
    log.info("schema up to date (%s)", f"applied {', '.join(f'{v:04d}' for v in applied)}" if applied else "nothing to do")
    return 0


def _cmd_wait_for_schema(args: argparse.Namespace) -> int:
    from .migrate import wait_for_schema

    cfg = config_module.load()
    logs.configure(cfg.log_level, cfg.log_format, "wait-for-schema")
    latest = wait_for_schema(cfg.database_url, args.timeout)
    log.info("schema ready (this image's migrations up to %s are applied)", latest.label if latest else "none")
    return 0


def _cmd_settings(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import settings_table

    if args.update:
        changed = settings_table.update(Path(args.update))
        print(f"{args.update}: {'table updated' if changed else 'table already up to date'}")
    elif args.format == "json":
        json.dump(settings_table.rows(), sys.stdout, indent=2)
        print()
    else:
        print(settings_table.markdown(), end="")
    return 0


COMMANDS = {"migrate": _cmd_migrate, "wait-for-schema": _cmd_wait_for_schema, "settings": _cmd_settings}


def parser() -> argparse.ArgumentParser:
    out = argparse.ArgumentParser(prog="visiontrack", description=__doc__)
    sub = out.add_subparsers(dest="command", required=True)
    p = sub.add_parser("migrate", help="apply database migrations (safe to run twice and concurrently)")
    p.add_argument("--wait-for-postgres", type=_seconds, default=0.0, metavar="SECONDS",
                   help="keep trying to connect this long first (default: 0, fail at once)")
    p = sub.add_parser("wait-for-schema", help="wait until every migration this installation ships is applied "
                                               "(a newer schema is fine); exit 1 on timeout")
    p.add_argument("--timeout", type=_seconds, default=DEFAULT_WAIT_SECONDS, metavar="SECONDS",
                   help=f"give up after this long (default: {DEFAULT_WAIT_SECONDS:g}; 0: look once)")
    p = sub.add_parser("settings", help="list every setting the Python parts read")
    p.add_argument("--format", choices=("markdown", "json"), default="markdown")
    p.add_argument("--update", metavar="FILE", help="write the table into FILE between its "
                                                    "<!-- settings:start --> and <!-- settings:end --> lines")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import psycopg2

    from .migrate import MigrationError, SchemaTimeout, one_line

    try:
        return COMMANDS[args.command](args)
    except config_module.ConfigError as exc:
        print(f"visiontrack: {exc}", file=sys.stderr)
        return 2
    except (MigrationError, SchemaTimeout) as exc:
        print(f"visiontrack: {exc}", file=sys.stderr)
        return 1
    except psycopg2.Error as exc:  # the migration's own connection or SQL failed
        print(f"visiontrack: postgres: {one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
