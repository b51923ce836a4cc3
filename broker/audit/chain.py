"""The tamper-evident audit log: signed, hash-chained blocks of records, one chain per instance.

Every record carries ``n`` (its place in the instance's chain) and ``prev`` (the SHA-256 of the
record before it, over canonical JSON). Records are written in *blocks* by group commit: the
records of all messages that finished while the previous block was being stored go into the
next block, which the broker signs once (a JWS over the whole block, so every record is
covered by the signature) and appends to ``sg.audit.<instance>`` with
``Nats-Expected-Last-Subject-Sequence``, so two writers can never fork one chain: the loser
gets "wrong last sequence", re-reads the head and chains onto it.

Each chain is also an RFC 9162 Merkle tree (issue 16, docs/transparency.md): leaf ``i`` is the
canonical JSON of record ``n = i``, exactly as the block carries it. Every block states the tree
after it (``"tree": {"size", "root", "frontier"}``); the frontier (the roots of the tree's perfect
subtrees) is all the writer keeps, and a restarted writer takes it from the last block.

The writer's signed checkpoints, the JWS ones and the C2SP transparency checkpoints of the tree,
are made by :mod:`broker.audit.checkpoints`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import structlog
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from broker.audit.checkpoints import Checkpointer
from broker.audit.merkle import Frontier, leaf_hash
from broker.audit.tree import rebuild_frontier, stated_frontier
from broker.config import AuditSettings
from broker.errors import PublishTimeout, TransportError
from broker.identity.keys import Identity
from broker.timestamps import iso
from broker.transport.errors import NATS_FAILURES, WRONG_LAST_SEQUENCE, describe, nats_failures, quietly
from broker.wire import jws
from broker.wire.subjects import AUDIT, audit_subject

log = structlog.get_logger("sgb.audit")

GENESIS: Final = "0" * 64
BLOCK_TYP: Final = "sg-audit-block+jwt"
EXPORT_TYP: Final = "sg-audit-export+jwt"


def canonical(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def record_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


# Where and when a record was written, as opposed to what it records: a message processed again
# after a crash (at-least-once) records the same decision under the same id with other values here.
_PLACE: Final = frozenset({"n", "prev", "at", "instance"})


def decision_digest(record: Mapping[str, Any]) -> str:
    """What a record says, without where and when it was written: equal for a repeat."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k not in _PLACE})).hexdigest()


# -- signing ------------------------------------------------------------------------------


def sign(claims: Mapping[str, Any], identity: Identity, typ: str) -> bytes:
    """One of the broker's own ``typ`` tokens (a block, a checkpoint, an export manifest)."""
    return jws.sign(claims, identity.signing_key, identity.sig_kid, typ)


# -- chain ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Head:
    """Where a chain stands: blocks and records so far, the last record's hash, the stream
    sequence of the last block (0: none yet), and the frontier of the chain's Merkle tree (None:
    not known, as after a block written before blocks carried their tree)."""

    blocks: int = 0
    count: int = 0
    hash: str = GENESIS
    seq: int = 0
    frontier: tuple[bytes, ...] | None = ()


class _Block:
    """Records chained onto a head, each serialised once (canonical JSON): the bytes it is hashed by
    are the bytes the block carries and signs, and their length is what the writer's size limit
    counts. (A verifier reads the records and hashes them again, so the member order inside a
    stored record does not matter to it; these are sorted, as hashed.)"""

    __slots__ = ("hash", "head", "parts", "size", "tree")

    def __init__(self, head: Head) -> None:
        self.head = head
        self.hash = head.hash
        self.parts: list[bytes] = []
        self.size = 0
        self.tree: Frontier | None = None
        if head.frontier is not None:
            with contextlib.suppress(ValueError):  # a head made up without its tree: no tree
                self.tree = Frontier(head.frontier, head.count)

    def add(self, records: Iterable[Mapping[str, Any]]) -> None:
        parts, h, n = self.parts, self.hash, self.head.count + len(self.parts)
        for record in records:
            data = canonical({**record, "n": n, "prev": h})
            h = hashlib.sha256(data).hexdigest()
            if self.tree is not None:
                self.tree.append(leaf_hash(data))
            parts.append(data)
            self.size += len(data)
            n += 1
        self.hash = h

    def sign(self, identity: Identity, instance: str, now: float) -> tuple[bytes, Head]:
        head = self.head
        claims = {"typ": "audit-block", "iss": identity.id, "instance": instance, "block": head.blocks,
                  "first": head.count, "count": len(self.parts), "prev": head.hash, "head": self.hash,
                  "at": iso(now)}
        tree = self.tree
        if tree is not None:
            claims["tree"] = {"size": tree.size, "root": tree.root().hex(), "frontier": [h.hex() for h in tree.hashes]}
        body = b"".join((orjson.dumps(claims)[:-1], b',"records":[', b",".join(self.parts), b"]}"))
        token = jws.sign_serialised(body, identity.signing_key, identity.sig_kid, BLOCK_TYP)
        return token, Head(head.blocks + 1, head.count + len(self.parts), self.hash, head.seq,
                           None if tree is None else tree.hashes)


def build_block(records: Sequence[Mapping[str, Any]], head: Head, identity: Identity, instance: str,
                now: float) -> tuple[bytes, Head]:
    """The signed block of ``records`` chained onto ``head``, and the head after it."""
    block = _Block(head)
    block.add(records)
    return block.sign(identity, instance, now)


# -- the writer -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    records: list[dict[str, Any]]
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class AuditWriter:
    """Appends records to this instance's chain; :meth:`append` returns once they are durable."""

    def __init__(self, js: JetStreamContext, identity: Identity, instance: str, settings: AuditSettings,
                 *, clock: Callable[[], float] = time.time, on_block: Callable[[], None] | None = None,
                 on_tlog: Callable[[bytes, int], None] | None = None) -> None:
        self._on_block = on_block
        self._on_tlog = on_tlog
        self._js = js
        self._identity = identity
        self._instance = instance
        self._subject = audit_subject(instance)
        self._settings = settings
        self._clock = clock
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue(maxsize=settings.max_pending + 1)
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self.head = Head()
        self._checkpoints: Checkpointer | None = None
        self.blocks_written = 0

    async def __aenter__(self) -> AuditWriter:
        self.head = await self._stored_head()
        self._checkpoints = Checkpointer(self._js, self._identity, self._instance, self._settings, self._clock,
                                         self.head, on_tlog=self._on_tlog)
        self._task = asyncio.create_task(self._run(), name=f"sgb-audit-{self._instance}")
        log.info("audit chain opened", instance=self._instance, blocks=self.head.blocks, records=self.head.count)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)  # wakes the writer; it finishes what is queued and stops
            try:
                await asyncio.wait_for(self._task, self._settings.publish_deadline * (self._settings.attempts + 1))
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        with contextlib.suppress(TransportError):
            await self._checkpoint(closing=True)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def append(self, records: list[dict[str, Any]]) -> None:
        """Queue records for the next block and wait until JetStream has stored it."""
        if not records:
            return
        if self._task is None or self._task.done():
            raise TransportError("the audit writer is not running")
        pending = _Pending(records)
        deadline = self._settings.publish_deadline * (self._settings.attempts + 1)
        try:
            if self._queue.full():  # else put_nowait: no timer and no task for the common case
                await asyncio.wait_for(self._queue.put(pending), deadline)
            else:
                self._queue.put_nowait(pending)
            async with asyncio.timeout(deadline):
                await asyncio.shield(pending.done)
        except TimeoutError as exc:
            raise PublishTimeout("audit records were not stored in time") from exc

    async def _run(self) -> None:
        while not (self._closing.is_set() and self._queue.empty()):
            try:
                first = await asyncio.wait_for(self._queue.get(), self._settings.checkpoint_interval / 2)
            except TimeoutError:
                await self._maybe_checkpoint()
                continue
            if first is None:
                continue
            batch, block = [first], _Block(self.head)
            block.add(first.records)
            while not self._queue.empty() and len(batch) < self._settings.block_records:
                item = self._queue.get_nowait()
                if item is None:
                    continue
                batch.append(item)
                block.add(item.records)
                if block.size > self._settings.block_bytes:
                    break
            try:
                await self._commit([r for item in batch for r in item.records], block)
            except TransportError as exc:
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
            else:
                for item in batch:
                    if not item.done.done():
                        item.done.set_result(None)
            await self._maybe_checkpoint()

    async def _commit(self, records: list[dict[str, Any]], block: _Block) -> None:
        """Append ``block`` (``records`` chained onto :attr:`head`); chained again onto the stored
        head if another writer appended first."""
        token, new_head = block.sign(self._identity, self._instance, self._clock())
        error = "no acknowledgement"
        for attempt in range(self._settings.attempts):
            headers = {"Nats-Expected-Last-Subject-Sequence": str(self.head.seq),
                       "Nats-Msg-Id": f"audit-{self._instance}-{new_head.blocks}-{new_head.hash[:32]}"}
            try:
                ack = await self._js.publish(self._subject, token, timeout=self._settings.publish_deadline,
                                             headers=headers)
            except APIError as exc:
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    error = f"{type(exc).__name__} {exc.err_code}"
                else:  # someone else appended (or our earlier attempt landed): chain onto what is there
                    stored = await self._stored_head()
                    if stored.hash == new_head.hash and stored.count == new_head.count:
                        self.head = stored
                        self.blocks_written += 1
                        return
                    log.warning("audit chain moved under us; re-chaining", instance=self._instance,
                                stored_blocks=stored.blocks)
                    self.head = stored
                    token, new_head = build_block(records, self.head, self._identity, self._instance, self._clock())
                    continue
            except NATS_FAILURES as exc:  # publish again; PublishTimeout when attempts run out
                error = describe(exc)
            else:
                self.head = dataclasses.replace(new_head, seq=ack.seq)
                self.blocks_written += 1
                if self._on_block is not None:
                    self._on_block()
                return
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
        raise PublishTimeout(f"audit block not stored after {self._settings.attempts} attempts ({error})")

    async def _maybe_checkpoint(self) -> None:
        try:
            await self._checkpoint(closing=self._closing.is_set())
        except TransportError as exc:
            log.warning("audit checkpoint not stored; will try again", error=str(exc))

    async def _checkpoint(self, *, closing: bool = False, force: bool = False) -> None:
        if self._checkpoints is not None:
            await self._checkpoints.maybe(self.head, closing=closing, force=force)

    async def checkpoint_now(self) -> None:
        """Publish the checkpoints of the current head (``sgb audit`` and tests)."""
        await self._checkpoint(force=True)

    async def _stored_head(self) -> Head:
        """The stored head, with its tree: rebuilt once from the chain if its last block has none."""
        head = await read_head(self._js, self._instance)
        if head.frontier is None:
            frontier = await rebuild_frontier(self._js, self._instance, head.count, head.seq)
            head = Head(head.blocks, head.count, head.hash, head.seq, frontier)
        return head


async def read_head(js: JetStreamContext, instance: str) -> Head:
    """The head of ``instance``'s chain, from the last block stored on its subject."""
    with nats_failures("cannot read the audit chain head"):
        try:
            msg = await js.get_last_msg(AUDIT, audit_subject(instance))
        except NotFoundError:
            return Head()
    _, claims = jws.unverified(msg.data or b"")
    count = int(claims["first"]) + int(claims["count"])
    return Head(int(claims["block"]) + 1, count, str(claims["head"]), int(msg.seq or 0),
                stated_frontier(claims.get("tree"), count))


@dataclass(frozen=True, slots=True)
class Stored:
    seq: int
    subject: str
    data: bytes
    time: float


async def read_stream(js: JetStreamContext, *, stream: str = AUDIT, start: int = 1,
                      idle: float = 2.0) -> AsyncIterator[Stored]:
    """Every message in the audit stream from ``start``, in stream order (ordered consumer)."""
    with nats_failures("cannot read the audit stream"):
        try:
            info = await js.stream_info(stream)
        except NotFoundError as exc:
            raise TransportError(f"there is no {stream} stream here") from exc
        last = info.state.last_seq
        if info.state.messages == 0 or last < start:
            return
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
        sub = await js.subscribe("sg.audit.>", stream=stream, ordered_consumer=True, config=config)
    try:
        while True:
            with nats_failures("cannot read the audit stream"):
                try:
                    msg = await asyncio.wait_for(sub.next_msg(timeout=idle), idle + 1)
                except TimeoutError:
                    return  # the stream's own count includes messages it can no longer read
            meta = msg.metadata
            yield Stored(meta.sequence.stream, msg.subject, msg.data, meta.timestamp.timestamp())
            if meta.sequence.stream >= last:
                return
    finally:
        with quietly():
            await sub.unsubscribe()


def is_checkpoint(subject: str) -> bool:
    """A JWS checkpoint (``sg.audit.<instance>.checkpoint``)."""
    return subject.endswith(".checkpoint")


def is_tlog(subject: str) -> bool:
    """A transparency checkpoint note (``sg.audit.<instance>.tlog``)."""
    return subject.endswith(".tlog")


def is_cosigned(subject: str) -> bool:
    """A transparency checkpoint with witnesses' cosignatures (``sg.audit.<instance>.cosigned``)."""
    return subject.endswith(".cosigned")


def is_block(subject: str) -> bool:
    """An audit block (``sg.audit.<instance>``): no kind of checkpoint."""
    return not (is_checkpoint(subject) or is_tlog(subject) or is_cosigned(subject))


def block_records(data: bytes) -> list[dict[str, Any]]:
    """The records of a stored block, unverified (for listing; verification is :mod:`broker.audit.verify`)."""
    _, claims = jws.unverified(data)
    records = claims.get("records")
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []
