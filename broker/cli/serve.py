"""``sgb serve`` and ``sgb demo``: a broker instance, and the demo story played through one."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import TYPE_CHECKING

import structlog

from broker.config import Settings
from broker.errors import BrokerError

if TYPE_CHECKING:
    from broker.transport.natsserver import EmbeddedServer

log = structlog.get_logger("sgb.cli")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    serve = sub.add_parser("serve", parents=[common], help="run a broker instance until SIGINT/SIGTERM")
    serve.add_argument("--http", metavar="HOST:PORT",
                       help="serve the probes, the audit API (/api/v1) and the IG pages (/ig/) on this address")
    serve.set_defaults(func=cmd_serve, log_level_default="INFO")

    demo = sub.add_parser("demo", parents=[common], help="play the demo story on an embedded NATS")
    demo.set_defaults(func=cmd_demo)


async def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    """Run a broker until SIGTERM or SIGINT; the embedded NATS (if any) is supervised. Shutting down
    keeps the drain deadline even when NATS is gone: what is not done by then is left to JetStream
    (unacknowledged messages come back to another instance)."""
    from aiohttp import web

    from broker.pipeline.service import running_broker
    from broker.transport.connection import supervised_nats
    from broker.web.app import make_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stack = contextlib.AsyncExitStack()
    server = None
    try:
        server = await stack.enter_async_context(supervised_nats(settings))
        url = server.url if server is not None and server.url else settings.nats.url or ""
        broker = await stack.enter_async_context(running_broker(settings, url))
        loop.add_signal_handler(signal.SIGHUP, broker.reload)  # the registry, the broker's keys, the rulebook
        if args.http:
            from broker.web.app import audit_service

            service = await stack.enter_async_context(audit_service(broker))
            host, _, port = args.http.rpartition(":")
            runner = web.AppRunner(make_app(broker, service, nats_server=server), access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
            log.info("http listening", address=args.http)
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({stopped, broker.task}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if broker.task.done() and broker.task.exception() is not None:
            raise BrokerError(f"pipeline stopped: {broker.task.exception()}")
    finally:
        await _close_within(stack, settings.pipeline.drain_timeout, server)
    return 0


async def _close_within(stack: contextlib.AsyncExitStack, deadline: float, server: EmbeddedServer | None) -> None:
    """Unwind the broker within ``deadline`` seconds; past it, stop the embedded server now and go."""
    closing = asyncio.ensure_future(stack.aclose())
    done, _ = await asyncio.wait({closing}, timeout=deadline)
    if closing in done:
        closing.result()
        return
    log.error("shutdown took longer than the drain deadline; leaving the rest to JetStream", seconds=deadline)
    closing.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(closing, 1.0)
    if server is not None:
        await server.stop(adopted_too=True, grace=2.0)


async def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from broker.cli.demo import run_demo

    return await run_demo(settings)
