"""``sgb adapter run``: an agency's adapter as a long-running service.

Both ways at once, for the agency's kind (:mod:`adapters.runtime.profiles`):

- **in**: the agency system's records through ``POST /records/{format}`` (HMAC-signed, on the
  adapter's own address) and a watched drop folder, mapped whole, sent to the broker, answered
  with the message ids (:mod:`adapters.runtime.inbound`);
- **out**: deliveries from the agency's durable handed to the agency system by webhook or drop
  folder in its native format, or kept for the school's Operation Encompass inbox
  (:mod:`adapters.runtime.deliverer`).

``/healthz``, ``/readyz`` and ``/metrics`` on the same address, structured logs, a graceful stop
on SIGTERM. Settings come from the ``[adapter]`` section of the TOML settings file (the broker's
``--config`` / ``SGB_CONFIG``), with command-line options over them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
import structlog
from aiohttp import web
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from adapters.formats.mapping import MapContext
from adapters.runtime import inbound_http
from adapters.runtime.deadletters import DeadLetters
from adapters.runtime.deliverer import Deliverer
from adapters.runtime.inbound import InboundCounts, Submitter
from adapters.runtime.inbound_folder import FolderIntake
from adapters.runtime.profiles import Profile, profile_for
from adapters.runtime.retries import RetryLedger
from adapters.runtime.settings import AdapterSettings as AdapterSettings  # re-exported: older imports name the service
from adapters.runtime.settings import check_sharing as check_sharing
from adapters.runtime.settings import read_secret
from adapters.runtime.sinks import DropFolderSink, WebhookSettings, WebhookSink
from adapters.school.inbox import Inbox, render_sealed
from adapters.sdk import AgencyClient, SeenStore, Sink
from broker.config import Settings
from broker.errors import ConfigError
from broker.http import probes
from broker.http.probes import Check
from broker.identity.keys import check_key_file, load_identity
from broker.transport.connection import connected, jetstream
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry

log = structlog.get_logger("sgb.adapter")


@dataclass
class Adapter:
    settings: AdapterSettings
    kind: str
    nc: NATS
    client: AgencyClient
    deliverer: Deliverer
    submitter: Submitter
    profile: Profile
    tasks: list[asyncio.Task[None]]
    metrics: CollectorRegistry
    inbound_secret: bytes | None
    inbox_pages: web.Application | None = None  # the school's Operation Encompass inbox, mounted at /inbox/


class _RefusedCollector(Collector):
    def __init__(self, counts: InboundCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("sgb_adapter_documents_refused", "Native documents refused, by code",
                                   labels=["code"])
        for code, n in sorted(self._counts.refused.items()):
            family.add_metric([code], n)
        yield family


def _metrics(deliverer: Deliverer, inbound: InboundCounts) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    counts = deliverer.counts
    for name, help_text, read in (
        ("sgb_adapter_handed_over", "Deliveries the agency system accepted", lambda: counts.delivered),
        ("sgb_adapter_redeliveries", "Redeliveries acknowledged without a second hand-over",
         lambda: counts.redelivered),
        ("sgb_adapter_dead_letters", "Deliveries the agency system did not take (alert on any)",
         lambda: counts.dead_lettered),
        ("sgb_adapter_handed_back", "Hand-overs that failed or were put off while the agency system failed, "
         "handed back to JetStream to try again", lambda: counts.handed_back),
        ("sgb_adapter_retrying", "Deliveries being retried now (the agency system is not taking them; alert if "
         "it stays above 0 for long)", lambda: len(deliverer.ledger)),
        ("sgb_adapter_dead_letters_kept", "Dead letters waiting in the folder for an operator (sgb adapter "
         "dead-letters)", lambda: len(deliverer.dead.entries())),
        ("sgb_adapter_waiting_for_key", "Deliveries offered back because they are sealed to a key this adapter "
         "does not hold yet (reload its key file; alert if it keeps rising)", lambda: counts.waiting_for_key),
        ("sgb_adapter_documents_taken", "Native documents mapped and sent whole", lambda: inbound.documents),
        ("sgb_adapter_messages_sent", "Messages published to the broker from native documents",
         lambda: inbound.messages),
    ):
        Gauge(name, help_text, registry=registry).set_function(read)
    registry.register(_RefusedCollector(inbound))
    return registry


@contextlib.asynccontextmanager
async def _sink(settings: AdapterSettings, state: Path,
                client: AgencyClient) -> AsyncIterator[tuple[Sink, Inbox | None]]:
    """The hand-over to the agency system, and the school's inbox when that is where it goes."""
    if settings.drop_folder:
        yield DropFolderSink(settings.drop_folder), None
        return
    if settings.webhook_url:
        assert settings.webhook_secret_file
        secret = read_secret(settings.webhook_secret_file)
        async with aiohttp.ClientSession() as session:
            yield WebhookSink(session, WebhookSettings(url=settings.webhook_url, secret=secret,
                                                       timeout=settings.timeout)), None
        return
    inbox = Inbox(state / "inbox.sqlite", client)
    try:
        yield inbox, inbox
    finally:
        inbox.close()


@dataclass
class HandOver:
    """The out side of an adapter, connected but not running: what ``sgb adapter run`` runs and
    ``sgb adapter dead-letters retry`` uses once."""

    kind: str
    registry: Registry
    state: Path
    nc: NATS
    client: AgencyClient
    seen: SeenStore
    deliverer: Deliverer
    inbox: Inbox | None


@contextlib.asynccontextmanager
async def handing_over(settings: Settings, adapter: AdapterSettings, url: str, *,
                       catalogue: Catalogue | None = None) -> AsyncIterator[HandOver]:
    catalogue = catalogue or Catalogue()
    registry = Registry.load(settings.registry_path, catalogue)
    agency = registry.get(adapter.agency)
    if agency is None:
        raise ConfigError(f"{adapter.agency} is not in the trust registry")
    adapter.check(agency.kind)
    identity = load_identity(settings.home, adapter.agency)
    state = settings.home / "adapters" / adapter.agency
    async with contextlib.AsyncExitStack() as stack:
        seen = SeenStore(state / "seen.sqlite")
        stack.callback(seen.close)
        ledger = RetryLedger(state / "retrying.sqlite")
        stack.callback(ledger.close)
        await ledger.prune(time.time() - adapter.retry_for - 31 * 86400)  # deliveries the broker has expired since
        nc = await stack.enter_async_context(
            connected(settings, url, name=f"sgb-adapter-{adapter.agency}", party=adapter.agency))
        client = AgencyClient(nc, jetstream(nc, settings), registry, identity, catalogue, seen=seen,
                              request_timeout=settings.nats.request_timeout)
        sink, inbox = await stack.enter_async_context(_sink(adapter, state, client))
        render = profile_for(agency.kind).render if inbox is None else render_sealed
        deliverer = Deliverer(client, sink, DeadLetters(state / "dead-letters"), render=render, retry=adapter.retry,
                              ledger=ledger)
        yield HandOver(agency.kind, registry, state, nc, client, seen, deliverer, inbox)


@contextlib.asynccontextmanager
async def running_adapter(settings: Settings, adapter: AdapterSettings, url: str) -> AsyncIterator[Adapter]:
    catalogue = Catalogue()
    inbound_secret = read_secret(adapter.inbound_secret_file) if adapter.inbound_secret_file else None
    check_sharing(adapter.sharing, catalogue)
    async with contextlib.AsyncExitStack() as stack:
        out = await stack.enter_async_context(handing_over(settings, adapter, url, catalogue=catalogue))
        profile, client, deliverer = profile_for(out.kind), out.client, out.deliverer
        options = {"local_authority": adapter.local_authority} if adapter.local_authority else {}
        context = MapContext(agency=adapter.agency, registry=out.registry, catalogue=catalogue, options=options,
                             handed=out.seen.handed)
        pages = None
        if out.inbox is not None:
            from adapters.school.inbox import inbox_app, inbox_verifier

            pages = inbox_app(out.inbox, client, inbox_verifier(out.registry, settings.api, adapter.agency))
        submitter = Submitter(client, context, adapter.sharing, out.state,
                              max_message_bytes=settings.pipeline.max_message_bytes)
        stack.callback(submitter.close)
        now = time.time()  # bounded stores: what nothing will ask about again
        await out.seen.prune_own_receipts(now - 7 * 86400)
        await submitter.store.prune(now - adapter.remember_submissions_days * 86400)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(deliverer.run(stop), name="sgb-adapter-deliverer")]
        if adapter.inbound_folder:
            folder = FolderIntake(adapter.inbound_folder, submitter, profile.formats,
                                  max_bytes=adapter.max_document_bytes, poll=adapter.poll, settle=adapter.poll)
            tasks.append(asyncio.create_task(folder.run(stop), name="sgb-adapter-folder"))
        log.info("adapter running", agency=adapter.agency, kind=out.kind, formats=sorted(profile.formats),
                 out="inbox" if out.inbox is not None else "drop folder" if adapter.drop_folder else "webhook",
                 inbound_http=inbound_secret is not None, inbound_folder=adapter.inbound_folder is not None,
                 retry_for=adapter.retry_for)
        try:
            yield Adapter(adapter, out.kind, out.nc, client, deliverer, submitter, profile, tasks,
                          _metrics(deliverer, submitter.counts), inbound_secret, pages)
        finally:
            stop.set()
            _, pending = await asyncio.wait(tasks, timeout=adapter.timeout * 2 + 5)
            for task in pending:
                task.cancel()  # the message in hand is not acked: JetStream gives it back
            log.info("adapter stopped", agency=adapter.agency, **deliverer.counts.__dict__,
                     documents=submitter.counts.documents, messages_sent=submitter.counts.messages)


def reload_keys(adapter: Adapter, settings: Settings) -> None:
    """After a key rotation (SIGHUP): the registry and this agency's key file, read again. Every
    check comes first; a key file the new registry does not back (a signing key it does not list,
    an encryption key it lists that the file lacks) is refused and the old keys stay in use."""
    client, agency = adapter.client, adapter.settings.agency
    new = Registry.load(settings.registry_path, client.catalogue)
    identity = load_identity(settings.home, agency)
    party = new.get(agency)
    if party is None:
        raise ConfigError(f"the new registry does not list {agency}")
    if new.broker_id != client.registry.broker_id:
        raise ConfigError(f"the new registry names broker {new.broker_id}, not {client.registry.broker_id}")
    check_key_file(party, identity, time.time())
    shared = client.registry  # the object the mappers' context holds too
    client.reload(new, identity)
    shared.replace_with(new)
    client.registry = shared
    log.info("keys reloaded", agency=adapter.settings.agency, signing_key=identity.sig_kid,
             decryption_keys=len(identity.kem))


# The adapter's loops (by task name): each is a readiness check, failing once the loop has stopped.
_LOOPS: Final = {"sgb-adapter-deliverer": ("deliverer", "the hand-over loop"),
                 "sgb-adapter-folder": ("drop-folder", "watching the inbound drop folder")}


async def readiness(adapter: Adapter) -> dict[str, Check]:
    """The adapter's readiness checks, by name: NATS, and each of its loops still running."""
    checks = {"nats": Check("ok", "connected") if adapter.nc.is_connected else Check("fail", "not connected to NATS")}
    for task in adapter.tasks:
        name, what = _LOOPS.get(task.get_name(), (task.get_name(), task.get_name()))
        checks[name] = Check("fail", f"stopped: {what}") if task.done() else Check("ok", what)
    return checks


def make_app(adapter: Adapter) -> web.Application:
    """The probes (:func:`broker.http.probes.make_app`), the records endpoint when the agency system
    sends records over HTTP, and a school's inbox at ``/inbox/``."""
    app = probes.make_app(metrics=probes.exposition(adapter.metrics), readiness=lambda: readiness(adapter),
                          client_max_size=adapter.settings.max_document_bytes)
    if adapter.inbound_secret is not None:
        inbound_http.add_routes(app, adapter.submitter, adapter.profile.formats, adapter.inbound_secret,
                                max_bytes=adapter.settings.max_document_bytes)
    if adapter.inbox_pages is not None:
        app.add_subapp("/inbox/", adapter.inbox_pages)
    return app
