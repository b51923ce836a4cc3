"""The agency SDK: build, sign, seal and publish messages; receive, verify and open deliveries.

An agency system holds one :class:`AgencyClient` per agency identity. Outbound, it validates
the payload against the same schema the broker uses (so an integrator hears about a bad
field at once, not from a rejection), seals the payload to the broker and signs the
envelope. Inbound, it checks the broker's signature, that the delivery is addressed to this
agency, and opens the payload with this agency's key; it hands each delivery over once,
even if JetStream delivers it twice, by remembering message ids in a small local store.

Deliveries are read by the broker's own strict reader (:mod:`broker.wire.jws`: canonical
base64url, strict JSON, EdDSA only), so the SDK accepts exactly what the broker would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import APIError

from broker.config import Settings
from broker.errors import BrokerError, InvalidEnvelope, PublishTimeout, RejectedMessage, UnknownType
from broker.identity.keys import Identity, load_identity
from broker.store import Migration, Store, add_columns
from broker.transport.errors import NATS_FAILURES, describe, nats_failures, quietly
from broker.wire import hpke, jws, strictjson
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry
from broker.wire.subjects import DELIVERY, ingress_subject


@dataclass(frozen=True, slots=True)
class Delivery:
    """A verified, opened message delivered to this agency."""

    claims: dict[str, Any]
    payload: dict[str, Any]
    raw: bytes = b""  # the signed, sealed wire message (still encrypted): safe to keep at rest

    @property
    def id(self) -> str:
        """The delivery's own message id (the key of an idempotent hand-over and of its receipts)."""
        return str(self.claims["jti"])

    @property
    def origin(self) -> tuple[str | None, str | None]:
        """``(original sender, original message id)``: where a reply goes and what it answers."""
        origin = self.claims.get("origin") or {}
        return origin.get("iss"), origin.get("jti")

    @property
    def type(self) -> str:
        """The message type, e.g. ``referral`` (the catalogue's name)."""
        return str(self.claims["typ"])

    def as_json(self) -> dict[str, Any]:
        """What an agency system is handed: the envelope (without the sealed payload) and the
        opened payload, as one JSON object."""
        envelope = {k: v for k, v in self.claims.items() if k != "payload"}
        return {"envelope": envelope, "payload": self.payload}


@dataclass(frozen=True, slots=True)
class Handed:
    """What the adapter remembers of a delivery it handed over (ids and type only, no payload):
    enough to address a reply to the original sender and to answer the original message."""

    delivery: str
    type: str
    sender: str | None
    message: str | None
    thread: str | None
    at: float


# Versions of the seen store (broker.store). Files from before versions are at 0 with some of these.
_SEEN_MIGRATIONS: Final[tuple[Migration, ...]] = (
    "create table if not exists seen (id text primary key, at real not null);",
    add_columns("seen", ("type text", "sender text", "message text", "thread text")),  # the ids a reply needs
    "create index if not exists seen_message on seen (message);"
    "create table if not exists own_receipts (id text primary key, at real not null);",
)


class SeenStore:
    """Deliveries already handed to the agency system (idempotent hand-over), with the ids a
    reply needs. A small SQLite file under the adapter's data directory (:class:`broker.store.Store`:
    private, migrated, worked off the event loop).

    Coroutines await :meth:`has`, :meth:`add` and the receipt methods; :meth:`handed` is for the
    mappers, which run in a worker thread."""

    def __init__(self, path: Path) -> None:
        self._store = Store(path, _SEEN_MIGRATIONS, name="seen")

    async def has(self, message_id: str) -> bool:
        """Whether ``message_id`` was handed over before."""
        return await self._store.read(
            lambda db: db.execute("select 1 from seen where id = ?", (message_id,)).fetchone() is not None)

    async def add(self, message_id: str, delivery: Delivery | None = None) -> None:
        """Remember that ``message_id`` was handed over (with ``delivery``'s ids, for replies)."""
        sender, message = delivery.origin if delivery else (None, None)
        row = (message_id, time.time(), delivery.type if delivery else None, sender, message,
               delivery.claims.get("thread") if delivery else None)
        await self._store.write(lambda db: db.execute(
            "insert or ignore into seen (id, at, type, sender, message, thread) values (?, ?, ?, ?, ?, ?)", row))

    async def note_own_receipt(self, receipt_id: str) -> None:
        """A receipt the adapter sent by itself; the broker's 'routed' answer to it is not for the agency."""
        now = time.time()
        await self._store.write(lambda db: db.execute("insert or ignore into own_receipts values (?, ?)",
                                                      (receipt_id, now)))

    async def prune_own_receipts(self, older_than: float) -> int:
        """The broker answers a receipt within seconds; ids older than that need not be kept."""
        return await self._store.write(
            lambda db: db.execute("delete from own_receipts where at < ?", (older_than,)).rowcount)

    async def is_own_receipt(self, receipt_id: object) -> bool:
        """Whether ``receipt_id`` is a receipt the adapter sent by itself (:meth:`note_own_receipt`)."""
        return await self._store.read(
            lambda db: db.execute("select 1 from own_receipts where id = ?", (receipt_id,)).fetchone() is not None)

    def handed(self, ref: str) -> Handed | None:
        """The delivery handed over under ``ref``: its delivery id, or the original message id.
        Synchronous, for the mappers' :class:`~adapters.formats.mapping.MapContext` (they run in a
        worker thread); never call it from a coroutine."""
        row = self._store.read_blocking(lambda db: db.execute(
            "select id, type, sender, message, thread, at from seen where id = ? or message = ? order by at limit 1",
            (ref, ref)).fetchone())
        if row is None or row[1] is None:
            return None
        return Handed(row[0], row[1], row[2], row[3], row[4], row[5])

    def close(self) -> None:
        """Finish what was asked and close the file."""
        self._store.close()


class AgencyClient:
    """One agency's connection to the broker: :meth:`send` (or :meth:`build` and :meth:`publish`)
    to share, :meth:`fetch` and :meth:`open` to receive, :meth:`wait_outcome` for the broker's
    answer. Holds the agency's keys, the trust registry and the schema catalogue; the NATS
    connection and the seen store belong to whoever made it (:func:`agency_client` makes all)."""

    def __init__(self, nc: NATS, js: JetStreamContext, registry: Registry, identity: Identity,
                 catalogue: Catalogue, *, seen: SeenStore | None = None, request_timeout: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.nc = nc
        self.js = js
        self.registry = registry
        self.identity = identity
        self.catalogue = catalogue
        self.seen = seen
        self.timeout = request_timeout
        self.clock = clock
        self.agency = identity.id

    # -- outbound ---------------------------------------------------------------------

    def build(self, *, typ: str, to: Sequence[str], payload: Mapping[str, Any], sharing: Mapping[str, Any],
              ver: int = 1, re: str | None = None, thread: str | None = None, jti: str | None = None,
              validate: bool = True) -> tuple[str, bytes]:
        """Return ``(message id, wire bytes)`` for a signed, sealed message to the broker."""
        if validate:
            mtype = self.catalogue.message_type(typ, ver)
            if mtype is None:
                raise UnknownType(f"no schema for {typ} v{ver}", field="/typ")
            self.catalogue.check_payload(mtype, payload)
        jti = jti or str(uuid.uuid4())
        broker_id = self.registry.broker_id
        kid, suite, public = self.registry.recipient_key(broker_id, self.clock())
        sealed = hpke.seal_payload(jws.dumps(payload), jti=jti, iss=self.agency, typ=typ, ver=ver,
                                   recipient=broker_id, kid=kid, suite=suite, public_key=public)
        claims: dict[str, Any] = {
            "jti": jti, "iss": self.agency, "iat": int(self.clock()), "typ": typ, "ver": ver, "to": list(to),
            "sharing": dict(sharing), "enc": {"suite": sealed.suite, "kid": sealed.kid}, "payload": sealed.payload,
        }
        if re:
            claims["re"] = re
        if thread:
            claims["thread"] = thread
        return jti, jws.sign(claims, self.identity.signing_key, self.identity.sig_kid)

    async def publish(self, data: bytes, msg_id: str, *, attempts: int = 5) -> None:
        """Publish to this agency's ingress subject until JetStream acknowledges it (same id on
        retry, so JetStream keeps one); :class:`PublishTimeout` when it never does, or refuses it."""
        error = "no acknowledgement"
        for attempt in range(attempts):
            try:
                await self.js.publish(ingress_subject(self.agency), data, timeout=self.timeout,
                                      headers={"Nats-Msg-Id": msg_id})
                return
            except APIError as exc:
                if exc.code not in (None, 503):  # an answer, not a hiccup: trying again will not help
                    raise PublishTimeout(f"JetStream refused the message: {exc.description}") from exc
                error = describe(exc)
            except NATS_FAILURES as exc:
                error = describe(exc)
            await asyncio.sleep(0.2 * (attempt + 1))
        raise PublishTimeout(f"no acknowledgement from JetStream after {attempts} attempts ({error})")

    async def send(self, **kwargs: Any) -> str:
        """Build, sign, seal and publish one message (``kwargs`` as for :meth:`build`); return its
        message id once JetStream has stored it. The broker's answer comes later, as a delivery:
        a ``receipt`` (``routed``) or a ``rejection`` (:meth:`wait_outcome` waits for it)."""
        jti, data = self.build(**kwargs)
        await self.publish(data, jti)
        return jti

    # -- inbound ----------------------------------------------------------------------

    def open(self, data: bytes, *, when: float | None = None) -> Delivery:
        """Verify and open one delivery. Any failure is :class:`InvalidEnvelope`.

        ``when`` is the time at which the broker's signing key must have been valid (default:
        now). A store that verified a delivery when it received it passes that time when it
        opens it again later, so a broker key rotated and expired since does not lock it out."""
        try:
            signed = jws.read(data)
            signer, key = self.registry.signer(signed.kid, self.clock() if when is None else when)
            if signer.id != self.registry.broker_id:
                raise InvalidEnvelope("delivery not signed by the broker")
            claims = signed.verify(key)
            if claims["iss"] != self.registry.broker_id or claims["to"] != [self.agency]:
                raise InvalidEnvelope("delivery not addressed to this agency")
            kem = self.identity.kem_key(claims["enc"]["kid"])
            if kem is None:
                raise InvalidEnvelope("delivery sealed to a key this agency does not hold")
            payload = strictjson.loads(hpke.open_payload(claims, self.agency, kem))
        except (RejectedMessage, strictjson.StrictJSONError, KeyError, TypeError) as exc:
            raise InvalidEnvelope("delivery cannot be verified or opened") from exc
        if not isinstance(payload, dict):
            raise InvalidEnvelope("delivery cannot be verified or opened")
        return Delivery(claims, payload, bytes(data))

    @contextlib.asynccontextmanager
    async def _subscription(self) -> AsyncIterator[JetStreamContext.PullSubscription]:
        with nats_failures("this agency's deliveries"):
            sub = await self.js.pull_subscribe_bind(self.agency, DELIVERY)
        try:
            yield sub
        finally:
            with quietly():
                await sub.unsubscribe()

    async def fetch(self, *, batch: int = 64, idle: float = 1.0) -> AsyncIterator[tuple[Delivery | None, Msg]]:
        """Yield what is waiting, as ``(delivery, msg)``; ``delivery`` is None for one that fails
        verification. Returns once a fetch finds nothing for ``idle`` seconds; :class:`TransportError`
        when NATS fails. The caller acks."""
        async with self._subscription() as sub:
            while True:
                with nats_failures("this agency's deliveries"):
                    try:
                        msgs = await sub.fetch(batch, timeout=idle)
                    except TimeoutError:  # nothing more
                        return
                for msg in msgs:
                    try:
                        yield self.open(msg.data), msg
                    except InvalidEnvelope:
                        yield None, msg

    async def wait_outcome(self, message_id: str, *, timeout: float) -> Delivery:
        """Wait for the broker's receipt or rejection of ``message_id``; ack it, leave the rest.
        :class:`TransportError` when NATS fails, :class:`BrokerError` when no answer comes in time."""
        held: list[Msg] = []
        deadline = time.monotonic() + timeout
        try:
            async with self._subscription() as sub:
                while (left := deadline - time.monotonic()) > 0:
                    with nats_failures("this agency's deliveries"):
                        try:
                            msgs = await sub.fetch(16, timeout=min(left, 1.0))
                        except TimeoutError:  # nothing yet
                            continue
                    for msg in msgs:
                        try:
                            delivery = self.open(msg.data)
                        except InvalidEnvelope:
                            held.append(msg)
                            continue
                        if _is_outcome_of(delivery, message_id):
                            with nats_failures("acknowledging the outcome"):
                                await msg.ack()
                            return delivery
                        held.append(msg)
        finally:
            for msg in held:  # give back what was not ours to consume, at once
                with quietly():
                    await msg.nak()
        raise BrokerError(f"no outcome for {message_id} within {timeout:g}s")

    def reload(self, registry: Registry, identity: Identity) -> None:
        """Use this registry and key file from now on (after a key rotation; the adapter's SIGHUP).
        Deliveries sealed to an older key still open while ``identity`` holds it. Refuses, keeping
        the old ones, an identity of another agency or one whose signing key ``registry`` does not
        list as valid (the broker would reject everything it signs)."""
        if identity.id != self.agency:
            raise BrokerError(f"the key file is for {identity.id}, not {self.agency}")
        try:
            signer, _ = registry.signer(identity.sig_kid, self.clock())
        except RejectedMessage as exc:
            raise BrokerError("the key file's signing key is not valid in the registry") from exc
        if signer.id != self.agency:
            raise BrokerError("the key file's signing key belongs to another agency in the registry")
        self.registry = registry
        self.identity = identity


def _is_outcome_of(delivery: Delivery, message_id: str) -> bool:
    """A receipt or rejection about ``message_id`` (a rejection of unreadable bytes has no ``re``
    and names the NATS message id in its payload instead)."""
    if delivery.type not in ("receipt", "rejection") or delivery.claims.get("iss") is None:
        return False
    return delivery.claims.get("re") == message_id or delivery.payload.get("messageId") == message_id


@contextlib.asynccontextmanager
async def agency_client(settings: Settings, agency: str, *, url: str | None = None,
                        seen: Path | None = None) -> AsyncIterator[AgencyClient]:
    """A connected client for ``agency``, for an agency system using the SDK as a library.

    ``settings`` says where the registry, the private key (``<home>/keys/<agency>.key.json``) and
    NATS are (:meth:`broker.config.Settings.from_env`); ``url`` overrides the NATS address; ``seen``
    is the file remembering what was handed over (default under ``<home>/adapters/<agency>/``).
    """
    from broker.transport.connection import connected, jetstream

    catalogue = Catalogue()
    registry = Registry.load(settings.registry_path, catalogue)
    if registry.get(agency) is None:
        raise BrokerError(f"{agency} is not in the trust registry")
    identity = load_identity(settings.home, agency)
    store = SeenStore(seen or settings.home / "adapters" / agency / "seen.sqlite")
    try:
        async with connected(settings, url or settings.nats.url or "", name=f"sgb-sdk-{agency}", party=agency) as nc:
            yield AgencyClient(nc, jetstream(nc, settings), registry, identity, catalogue, seen=store,
                               request_timeout=settings.nats.request_timeout)
    finally:
        store.close()
