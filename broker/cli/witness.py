"""``sgb witness``: a C2SP tlog-witness for the broker's (or any) transparency logs
(:mod:`broker.witness`; docs/transparency.md "Witnesses")."""

from __future__ import annotations

import argparse
import asyncio
import signal

from broker.config import Settings


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    witness = sub.add_parser("witness", parents=[common], help="a transparency-log witness (C2SP tlog-witness)")
    witness_sub = witness.add_subparsers(dest="witness_command", required=True)
    init = witness_sub.add_parser("init", parents=[common], help="create the witness's cosigning key (mode 0600)")
    init.add_argument("--name", required=True, help="the witness's name, e.g. witness.example.org/sgb (in its key)")
    init.add_argument("--force", action="store_true", help="replace an existing key (logs must configure the new one)")
    init.set_defaults(func=cmd_witness_init)
    key = witness_sub.add_parser("key", parents=[common],
                                 help="print the witness's verifier key (type 0x04), for the logs to configure")
    key.set_defaults(func=cmd_witness_key)
    serve = witness_sub.add_parser("serve", parents=[common], help="serve POST /add-checkpoint until SIGTERM")
    serve.add_argument("--http", metavar="HOST:PORT", help="where to listen (default [witness] http)")
    serve.set_defaults(func=cmd_witness_serve, log_level_default="INFO")


async def cmd_witness_init(settings: Settings, args: argparse.Namespace) -> int:
    from broker.witness.keys import create_key, key_path

    path = key_path(settings)
    cosigner = create_key(path, args.name, force=args.force)
    print(f"witness key (mode 0600): {path}")
    print(cosigner.key)
    return 0


async def cmd_witness_key(settings: Settings, args: argparse.Namespace) -> int:
    from broker.witness.keys import key_path, load_key

    print(load_key(key_path(settings)).key)
    return 0


async def cmd_witness_serve(settings: Settings, args: argparse.Namespace) -> int:
    from broker.errors import ConfigError
    from broker.witness.service import running_witness, serving

    host, _, port = (args.http or settings.witness.http).rpartition(":")
    if not port.isdigit():
        raise ConfigError("--http is HOST:PORT")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_witness(settings) as witness, serving(witness, host or "127.0.0.1", int(port),
                                                             deadline=settings.witness.request_deadline) as bound:
        print(f"witness {witness.cosigner.key.name} listening on {host or '127.0.0.1'}:{bound}", flush=True)
        await stop.wait()
    return 0
