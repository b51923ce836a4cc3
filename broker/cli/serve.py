"""``sgb serve`` and ``sgb demo``: a broker instance, and the demo story played through one."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from broker.config import Settings
from broker.errors import BrokerError

if TYPE_CHECKING:
    from broker.pipeline.service import Broker
    from broker.pipeline.workers import Workers
    from broker.transport.natsserver import EmbeddedServer
    from broker.web.context import AuditService

log = structlog.get_logger("sgb.cli")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    serve = sub.add_parser("serve", parents=[common], help="run a broker instance until SIGINT/SIGTERM")
    serve.add_argument("--http", metavar="HOST:PORT",
                       help="serve the probes, the audit API (/api/v1) and the IG pages (/ig/) on this address")
    serve.add_argument("--workers", type=_positive, metavar="N",
                       help="pipeline processes on the one consumer, this one included (default: [pipeline] "
                       "workers, SGB_WORKERS, else the number of cores)")
    serve.add_argument("--worker-channel", type=int, metavar="FD", help=argparse.SUPPRESS)  # a child worker
    serve.set_defaults(func=cmd_serve, log_level_default="INFO")

    demo = sub.add_parser("demo", parents=[common], help="play the demo story on an embedded NATS")
    demo.set_defaults(func=cmd_demo)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("must be a whole number, 1 or more")
    return int(text)


async def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    """Run a broker until SIGTERM or SIGINT; the embedded NATS (if any) is supervised, and with
    several workers the child processes too (:class:`~broker.pipeline.workers.Workers`). A child
    worker (``--worker-channel``) runs the broker alone, until its supervisor is gone. Shutting
    down keeps the drain deadline even when NATS is gone: what is not done by then is left to
    JetStream (unacknowledged messages come back to another instance)."""
    from aiohttp import web

    from broker.pipeline.service import running_broker
    from broker.pipeline.workers import Workers, answer_supervisor, default_count
    from broker.transport.connection import supervised_nats
    from broker.web.app import make_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    channel: int | None = getattr(args, "worker_channel", None)
    structlog.contextvars.bind_contextvars(instance=settings.instance)  # whose line, when several workers log
    count = 1 if channel is not None else args.workers or settings.pipeline.workers or default_count()
    stack = contextlib.AsyncExitStack()
    server = workers = None
    try:
        if channel is None:
            server = await stack.enter_async_context(supervised_nats(settings))
        url = server.url if server is not None and server.url else settings.nats.url or ""
        if count > 1:  # started first, so stopped last: all the workers drain at once
            workers = await stack.enter_async_context(Workers(
                _worker_command(settings, args), os.environ | {"SGB_NATS_URL": url}, settings.instance, count,
                stop_within=settings.pipeline.drain_timeout))
        broker = await stack.enter_async_context(running_broker(settings, url))
        service: AuditService | None = None  # the handler reads it when called: set once the pages run
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload(broker, workers, service))
        waits: set[asyncio.Future[Any]] = {broker.task}
        if channel is not None:
            waits.add(asyncio.create_task(answer_supervisor(broker, channel), name="sgb-supervisor-channel"))
        if args.http:
            from broker.web.app import audit_service

            service = await stack.enter_async_context(audit_service(broker, workers))
            host, _, port = args.http.rpartition(":")
            runner = web.AppRunner(make_app(broker, service, nats_server=server, workers=workers), access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
            log.info("http listening", address=args.http)
            service.retriage()  # a SIGHUP taken while the pages started
        waits.add(asyncio.create_task(stop.wait()))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits - {broker.task}:
            waiting.cancel()
        if broker.task.done() and broker.task.exception() is not None:
            raise BrokerError(f"pipeline stopped: {broker.task.exception()}")
    finally:
        # nothing to reload into once the stack unwinds; ignored, since the default would end the drain
        loop.add_signal_handler(signal.SIGHUP, log.info, "SIGHUP while stopping: nothing reloaded")
        if workers is not None:
            workers.stop()  # the children drain while this one does
        await _close_within(stack, settings.pipeline.drain_timeout, server)
    return 0


def _reload(broker: Broker, workers: Workers | None, service: AuditService | None) -> None:
    """SIGHUP: the registry, the broker's keys and the rulebook, here and in every child worker;
    then the review queue's triage, which reads the rulebook and the registry."""
    broker.reload()
    if workers is not None:
        workers.reload()
    if service is not None:
        service.retriage()


def _worker_command(settings: Settings, args: argparse.Namespace) -> Callable[[int], list[str]]:
    """The command line of a child worker talking on channel ``fd``: this ``sgb serve``'s home,
    settings file and log level (NATS and the instance name come in its environment)."""
    command = [sys.executable, "-m", "broker.cli", "serve", "--home", str(settings.home)]
    for option in ("config", "log_level"):
        if getattr(args, option, None):
            command += [f"--{option.replace('_', '-')}", getattr(args, option)]
    return lambda fd: [*command, "--worker-channel", str(fd)]


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
