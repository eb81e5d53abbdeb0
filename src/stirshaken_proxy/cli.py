"""The command line: ``stirshaken-proxy run|check-config|...``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .config import ConfigError, load_config

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_CONFIG = 3


def _err(text: str) -> None:
    sys.stderr.write(f"stirshaken-proxy: {text}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stirshaken-proxy",
                                     description="STIR/SHAKEN signing and verification proxy")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy in the foreground")
    run.add_argument("--config", required=True, help="TOML configuration file")
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("--config", required=True)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from .app import run_app
    from .io.logs import setup_logging

    config = load_config(args.config)
    setup_logging(config.log.level, config.log.format)
    run_app(config)
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    load_config(args.config)
    sys.stdout.write(f"{args.config}: ok\n")
    return EXIT_OK


COMMANDS = {"run": cmd_run, "check-config": cmd_check_config}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
