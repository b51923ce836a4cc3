"""Native records into the broker: map the whole document, build every message, then publish.

:class:`Submitter` is what the adapter's HTTP endpoint and drop folder both call. A document is
mapped whole (a mapper raises :class:`~adapters.formats.mapping.Unmappable` naming the field, and then
nothing is sent); each message gets its sharing block (the adapter's configured default for its
type, with what the record says laid over it), a reply gets ``re``/``thread``/``to`` from what
the adapter handed over, and every message is signed and sealed *before* the first is published.

Each submission has a key: the agency system's ``Idempotency-Key``, or the SHA-256 of the
document. Message ids are derived from the agency, the key and the message's position, so a
submission sent again (the agency system retrying after a timeout, the adapter restarting half
way through) publishes the same ids: JetStream drops copies inside its duplicate window and the
local store skips messages already acknowledged after it. The same key with a different document
is refused (``key-reused``) rather than silently taken for the first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import sqlite3
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import structlog

from adapters.formats import consent
from adapters.formats.mapping import MapContext, Mapper, Outbound, Sent, Unmappable, checked
from adapters.sdk import RECEIPT_SHARING, AgencyClient
from broker.errors import RejectedMessage, TooLarge, TransportError
from broker.store import Migration, Store
from broker.transport.publisher import Outgoing, Publisher
from broker.wire.catalogue import Catalogue
from broker.wire.ids import ADMIN_TYPES
from broker.wire.subjects import ingress_subject

log = structlog.get_logger("sgb.adapter")
_NS: Final = uuid.UUID("0b5e7f0e-2c55-4c1e-9a57-5d0c3f1a8e21")
MAX_MESSAGES: Final = 1000  # per document: a larger export is split by the agency system


class KeyReused(RejectedMessage):
    """The idempotency key was used before for a different document."""

    code = "key-reused"


class Busy(TransportError):
    """Too many documents at once: send it again (same key), nothing was sent."""


@dataclass(frozen=True, slots=True)
class Submitted:
    key: str
    messages: tuple[str, ...]
    types: tuple[str, ...]
    repeated: bool  # every message had been published before (a retry)

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "messages": [{"id": i, "type": t} for i, t in zip(self.messages, self.types,
                                                                                   strict=True)],
                "repeated": self.repeated}


_MIGRATIONS: Final[tuple[Migration, ...]] = ("""
    create table if not exists submissions (key text primary key, digest text not null, at real not null,
                                            messages text not null);
    create table if not exists sent (message text primary key, at real not null);
""",)
_OWN_MIGRATIONS: Final[tuple[Migration, ...]] = ("""
    create table if not exists own (message text primary key, type text not null, thread text, re text,
                                    at real not null);
""",)


class SubmissionStore:
    """Which submissions were taken (a hash of the key → document digest, message ids) and which
    of their messages JetStream has acknowledged. Hashes and ids only: no record content.

    A :class:`broker.store.Store` with ``synchronous=NORMAL``: a power cut may forget the last
    moments' records, and then a resubmission inside JetStream's duplicate window is still
    absorbed there."""

    def __init__(self, path: Path) -> None:
        self._store = Store(path, _MIGRATIONS, name="submissions")

    async def known(self, key: str) -> tuple[str, list[str]] | None:
        """``(document digest, message ids)`` of an earlier submission under ``key``."""
        row = await self._store.read(
            lambda db: db.execute("select digest, messages from submissions where key = ?", (key,)).fetchone())
        return None if row is None else (str(row[0]), list(orjson.loads(row[1])))

    async def begin(self, key: str, digest: str, messages: list[str]) -> None:
        row = (key, digest, time.time(), orjson.dumps(messages).decode())
        await self._store.write(lambda db: db.execute("insert or ignore into submissions values (?, ?, ?, ?)", row))

    async def prune(self, older_than: float) -> int:
        """Forget submissions (and their sent marks) older than ``older_than``: a document sent
        again after that is sent again."""
        def prune(db: sqlite3.Connection) -> int:
            with db:
                db.execute("begin")
                old = [orjson.loads(r[0]) for r in db.execute("select messages from submissions where at < ?",
                                                              (older_than,))]
                db.executemany("delete from sent where message = ?", [(m,) for ms in old for m in ms])
                return db.execute("delete from submissions where at < ?", (older_than,)).rowcount

        return await self._store.write(prune)

    async def sent_among(self, messages: list[str]) -> set[str]:
        def among(db: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for i in range(0, len(messages), 500):  # SQLite's parameter limit
                chunk = messages[i:i + 500]
                marks = ",".join("?" * len(chunk))
                found.update(r[0] for r in db.execute(
                    f"select message from sent where message in ({marks})", chunk))  # noqa: S608 - placeholders only
            return found

        return await self._store.read(among)

    async def mark_sent(self, messages: list[str]) -> None:
        """One transaction for the lot (one sync to disk, not one per message)."""
        now = time.time()

        def mark(db: sqlite3.Connection) -> None:
            with db:
                db.execute("begin")
                db.executemany("insert or ignore into sent values (?, ?)", [(m, now) for m in messages])

        await self._store.write(mark)

    def close(self) -> None:
        self._store.close()


class OwnMessages:
    """The messages with personal data this adapter sent for its agency: id, type, thread and
    ``re`` (never content), so that a later record can follow one up (a conference outcome after
    the strategy discussion whose clock it stops; :attr:`~adapters.formats.mapping.MapContext.sent`).
    Not pruned with the submissions: a review conference may follow a plan's last one for years."""

    def __init__(self, path: Path) -> None:
        self._store = Store(path, _OWN_MIGRATIONS, name="own messages")

    async def remember(self, own: Sequence[Sent]) -> None:
        now = time.time()

        def add(db: sqlite3.Connection) -> None:
            with db:
                db.execute("begin")
                db.executemany("insert or ignore into own values (?, ?, ?, ?, ?)",
                               [(o.message, o.type, o.thread, o.re, now) for o in own])

        await self._store.write(add)

    def sent(self, message: str) -> Sent | None:
        """The agency's own message ``message``, if this adapter sent it. Synchronous, for the
        mappers (they run in a worker thread); never call it from a coroutine."""
        row = self._store.read_blocking(lambda db: db.execute(
            "select message, type, thread, re from own where message = ?", (message,)).fetchone())
        return None if row is None else Sent(row[0], row[1], row[2], row[3])

    def close(self) -> None:
        self._store.close()


@dataclass
class InboundCounts:
    documents: int = 0                      # documents taken (all their messages published)
    messages: int = 0                       # messages published
    refused: dict[str, int] = field(default_factory=dict)  # documents refused, by code


class Submitter:
    def __init__(self, client: AgencyClient, context: MapContext, sharing: Mapping[str, Mapping[str, Any]],
                 state: Path, *, publish_attempts: int = 3, max_message_bytes: int = 512 * 1024,
                 queue_deadline: float = 30.0) -> None:
        self.client = client
        self.sharing = sharing
        self.store = SubmissionStore(state / "submissions.sqlite")
        self.own = OwnMessages(state / "own.sqlite")
        self.context = dataclasses.replace(context, sent=self.own.sent)  # what it sent, it knows
        self.counts = InboundCounts()
        self._sharing_validator = client.catalogue.validator("sharing.v1.json")
        self._publisher = Publisher(client.js, deadline=client.timeout, attempts=publish_attempts)
        self.max_message_bytes = max_message_bytes
        self.queue_deadline = queue_deadline
        self._one_at_a_time = asyncio.Lock()

    def close(self) -> None:
        self.store.close()
        self.own.close()

    async def submit(self, body: bytes, mapper: Mapper, *, key: str | None = None) -> Submitted:
        """Map, build and publish one native document; raises :class:`Unmappable` (nothing sent),
        :class:`KeyReused`, ``too-large``, or :class:`~broker.errors.TransportError` (send the same
        again). One document at a time: the next waits at most ``queue_deadline`` seconds."""
        try:
            async with asyncio.timeout(self.queue_deadline):
                await self._one_at_a_time.acquire()
        except TimeoutError as exc:
            raise Busy("the adapter is busy with other documents; send this one again") from exc
        try:
            done = await self._submit(body, mapper, key)
        except RejectedMessage as exc:
            self.counts.refused[exc.code] = self.counts.refused.get(exc.code, 0) + 1
            log.info("document refused", code=exc.code, field=exc.field, rule=exc.rule)
            raise
        finally:
            self._one_at_a_time.release()
        self.counts.documents += 1
        return done

    async def _submit(self, body: bytes, mapper: Mapper, key: str | None) -> Submitted:
        digest = hashlib.sha256(body).hexdigest()
        key = key or f"sha256:{digest}"
        ref = hashlib.sha256(key.encode()).hexdigest()[:32]  # stored and logged: a key may be an agency's own id
        known = await self.store.known(ref)
        if known is not None and known[0] != digest:
            raise KeyReused("this idempotency key was used for a different document", field="Idempotency-Key")
        # Mapping, checking, signing and sealing are CPU work: off the event loop, so hand-overs,
        # the inbox and the probes carry on while a large export is mapped.
        outbound, built = await asyncio.to_thread(self._map_and_build, body, mapper, key)
        ids = [jti for jti, _, _ in built]
        if known is not None and known[1] != ids:
            raise KeyReused("this document now makes different messages than when it was first sent (the "
                            "registry or the mapping changed); send it under a new key", field="Idempotency-Key")
        await self.store.begin(ref, digest, ids)
        already = await self.store.sent_among(ids)
        unsent = [Outgoing(ingress_subject(self.client.agency), data, jti) for jti, data, _ in built
                  if jti not in already]
        await self._publisher.publish_all(unsent)  # pipelined; PublishTimeout: the caller sends it all again
        await self.own.remember([o for _, _, o in built if o is not None])  # all: a retry may follow a crash
        await self.store.mark_sent([item.msg_id for item in unsent])
        published = len(unsent)
        self.counts.messages += published
        types = tuple(m.typ for m in outbound)
        log.info("submission sent", key_ref=ref[:12], messages=len(ids), published=published,
                 types=sorted(set(types)))
        return Submitted(key, tuple(ids), types, repeated=published == 0)

    def _map_and_build(self, body: bytes, mapper: Mapper,
                       key: str) -> tuple[list[Outbound], list[tuple[str, bytes, Sent | None]]]:
        outbound = mapper(body, self.context)
        if not outbound:
            raise Unmappable("the document holds no record to send", field="/")
        if len(outbound) > MAX_MESSAGES:
            raise Unmappable(f"the document makes more than {MAX_MESSAGES} messages; split it", field="/")
        built = [self._build(m, m.jti or self.message_id(key, i), f"message {i}") for i, m in enumerate(outbound)]
        for i, (_, data, _) in enumerate(built):
            if len(data) > self.max_message_bytes:  # the broker would refuse it after the rest had gone
                raise TooLarge(f"message {i} would be {len(data)} bytes on the wire; the broker takes at most "
                               f"{self.max_message_bytes}: split the record", field=f"message {i}")
        return outbound, built

    def message_id(self, key: str, index: int) -> str:
        return str(uuid.uuid5(_NS, f"{self.client.agency}/{key}/{index}"))

    def _build(self, m: Outbound, jti: str, which: str) -> tuple[str, bytes, Sent | None]:
        """One signed, sealed message and, for one with personal data, what to remember of it;
        ``which`` names it in errors (the mapper named record fields)."""
        default = self.sharing.get(m.typ) or (RECEIPT_SHARING if m.typ in ADMIN_TYPES else None)
        if default is None and m.sharing is None:
            raise Unmappable(f"the adapter has no sharing block configured for {m.typ}", field=which,
                             rule=f"adapter.sharing.{m.typ}")
        mtype = self.client.catalogue.message_type(m.typ, 1)
        if mtype is not None and not mtype.personal_data:  # receipts, rejections, notices: consent does not apply
            sharing = {"consentStatus": "NOT_APPLICABLE"} | dict(default or {}) | dict(m.sharing or {})
        else:  # consent and informing the family: from the record alone, never from a default
            sharing = consent.agency_wide(default or {}) | dict(m.sharing or {})
            if mtype is not None and not mtype.record_only:
                emergency = consent.is_emergency(m.sharing)  # the record's own urgency, not a default's
                consent.require(m.sharing or {}, f"{which}/sharing", emergency=emergency)
                consent.basis_agrees(sharing, f"{which}/sharing")  # the default's basis, the record's consent
                if emergency:  # shared without the record's consent facts; the broker flags it
                    sharing.setdefault("consentStatus", consent.UNRECORDED)
        issue = Catalogue.first_issue(self._sharing_validator, sharing)
        if issue is not None:
            raise Unmappable(f"the sharing block for {m.typ} is not valid ('{issue.keyword}' failed)",
                             field=f"{which}/sharing{issue.pointer}", rule="sharing.v1.json")
        to, re, thread = m.to, m.follows, m.thread
        if m.answers is not None:
            handed = self.context.handed(m.answers)
            if handed is None or handed.message is None:
                raise Unmappable("the message this answers was never handed over by this adapter",
                                 field=f"{which}/answers", rule="adapter.reply-to-known")
            re, thread = handed.message, thread or handed.thread
            to = to or ((handed.sender,) if handed.sender else ())
        if not to:
            raise Unmappable(f"the {m.typ} has no recipient", field=f"{which}/to")
        try:
            jti, data = self.client.build(typ=m.typ, to=list(to), payload=m.payload, sharing=sharing, re=re,
                                          thread=thread, jti=jti)
        except RejectedMessage as exc:  # the SDK's own schema check: the mapper let something through
            raise Unmappable(f"the {m.typ} is not valid: {exc.reason}", field=f"{which}{exc.field or ''}",
                             rule=exc.rule) from exc
        return jti, data, None if m.typ in ADMIN_TYPES else Sent(jti, m.typ, thread, re)


def canonical(body: bytes, context: MapContext) -> list[Outbound]:
    """Mapper for systems that already speak the canonical payloads: one object or a list of
    ``{"type", "to", "payload", "sharing"?, "answers"?, "thread"?}``. A message with personal data
    carries the case's consent facts in its ``sharing`` (``consentStatus``, ``nonConsentReason``
    unless consent was given, ``subjectInformed``); the adapter's defaults never supply them."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Unmappable("the document is not JSON", field="/") from exc
    items = doc if isinstance(doc, list) else [doc]
    out: list[Outbound] = []
    for i, item in enumerate(items):
        where = f"/{i}" if isinstance(doc, list) else ""
        if not isinstance(item, dict):
            raise Unmappable("each message is an object", field=where or "/")
        typ, to, payload = item.get("type"), item.get("to", []), item.get("payload")
        if not isinstance(typ, str) or context.catalogue.message_type(typ, 1) is None:
            raise Unmappable("unknown message type", field=f"{where}/type")
        if not isinstance(to, list) or not all(isinstance(t, str) and context.registry.get(t) for t in to):
            raise Unmappable("recipients are agency ids in the trust registry", field=f"{where}/to")
        if not isinstance(payload, dict):
            raise Unmappable("the payload is an object", field=f"{where}/payload")
        sharing, answers, thread = item.get("sharing"), item.get("answers"), item.get("thread")
        for name, value in (("sharing", sharing), ("answers", answers), ("thread", thread)):
            if value is not None and not isinstance(value, dict if name == "sharing" else str):
                raise Unmappable(f"{name} has the wrong type", field=f"{where}/{name}")
        mtype = context.catalogue.message_type(typ, 1)
        if mtype is not None and mtype.personal_data and not mtype.record_only:  # the case's consent facts
            consent.require(sharing or {}, f"{where}/sharing", emergency=consent.is_emergency(sharing))
        out.append(checked(context.catalogue, typ, tuple(to), payload, f"{where}/payload", sharing=sharing,
                           answers=answers, thread=thread))
    return out
