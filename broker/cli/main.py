"""``sgb``: the command line for operators and agency integrators.

One module per command group (:mod:`broker.cli.keys`, :mod:`~broker.cli.serve` with the demo,
:mod:`~broker.cli.messages` for send and inbox, :mod:`~broker.cli.audit`,
:mod:`~broker.cli.policy`, :mod:`~broker.cli.adapter`, :mod:`~broker.cli.config`,
:mod:`~broker.cli.token`, :mod:`~broker.cli.witness`); this one puts the parser together, reads the settings once
(:meth:`broker.config.Settings.from_env`) and runs the command.

Exit codes: 0 success; 1 error (printed on stderr, never with personal data); 2 usage;
3 the broker rejected the message (``--wait``); 4 no outcome within the deadline; 5 the audit
log failed verification.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Final

from broker import logs
from broker.cli import adapter, audit, config, keys, messages, policy, serve, token, witness
from broker.config import Settings
from broker.errors import BrokerError

DEFAULT_LOG_LEVEL: Final = "WARNING"
_GROUPS: Final = (keys, config, adapter, token, serve, messages, audit, policy, witness)


def build_parser() -> argparse.ArgumentParser:
    # The common options are absent unless given (SUPPRESS), before the command or after it: a
    # default would be taken for "given", and a subcommand's default would undo what was given before it.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--home", help="data directory (default: $SGB_HOME, else ./.sgb)")
    common.add_argument("--config", metavar="FILE", help="a TOML settings file (default: $SGB_CONFIG); "
                        "SGB_* variables override it")
    common.add_argument("--log-level", help="log level on stderr (default WARNING; INFO for the services: "
                        "serve, adapter run, adapter dead-letters retry)")

    parser = argparse.ArgumentParser(prog="sgb", description="Safeguarding Broker", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    for group in _GROUPS:
        group.add_commands(sub, common)
    return parser


def log_level(args: argparse.Namespace) -> str:
    """``--log-level`` when given; else the command's own default (``log_level_default``), else WARNING."""
    given: str | None = getattr(args, "log_level", None)
    return given or getattr(args, "log_level_default", None) or DEFAULT_LOG_LEVEL


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        logs.configure(level=log_level(args))
    except KeyError:
        print(f"sgb: error: no log level {args.log_level!r} (DEBUG, INFO, WARNING, ERROR or CRITICAL)",
              file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env(home=getattr(args, "home", None), config_file=getattr(args, "config", None))
        code: int = asyncio.run(args.func(settings, args))
        return code
    except BrokerError as exc:
        print(f"sgb: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
