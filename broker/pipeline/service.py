"""Lifecycle of the broker as nested async context managers:
NATS location → connection → streams and consumers → pipeline task.

Each layer cleans up only what it started, in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from broker.audit.chain import AuditWriter
from broker.audit.witnessing import Witnessing
from broker.config import Settings
from broker.errors import ConfigError, KeyStoreError
from broker.identity.blindindex import SubjectIndex, load_subject_index
from broker.identity.keys import Identity, check_key_file, load_identity, load_secret
from broker.pipeline import deadlines
from broker.pipeline.intake import Intake
from broker.pipeline.loop import Pipeline
from broker.pipeline.metrics import Metrics
from broker.pipeline.outcomes import Outcomes
from broker.pipeline.retention import Sweeper
from broker.policy import rulebook as rulebooks
from broker.policy.engine import Policy, ReloadablePolicy
from broker.transport.connection import connected, jetstream
from broker.transport.errors import quietly
from broker.transport.lease import Lease
from broker.transport.topology import ensure_topology
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry, addressable
from broker.wire.subjects import BROKER_CONSUMER, INGRESS

log = structlog.get_logger("sgb.service")


@dataclass
class Broker:
    settings: Settings
    registry: Registry
    catalogue: Catalogue
    identity: Identity
    nc: NATS
    js: JetStreamContext
    pipeline: Pipeline
    task: asyncio.Task[None]
    policy: Policy
    audit: AuditWriter
    subjects: SubjectIndex
    sweeper: Sweeper
    metrics: Metrics
    witnesses: Witnessing  # asks [audit] witnesses to cosign this chain's checkpoints (inert without them)

    def reload_policy(self) -> bool:
        """Reload the rulebook (SIGHUP). Returns False, keeping the old rulebook, if the new one is bad."""
        if not isinstance(self.policy, ReloadablePolicy):
            return False
        try:
            book = self.policy.reload()
        except ConfigError as exc:
            log.error("rulebook refused; the previous one stays in force", error=str(exc))
            return False
        log.info("rulebook reloaded", edition=book.edition, rules=len(book.rules), source=book.source)
        return True

    def reload(self) -> bool:
        """SIGHUP: reload the trust registry and this broker's key file (:meth:`reload_keys`), then
        the rulebook (:meth:`reload_policy`). Returns False if either was refused."""
        keys = self.reload_keys()
        policy = self.reload_policy() if isinstance(self.policy, ReloadablePolicy) else True
        return keys and policy

    def reload_keys(self, *, now: float | None = None) -> bool:
        """Reload the trust registry and the broker's private keys in place, without a restart:
        intake, outcomes, retention and the audit writer hold the same objects and see the new keys
        at once (a message in flight may be checked with the old and sealed with the new: both are
        valid during the overlap). A registry or key file that cannot be loaded, or that does not
        fit the other, is refused and logged, and the old ones stay."""
        now = time.time() if now is None else now
        try:
            registry = Registry.load(self.settings.registry_path, self.catalogue)
            identity = load_identity(self.settings.home, self.registry.broker_id)
            check_key_file(registry.broker, identity, now)
            added = sorted(set(addressable(registry)) - set(addressable(self.registry)))
            if added:
                raise ConfigError(f"the registry adds {', '.join(added)}; restart the broker to create "
                                  "their delivery consumers")
            self.registry.replace_with(registry)
        except (ConfigError, KeyStoreError, OSError) as exc:
            log.error("trust registry or keys refused; the previous ones stay in force", error=str(exc))
            return False
        self.identity.replace_with(identity)
        _set_key_expiry(self.metrics, self.registry)
        log.info("trust registry and keys reloaded", agencies=len(registry.agencies), signing_key=identity.sig_kid,
                 encryption_keys=len(identity.kem))
        return True


def _set_key_expiry(metrics: Metrics, registry: Registry) -> None:
    metrics.key_expiry.clear()
    for agency in registry.agencies.values():
        for key in agency.keys:
            if key.not_after is not None:
                metrics.key_expiry.labels(agency.id, key.use).set(key.not_after)


@contextlib.asynccontextmanager
async def running_broker(settings: Settings, url: str, *, policy: Policy | None = None) -> AsyncIterator[Broker]:
    """A broker instance consuming from ``url`` until the context exits."""
    catalogue = Catalogue()
    registry = Registry.load(settings.registry_path, catalogue)
    identity = load_identity(settings.home, registry.broker_id)
    audit_key = load_secret(settings.home, "audit-hmac.key")
    subjects = load_subject_index(settings.home)
    if policy is None:
        policy = ReloadablePolicy(settings.rulebook_path or rulebooks.DEFAULT_RULEBOOK, catalogue)
    metrics = Metrics()
    _set_key_expiry(metrics, registry)
    async with connected(settings, url, name=f"sgb-broker-{settings.instance}",
                         on_reconnect=metrics.reconnects.inc) as nc:
        js = jetstream(nc, settings)
        await ensure_topology(js, settings.streams, settings.pipeline, addressable(registry))
        witnessing = Witnessing(js, settings.instance, settings.audit, metrics.witness_refusals)
        async with (
            witnessing,
            AuditWriter(js, identity, settings.instance, settings.audit, on_block=metrics.audit_blocks.inc,
                        on_tlog=witnessing.notify) as audit,
            _pipeline(settings, js, registry, catalogue, identity, policy, audit, audit_key, subjects,
                      metrics) as (pipeline, task, sweeper),
        ):
            yield Broker(settings, registry, catalogue, identity, nc, js, pipeline, task, policy, audit, subjects,
                         sweeper, metrics, witnessing)


@contextlib.asynccontextmanager
async def _pipeline(settings: Settings, js: JetStreamContext, registry: Registry, catalogue: Catalogue,
                    identity: Identity, policy: Policy, audit: AuditWriter, audit_key: bytes,
                    subjects: SubjectIndex, metrics: Metrics,
                    ) -> AsyncIterator[tuple[Pipeline, asyncio.Task[None], Sweeper]]:
    """The pipeline, the deadline scanner and the retention sweeper; all stop (in-flight work
    drained) before the audit writer that they write to is closed."""
    outcomes = Outcomes(registry, identity, audit_key, settings.instance, subjects)
    pipeline = Pipeline(
        js, Intake(registry, catalogue, identity, settings.pipeline), policy, outcomes, audit, settings.pipeline,
        request_timeout=settings.nats.request_timeout, metrics=metrics,
    )
    sweeper = Sweeper(js, outcomes, pipeline.store, retention=settings.streams.delivery_retention,
                      on_expired=metrics.expired.inc)
    task = asyncio.create_task(pipeline.run(), name="sgb-pipeline")
    stop = asyncio.Event()
    helpers = [
        asyncio.create_task(_scanner(settings, js, pipeline, metrics).run(
            interval=settings.pipeline.deadline_scan_interval, stop=stop), name="sgb-deadlines"),
        asyncio.create_task(sweeper.run(interval=settings.streams.retention_sweep_interval, stop=stop),
                            name="sgb-retention"),
        asyncio.create_task(_watch_backlog(js, metrics, stop, settings.pipeline.backlog_interval),
                            name="sgb-backlog"),
    ]
    log.info("broker running", instance=settings.instance)
    try:
        yield pipeline, task, sweeper
    finally:
        pipeline.stop()  # stop fetching first; the rest stops while in-flight work finishes
        stop.set()
        _, late = await asyncio.wait(helpers, timeout=settings.nats.request_timeout * 3)
        for helper in late:
            log.warning("background task did not stop in time; cancelled", task=helper.get_name())
            helper.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        pipeline.stop()
        try:
            await asyncio.wait_for(task, settings.pipeline.drain_timeout + settings.pipeline.fetch_timeout + 5)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        log.info("broker stopped", instance=settings.instance, **pipeline.counters.__dict__)


def _scanner(settings: Settings, js: JetStreamContext, pipeline: Pipeline, metrics: Metrics) -> deadlines.Scanner:
    """The deadline scanner, scanning only while this instance holds the lease (one instance does)."""
    lease = Lease(js, deadlines.LEASE, holder=settings.instance, length=settings.pipeline.deadline_lease,
                  on_change=metrics.deadline_leader.set)
    return deadlines.Scanner(js, pipeline.on_overdue, lease=lease, on_bug=metrics.internal.inc)


async def _watch_backlog(js: JetStreamContext, metrics: Metrics, stop: asyncio.Event, interval: float) -> None:
    """Keep the backlog gauge (ingress messages not yet taken by any broker) current."""
    while not stop.is_set():
        with quietly():  # the next look, in ``interval``
            info = await js.consumer_info(INGRESS, BROKER_CONSUMER)
            metrics.backlog.set(info.num_pending + info.num_ack_pending)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
