"""The broker's HTTP face: the probes, the audit API and the IG pages, in one aiohttp app.

:func:`audit_service` runs what the API and the pages stand on next to a broker: the SQLite
index following ``SG_AUDIT``, and a periodic verification of every chain for the badge.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from broker.audit.index import AuditIndex, Indexer
from broker.audit.triage import AgencyFacts, Triage
from broker.audit.verify import broker_keys
from broker.http import probes
from broker.http.probes import Check
from broker.http.tokens import TokenVerifier
from broker.pipeline.service import Broker
from broker.pipeline.workers import Workers
from broker.policy.rulebook import Rulebook
from broker.timestamps import iso
from broker.transport.errors import nats_failures
from broker.transport.natsserver import EmbeddedServer
from broker.web import api, igpages, readiness
from broker.web.context import BROKER_KEY, SERVICE, AuditService
from broker.web.integrity import run_incremental, run_verification
from broker.web.problems import api_middleware
from broker.web.traceability import rulebook_in_force
from broker.wire.registry import Registry
from broker.wire.subjects import AUDIT, DELIVERY

log = structlog.get_logger("sgb.http")


def liveness(server: EmbeddedServer | None) -> Check:
    """Alive, unless the embedded NATS this process supervises cannot be brought back: then a
    supervisor (systemd, an orchestrator) should restart the whole service."""
    if server is not None and not server.healthy:
        return Check("fail", "the embedded NATS server cannot be restarted; see nats-server.log in the NATS directory")
    return Check("ok", "alive")


@contextlib.asynccontextmanager
async def audit_service(broker: Broker, workers: Workers | None = None) -> AsyncIterator[AuditService]:
    """The index (caught up before this yields), its follower, and the periodic verification;
    maintenance mode switched on ``broker`` and on its ``workers``."""
    settings = broker.settings
    index = AuditIndex(settings.index_path, triage=triage_in_force(broker))
    with nats_failures("the audit stream"):
        info = await broker.js.stream_info(AUDIT)
    await index.open(stream_created=str(info.created))
    keys = broker_keys(broker.registry)
    indexer = Indexer(broker.js, index, keys)
    await indexer.catch_up()
    stop = asyncio.Event()

    async def follow() -> None:
        """Follow the log into the index; a NATS failure or a bug (said on /readyz) is retried,
        backing off to 10 s, so the IG pages never go stale silently."""
        pause = 0.5
        while not stop.is_set():
            try:
                await indexer.run(stop=stop)
                pause = 0.5
            except Exception as exc:  # a bug: logged, shown on /readyz, retried from the last indexed block
                index.follower_failure = type(exc).__name__
                log.exception("the audit index follower failed (a bug); it will try again")
                pause = min(pause * 2, 10.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)

    async def verify() -> dict[str, object]:
        return await run_verification(broker.js, broker.registry, index, tlog_origin=settings.audit.tlog_origin)

    def maintenance(on: bool | None) -> bool:
        if on is not None:
            broker.pipeline.pause(on)
            if workers is not None:
                workers.pause(on)
        return broker.pipeline.paused

    async def retention() -> dict[str, object]:
        streams = settings.streams
        before = iso(time.time() - streams.audit_retention)
        with nats_failures("the delivery stream"):
            deliveries = await broker.js.stream_info(DELIVERY)
        holds = await broker.sweeper.holds.all()
        return {"deliveryRetentionDays": streams.delivery_retention / 86400,
                "auditRetentionYears": round(streams.audit_retention / (365 * 86400), 2),
                "deliveriesWaiting": deliveries.state.messages, "legalHolds": len(holds),
                "auditRecordsAreDeleted": False} | await index.retention_counts(before)

    async def verify_periodically() -> None:
        while not stop.is_set():
            try:  # from the last trusted checkpoint (the whole log on request: verify); failures go on the badge
                await run_incremental(broker.js, broker.registry, index, tlog_origin=settings.audit.tlog_origin)
            except Exception:  # a bug: said as one; the next run tries again
                log.exception("periodic audit verification failed (a bug)")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.api.integrity_interval)

    rederive_asked = asyncio.Event()  # a reload (SIGHUP) may have changed the triage

    async def rederive() -> None:
        """Derive the queue again under the triage in force whenever a reload asks; the latest
        reload wins, however many come meanwhile. A failure (a bug) is said on /readyz and the
        queue page and tried again, backing off to a minute."""
        pause = 1.0
        while not stop.is_set():
            await rederive_asked.wait()
            rederive_asked.clear()
            try:
                wanted = triage_in_force(broker)
                if stop.is_set() or (wanted.digest() == index.triage.digest() and index.derive_failure is None):
                    continue
                log.info("the triage changed with the reload; deriving the review queue again")
                await index.retriage(wanted)
                pause = 1.0
            except Exception:  # the index keeps where it stood: the retry (or the next start) resumes there
                log.exception("deriving the review queue again failed (a bug); it will try again")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
                pause = min(pause * 2, 60.0)
                rederive_asked.set()

    tasks = [asyncio.create_task(follow(), name="sgb-audit-index"),
             asyncio.create_task(verify_periodically(), name="sgb-audit-verify"),
             asyncio.create_task(rederive(), name="sgb-audit-rederive")]
    try:
        yield AuditService(index=index, tokens=TokenVerifier(broker.registry, settings.api),
                               subjects=broker.subjects, append=broker.audit.append, instance=settings.instance,
                               verify=verify, holds=broker.sweeper.holds, retention=retention,
                               maintenance=maintenance, retriage=rederive_asked.set)
    finally:
        stop.set()
        rederive_asked.set()  # wakes it to see the stop
        _, pending = await asyncio.wait(tasks, timeout=5.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        index.close()


def triage_for(book: Rulebook | None, registry: Registry) -> Triage:
    """The review queue's triage: the rulebook's ``triage`` section over the registry's agencies."""
    agencies = {a.id: AgencyFacts(a.kind, a.safeguarding_partner) for a in registry.agencies.values()}
    triage = Triage.from_section(book.triage if book is not None else None, agencies)
    if triage.unqueued():
        log.warning("the rulebook's triage gives these review flags no priority: a message raising only them "
                    "does not reach the review queue", flags=list(triage.unqueued()))
    return triage


def triage_in_force(broker: Broker) -> Triage:
    return triage_for(rulebook_in_force(broker.policy), broker.registry)


def make_app(broker: Broker, service: AuditService | None = None, *,
             nats_server: EmbeddedServer | None = None, workers: Workers | None = None) -> web.Application:
    """The probes (:func:`broker.http.probes.make_app`: the broker's readiness checks, its metrics,
    and liveness from the supervised NATS; with ``workers``, theirs too), and with ``service`` the
    audit API and the IG pages."""
    own = broker.metrics.registry
    metrics = probes.exposition(own) if workers is None else lambda: workers.exposition(own)
    app = probes.make_app(metrics=metrics, readiness=lambda: readiness.readiness(broker, service, workers),
                          liveness=lambda: liveness(nats_server),
                          middlewares=[api_middleware, igpages.security_headers])
    app[BROKER_KEY] = broker
    if service is not None:
        app[SERVICE] = service
        api.add_routes(app)
        igpages.add_routes(app)
    return app
