"""`visiontrack`: the operator's command for what is not a service (migrations, settings)."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from . import config as config_module
from . import logs


def _cmd_migrate(args: argparse.Namespace) -> int:
    from .migrate import migrate

    cfg = config_module.load()
    logs.configure(cfg.log_level, cfg.log_format, "migrate")
    applied = migrate(cfg.database_url, cfg.partitions_ahead_days)
    logging.getLogger("visiontrack.migrate").info(
        "schema up to date (%s)", f"applied {', '.join(f'{v:04d}' for v in applied)}" if applied else "nothing to do")
    return 0


def _cmd_settings(args: argparse.Namespace) -> int:
    rows = [{"name": s.name, "default": s.default, "required": s.required, "parts": sorted(s.parts),
             "secret": s.secret, "help": s.help} for s in config_module.SETTINGS]
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=2)
        print()
    else:
        print("| variable | default | used by | meaning |")
        print("| --- | --- | --- | --- |")
        for r in rows:
            default = "(required)" if r["required"] else f"`{r['default']}`" if r["default"] else "(empty)"
            print(f"| `{r['name']}` | {default} | {', '.join(r['parts'])} | {r['help']} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="visiontrack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply database migrations (safe to run twice and concurrently)")
    p = sub.add_parser("settings", help="list every setting the Python parts read")
    p.add_argument("--format", choices=("markdown", "json"), default="markdown")
    args = parser.parse_args(argv)
    try:
        return {"migrate": _cmd_migrate, "settings": _cmd_settings}[args.command](args)
    except config_module.ConfigError as exc:
        print(f"visiontrack: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
