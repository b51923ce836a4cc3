"""Lifecycle of the broker as nested async context managers:
NATS location → connection → streams and consumers → pipeline task.

Each layer cleans up only what it started, in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from broker import _crypto, deadlines, natsauth
from broker import rulebook as rulebooks
from broker.auditchain import AuditWriter
from broker.catalogue import Catalogue
from broker.config import Settings
from broker.errors import ConfigError, KeyStoreError, TransportError
from broker.intake import Intake
from broker.keystore import BROKER_ID, Identity, load_identity, load_secret
from broker.metrics import Metrics
from broker.natsserver import EmbeddedServer
from broker.outcomes import Outcomes
from broker.pipeline import Pipeline
from broker.policy import Policy, ReloadablePolicy
from broker.registry import Agency, Registry
from broker.retention import Sweeper
from broker.streams import BROKER_CONSUMER, INGRESS, ensure_topology
from broker.subjects import SubjectIndex, load_subject_index

log = structlog.get_logger("sgb.service")
NOT_ADDRESSABLE = frozenset({"broker", "token-issuer"})


@contextlib.asynccontextmanager
async def nats_location(settings: Settings) -> AsyncIterator[str]:
    """``SGB_NATS_URL`` if set; else the embedded server already running on this home; else a
    new embedded server for the lifetime of the context."""
    if settings.nats.url:
        yield settings.nats.url
        return
    server = embedded_server(settings)
    if not server.adopt():
        await server.start()
    try:
        assert server.url is not None
        yield server.url
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def supervised_nats(settings: Settings) -> AsyncIterator[EmbeddedServer | None]:
    """For a broker that runs for long (``sgb serve``): the embedded server of this home, started or
    adopted, kept alive by :meth:`EmbeddedServer.supervise` and stopped with the broker. None when
    ``SGB_NATS_URL`` names an external deployment (which looks after itself)."""
    if settings.nats.url:
        yield None
        return
    server = embedded_server(settings)
    if not server.adopt():
        await server.start()
    stop = asyncio.Event()
    watch = asyncio.create_task(server.supervise(stop, interval=settings.nats.supervise_interval,
                                                 give_up_after=settings.nats.supervise_give_up),
                                name="sgb-nats-supervisor")
    try:
        yield server
    finally:
        stop.set()
        await watch
        await server.stop(adopted_too=True)


def embedded_server(settings: Settings) -> EmbeddedServer:
    """The embedded nats-server for this home, with the authorisation ``sgb keys init`` wrote, and
    TLS when ``<home>/nats/tls/server.pem`` and ``server.key`` are there (clients then trust
    ``<home>/nats/tls/ca.pem``)."""
    extra = []
    if (settings.nats_dir / natsauth.AUTH_FILE).exists():
        extra.append(f'include "{natsauth.AUTH_FILE}"')
    tls = settings.nats_dir / "tls"
    if (tls / "server.pem").exists() and (tls / "server.key").exists():
        extra.append(f'tls {{ cert_file: "{tls / "server.pem"}", key_file: "{tls / "server.key"}" }}')
    return EmbeddedServer(settings.nats_dir, max_payload=settings.nats.embedded_max_payload,
                          extra_config="\n".join(extra))


@contextlib.asynccontextmanager
async def embedded(settings: Settings) -> AsyncIterator[str]:
    """A new embedded server for this home (tests and the demo), stopped on exit."""
    server = embedded_server(settings)
    url = await server.start()
    try:
        yield url
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def connected(settings: Settings, url: str, *, name: str, party: str | None = None,
                    on_reconnect: Callable[[], None] | None = None) -> AsyncIterator[NATS]:
    """A NATS connection as ``party`` (an agency id; None: the broker). Credentials: the
    configured nkey seed for the broker, else ``<home>/keys/nats/<party>.nk`` when present;
    an agency's connection uses its own inbox prefix, the only one its permissions allow."""
    async def on_error(exc: Exception) -> None:
        log.warning("nats error", error=str(exc))

    holder: list[NATS] = []

    async def on_disconnected() -> None:
        if holder and not (holder[0].is_closed or holder[0].is_draining):
            log.warning("nats disconnected; reconnecting")

    async def on_reconnected() -> None:
        log.info("nats reconnected")
        if on_reconnect is not None:
            on_reconnect()

    options: dict[str, object] = {
        "name": name, "connect_timeout": settings.nats.connect_timeout, "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5, "error_cb": on_error, "allow_reconnect": True,
        "disconnected_cb": on_disconnected, "reconnected_cb": on_reconnected,
    }
    seed = settings.nats.nkey_seed if party is None else None
    candidate = natsauth.seed_path(settings.home, party or BROKER_ID)
    if seed is None and candidate.exists():
        seed = candidate
    if seed is not None:
        options["nkeys_seed"] = str(seed)
    home_ca = settings.nats_dir / "tls" / "ca.pem"
    ca = settings.nats.tls_ca_path or (home_ca if home_ca.exists() else None)
    if ca or settings.nats.tls_cert_path:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
        if settings.nats.tls_cert_path:
            context.load_cert_chain(str(settings.nats.tls_cert_path),
                                    str(settings.nats.tls_key_path) if settings.nats.tls_key_path else None)
        options["tls"] = context
    if party is not None:
        options["inbox_prefix"] = natsauth.inbox_prefix(party)
    if settings.nats.user:
        options |= {"user": settings.nats.user, "password": settings.nats.password}
    try:  # nats-py retries a refused connection for ever; the first connection has a deadline
        servers = [u.strip() for u in url.split(",") if u.strip()]  # SGB_NATS_URL may list a cluster's nodes
        nc = await asyncio.wait_for(nats.connect(servers, **options), settings.nats.connect_timeout * 3)
    except (NatsError, OSError, TimeoutError) as exc:
        raise TransportError(f"cannot connect to NATS at {url}: {type(exc).__name__} (check the address and "
                             "this party's credentials)") from exc
    holder.append(nc)
    try:
        yield nc
    finally:
        with contextlib.suppress(NatsError, asyncio.TimeoutError):
            await asyncio.wait_for(nc.drain(), settings.nats.request_timeout)
        if not nc.is_closed:
            await nc.close()


def jetstream(nc: NATS, settings: Settings) -> JetStreamContext:
    return nc.jetstream(timeout=settings.nats.request_timeout,
                        publish_async_max_pending=max(4 * settings.pipeline.max_in_flight, 1024))


def addressable(registry: Registry) -> list[str]:
    return [a.id for a in registry.agencies.values() if a.kind not in NOT_ADDRESSABLE]


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


def check_key_file(party: Agency, identity: Identity, now: float) -> None:
    """A party's key file must fit the registry: it signs with a key of the party's valid now, and
    it holds every encryption key others may seal to (valid now or later), so nothing sealed to the
    party is undecryptable. The broker checks its own on reload, an adapter its agency's."""
    if not any(k.kid == identity.sig_kid and k.use == "sig" and k.valid_at(now) for k in party.keys):
        raise KeyStoreError(f"{party.id}'s key file signs with {identity.sig_kid}, which the registry does not "
                            "list as valid; copy the new key file and registry together")
    for key in party.keys:
        if key.use == "enc" and (key.not_after is None or key.not_after >= now):
            held = identity.kem_key(key.kid)
            if held is None or (held.suite == _crypto.HYBRID_SUITE) != (key.alg == "MLKEM768X25519"):
                raise KeyStoreError(f"the registry lists {party.id}'s encryption key {key.kid}, which its key "
                                    "file does not hold; copy the new key file and registry together")


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
        async with AuditWriter(js, identity, settings.instance, settings.audit,
                               on_block=metrics.audit_blocks.inc) as audit, _pipeline(
                settings, js, registry, catalogue, identity, policy, audit, audit_key, subjects, metrics) as (
                pipeline, task, sweeper):
            yield Broker(settings, registry, catalogue, identity, nc, js, pipeline, task, policy, audit, subjects,
                         sweeper, metrics)


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
        asyncio.create_task(deadlines.Scanner(js, pipeline.on_overdue).run(
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


async def _watch_backlog(js: JetStreamContext, metrics: Metrics, stop: asyncio.Event, interval: float) -> None:
    """Keep the backlog gauge (ingress messages not yet taken by any broker) current."""
    while not stop.is_set():
        with contextlib.suppress(NatsError, TimeoutError):
            info = await js.consumer_info(INGRESS, BROKER_CONSUMER)
            metrics.backlog.set(info.num_pending + info.num_ack_pending)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
