"""``sgb adapter``: an agency's adapter as a service, and its dead letters
(:mod:`adapters.runtime.commands`)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import structlog

from broker.config import Settings
from broker.errors import BrokerError
from broker.transport.connection import nats_location

log = structlog.get_logger("sgb.cli")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    adapter = sub.add_parser("adapter", parents=[common], help="an agency's adapter service")
    adapter_sub = adapter.add_subparsers(dest="adapter_command", required=True)
    arun = adapter_sub.add_parser("run", parents=[common], help="hand deliveries to the agency system until SIGTERM")
    arun.add_argument("--as", dest="agency", required=True, help="the agency id")
    arun.add_argument("--http", metavar="HOST:PORT", help="serve /healthz, /readyz and /metrics here")
    arun.add_argument("--webhook", metavar="URL", help="the agency system's inbound URL")
    arun.add_argument("--webhook-secret-file", metavar="FILE", help="the HMAC key shared with the agency system")
    arun.add_argument("--drop-folder", metavar="DIR", help="write each delivery here atomically instead")
    arun.add_argument("--inbound-secret-file", metavar="FILE",
                      help="take the agency system's records at POST /records/FORMAT, signed with this HMAC key")
    arun.add_argument("--inbound-folder", metavar="DIR", help="take the agency system's exports from DIR/FORMAT/")
    arun.add_argument("--local-authority", metavar="AGENCY", help="police: the local authority that receives referrals")
    arun.set_defaults(func=cmd_adapter_run, log_level_default="INFO")
    from adapters.runtime.commands import add_dead_letter_commands  # light: its commands import what they need

    add_dead_letter_commands(adapter_sub, common)


async def cmd_adapter_run(settings: Settings, args: argparse.Namespace) -> int:
    from aiohttp import web

    from adapters.runtime.service import make_app, reload_keys, running_adapter
    from adapters.runtime.settings import AdapterSettings

    adapter = AdapterSettings.load(
        settings, args.agency, webhook=args.webhook, webhook_secret_file=args.webhook_secret_file,
        drop_folder=args.drop_folder, inbound_secret_file=args.inbound_secret_file,
        inbound_folder=args.inbound_folder, local_authority=args.local_authority)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with nats_location(settings) as url, running_adapter(settings, adapter, url) as running:
        def reload() -> None:
            try:
                reload_keys(running, settings)
            except (BrokerError, OSError) as exc:
                log.error("key reload refused; the old keys stay in use", error=str(exc))

        loop.add_signal_handler(signal.SIGHUP, reload)
        runner: web.AppRunner | None = None
        if args.http:
            host, _, port = args.http.rpartition(":")
            runner = web.AppRunner(make_app(running), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
        try:
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({stopped, *running.tasks}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
        finally:
            if runner is not None:
                await runner.cleanup()
    if not stop.is_set():  # a loop ended by itself: exit non-zero so the service manager restarts us
        print("sgb: error: an adapter loop stopped unexpectedly", file=sys.stderr)
        return 1
    return 0
