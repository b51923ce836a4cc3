"""``sgb adapter run``: an agency's adapter as a long-running service.

Today it runs the outbound side: deliveries from the agency's durable handed to the agency
system by webhook or drop folder (:mod:`adapters.deliverer`), with ``/healthz``, ``/readyz`` and
``/metrics`` on its own address, structured logs and a graceful stop on SIGTERM. (Taking the
agency's native records *into* the broker is the next part of issue 6.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
import structlog
from aiohttp import web
from nats.aio.client import Client as NATS
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from adapters.deliverer import DeadLetters, Deliverer
from adapters.sdk import AgencyClient, SeenStore
from adapters.sinks import DropFolderSink, Sink, WebhookSettings, WebhookSink
from broker.catalogue import Catalogue
from broker.config import Settings
from broker.errors import ConfigError
from broker.keystore import load_identity
from broker.registry import Registry
from broker.service import connected, jetstream

log = structlog.get_logger("sgb.adapter")


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterSettings:
    agency: str
    webhook_url: str | None = None
    webhook_secret_file: Path | None = None
    drop_folder: Path | None = None
    attempts: int = 6
    timeout: float = 10.0

    def check(self) -> None:
        if bool(self.webhook_url) == bool(self.drop_folder):
            raise ConfigError("give the agency system's webhook URL (with its secret file) or a drop folder")
        if self.webhook_url and not self.webhook_secret_file:
            raise ConfigError("a webhook needs --webhook-secret-file (the HMAC key shared with the agency system)")


@dataclass
class Adapter:
    settings: AdapterSettings
    nc: NATS
    deliverer: Deliverer
    task: asyncio.Task[None]
    registry: CollectorRegistry


APP_KEY: Final = web.AppKey("adapter", Adapter)


def _metrics(deliverer: Deliverer) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    counts = deliverer.counts
    for name, help_text, read in (
        ("sgb_adapter_handed_over", "Deliveries the agency system accepted", lambda: counts.delivered),
        ("sgb_adapter_redeliveries", "Redeliveries acknowledged without a second hand-over",
         lambda: counts.redelivered),
        ("sgb_adapter_dead_letters", "Deliveries the agency system did not take (alert on any)",
         lambda: counts.dead_lettered),
    ):
        Gauge(name, help_text, registry=registry).set_function(read)
    return registry


@contextlib.asynccontextmanager
async def _sink(settings: AdapterSettings) -> AsyncIterator[Sink]:
    if settings.drop_folder:
        yield DropFolderSink(settings.drop_folder)
        return
    assert settings.webhook_url and settings.webhook_secret_file
    secret = settings.webhook_secret_file.read_bytes().strip()
    async with aiohttp.ClientSession() as session:
        yield WebhookSink(session, WebhookSettings(url=settings.webhook_url, secret=secret,
                                                   attempts=settings.attempts, timeout=settings.timeout))


@contextlib.asynccontextmanager
async def running_adapter(settings: Settings, adapter: AdapterSettings, url: str) -> AsyncIterator[Adapter]:
    adapter.check()
    catalogue = Catalogue()
    registry = Registry.load(settings.registry_path, catalogue)
    if registry.get(adapter.agency) is None:
        raise ConfigError(f"{adapter.agency} is not in the trust registry")
    identity = load_identity(settings.home, adapter.agency)
    state = settings.home / "adapters" / adapter.agency
    seen = SeenStore(state / "seen.sqlite")
    try:
        async with connected(settings, url, name=f"sgb-adapter-{adapter.agency}", party=adapter.agency) as nc, \
                _sink(adapter) as sink:
            client = AgencyClient(nc, jetstream(nc, settings), registry, identity, catalogue, seen=seen,
                                  request_timeout=settings.nats.request_timeout)
            deliverer = Deliverer(client, sink, DeadLetters(state / "dead-letters"))
            stop = asyncio.Event()
            task = asyncio.create_task(deliverer.run(stop), name="sgb-adapter-deliverer")
            log.info("adapter running", agency=adapter.agency, sink="drop folder" if adapter.drop_folder else "webhook")
            try:
                yield Adapter(adapter, nc, deliverer, task, _metrics(deliverer))
            finally:
                stop.set()
                try:
                    await asyncio.wait_for(task, adapter.timeout * 2 + 5)
                except TimeoutError:
                    task.cancel()  # the message in hand is not acked: JetStream gives it back
                log.info("adapter stopped", agency=adapter.agency, **deliverer.counts.__dict__)
    finally:
        seen.close()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    adapter = request.app[APP_KEY]
    checks = {
        "nats": {"state": "ok" if adapter.nc.is_connected else "fail", "detail": "connection to NATS"},
        "deliverer": {"state": "fail" if adapter.task.done() else "ok", "detail": "hand-over loop"},
    }
    ready = all(c["state"] == "ok" for c in checks.values())
    return web.json_response({"status": "ready" if ready else "not-ready", "checks": checks},
                             status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app[APP_KEY].registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(adapter: Adapter) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[APP_KEY] = adapter
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
