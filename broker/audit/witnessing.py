"""Asking witnesses to cosign this instance's transparency checkpoints (issue 16, part 4).

After the writer stores a C2SP tlog checkpoint (:class:`broker.audit.checkpoints.Checkpointer`
calls :meth:`Witnessing.notify`), a background task sends it to every witness of ``[audit]
witnesses`` with the RFC 9162 consistency proof from the size that witness last cosigned
(tlog-witness, :func:`broker.audit.witnessclient.request_cosignature`), verifies each returned line
with the witness's configured key, and stores the checkpoint with the verified lines on
``sg.audit.<instance>.cosigned``. ``/readyz`` and the IG integrity page show whether the latest
checkpoint has the quorum (:meth:`Witnessing.check`).

The proofs need the chain's tree: a :class:`~broker.audit.merkle.MerkleTree` of this instance's
leaves, read from the chain as stored (its own subject only): all of it when the broker starts,
then only the blocks since, before each request. 32 bytes × (2n − popcount n), about 64 bytes a
record, held only when witnesses are configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import structlog
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from prometheus_client import Counter

from broker.audit import notes
from broker.audit.merkle import MerkleTree
from broker.audit.tree import record_leaf
from broker.audit.witnessclient import WitnessConflict, WitnessError, request_cosignature
from broker.config import AuditSettings
from broker.errors import InvalidEnvelope, TransportError
from broker.http.probes import Check
from broker.transport.errors import nats_failures, quietly
from broker.wire import jws
from broker.wire.subjects import AUDIT, audit_subject, cosigned_subject, tlog_subject
from broker.witness_settings import AuditWitness

log = structlog.get_logger("sgb.audit.witness")


@dataclass(slots=True)
class _Witness:
    config: AuditWitness
    key: notes.VerifierKey
    size: int = 0  # the size it last cosigned, as far as this broker knows (a 409 corrects it)


@dataclass(frozen=True, slots=True)
class Latest:
    """The latest checkpoint this instance stored, and what the witnesses made of it."""

    size: int
    at: float
    cosigned: tuple[str, ...] = ()  # the names of the witnesses whose cosignature verified
    done: bool = False              # every witness was asked


class Witnessing:
    """The witness task of one instance chain; inert (no tree, no task) without witnesses or with
    a quorum of 0. ``refusals`` counts 422 answers (a fork the witness saw), by witness name."""

    def __init__(self, js: JetStreamContext, instance: str, settings: AuditSettings, refusals: Counter, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._js = js
        self._instance = instance
        self._settings = settings
        self._refusals = refusals
        self._clock = clock
        self.enabled = settings.quorum > 0
        self._witnesses = [_Witness(w, notes.VerifierKey.parse(w.key)) for w in settings.witnesses]
        self.tree = MerkleTree()
        self._seq = 0  # the last stream sequence of the chain read into the tree
        self._pending: tuple[bytes, int] | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self.latest: Latest | None = None

    async def __aenter__(self) -> Witnessing:
        if not self.enabled:
            return self
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._run(), name=f"sgb-witnessing-{self._instance}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            _, late = await asyncio.wait([self._task], timeout=self._settings.witness_deadline * 2)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def notify(self, note: bytes, size: int) -> None:
        """A transparency checkpoint was stored (the writer calls this): witness it next."""
        if not self.enabled:
            return
        self._pending = (note, size)
        self.latest = Latest(size, self._clock())
        self._wake.set()

    def check(self, now: float | None = None) -> Check | None:
        """The ``witnesses`` readiness check: None without witnesses; ``warn`` once the latest
        checkpoint has gone without the quorum for twice the checkpoint interval."""
        if not self.enabled:
            return None
        now = self._clock() if now is None else now
        quorum, configured = self._settings.quorum, len(self._witnesses)
        latest = self.latest
        if latest is None:
            return Check("ok", f"no checkpoint to witness yet (quorum {quorum} of {configured})")
        have = len(latest.cosigned)
        said = f"the checkpoint of size {latest.size} has {have} of {quorum} cosignatures needed"
        if have >= quorum:
            return Check("ok", f"{said} ({', '.join(latest.cosigned)})")
        if now - latest.at > 2 * self._settings.checkpoint_interval:
            return Check("warn", f"{said}: a witness is down or refuses (see the log)")
        return Check("ok", f"{said}; asking the witnesses")

    async def _run(self) -> None:
        await self._resume()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.checkpoint_interval)
            self._wake.clear()
            pending = self._pending
            if pending is None or self._stop.is_set():
                continue
            try:
                result = await self.witness(*pending)
            except Exception:  # a bug, or a chain or store NATS did not answer: tried again in an interval
                log.exception("witnessing a checkpoint failed; tried again next time", instance=self._instance,
                              size=pending[1])
            else:  # short of the quorum (a witness down): asked again each interval until a newer one
                if self._pending is pending and len(result.cosigned) >= self._settings.quorum:
                    self._pending = None

    async def _resume(self) -> None:
        """Read the chain into the tree, and witness the latest stored checkpoint (a restart)."""
        try:
            with nats_failures("cannot read the latest transparency checkpoint"):
                try:
                    async with asyncio.timeout(self._settings.publish_deadline):
                        msg = await self._js.get_last_msg(AUDIT, tlog_subject(self._instance))
                except NotFoundError:
                    return
            note = msg.data or b""
            size = notes.Checkpoint.parse(notes.parse_note(note).text).size
        except (TransportError, notes.NoteError) as exc:
            log.warning("the latest transparency checkpoint was not read; witnessing starts with the next",
                        instance=self._instance, error=str(exc))
            return
        if self._pending is None:
            self._pending = (note, size)
            self.latest = Latest(size, self._clock())
            self._wake.set()

    async def witness(self, note: bytes, size: int) -> Latest:
        """Ask every witness to cosign ``note`` (a checkpoint of size ``size`` this instance
        signed), store it with the cosignatures that verify, and return what came of it."""
        async with self._lock:
            await self._catch_up(size)
            text = notes.parse_note(note).text
            lines: list[notes.Signature] = []
            cosigned: list[str] = []
            for witness in self._witnesses:
                line = await self._ask(witness, note, text, size)
                if line is not None:
                    lines.append(notes.Signature.parse_line(line))
                    cosigned.append(witness.config.name)
            if lines:
                await self._store(note, text, size, lines)
            result = Latest(size, self.latest.at if self.latest and self.latest.size == size else self._clock(),
                            tuple(cosigned), True)
            if self.latest is None or self.latest.size <= size:
                self.latest = result
            return result

    async def _ask(self, witness: _Witness, note: bytes, text: str, size: int) -> str | None:
        """One witness's verified cosignature line, or None (logged)."""
        name = witness.config.name
        old = witness.size if witness.size <= size else 0
        try:
            try:
                got = await self._request(witness, note, old, size)
            except WitnessConflict as conflict:
                if conflict.size > size:
                    log.error("witness: it cosigned a larger tree than this checkpoint", witness=name,
                              instance=self._instance, size=size, witness_size=conflict.size)
                    return None
                old = conflict.size
                got = await self._request(witness, note, old, size)
        except WitnessError as exc:
            if exc.status == 422:
                self._refusals.labels(name).inc()
                log.error("witness: refused the checkpoint as inconsistent with what it cosigned: a fork",
                          witness=name, instance=self._instance, size=size, old_size=old)
            else:
                log.warning("witness: no cosignature", witness=name, instance=self._instance, size=size,
                            error=str(exc))
            return None
        for line in got:
            try:
                notes.verify_cosignature(witness.key, text, line)
            except notes.NoteError:
                continue
            witness.size = size
            return line
        log.error("witness: answered without a cosignature that verifies with its configured key",
                  witness=name, instance=self._instance, size=size)
        return None

    async def _request(self, witness: _Witness, note: bytes, old: int, size: int) -> list[str]:
        if self._session is None:
            raise WitnessError("the witnessing task is not running")
        proof = self.tree.consistency_proof(old, size)
        return await request_cosignature(self._session, witness.config.url, note, old, proof,
                                         timeout=self._settings.witness_deadline)

    async def _store(self, note: bytes, text: str, size: int, lines: list[notes.Signature]) -> None:
        own = notes.parse_note(note).signatures
        cosigned = notes.sign_note(text, [], own + tuple(lines)).encode("utf-8")
        with nats_failures("cosigned checkpoint not stored"):
            await self._js.publish(cosigned_subject(self._instance), cosigned,
                                   timeout=self._settings.publish_deadline,
                                   headers={"Nats-Msg-Id": f"cosigned-{self._instance}-{size}"})

    async def _catch_up(self, size: int) -> None:
        """Read the chain's blocks stored since the last read into the tree, until it has ``size``
        leaves (TransportError if the chain does not read back that far)."""
        if self.tree.size >= size:
            return
        subject = audit_subject(self._instance)
        with nats_failures("cannot read the audit chain"):
            try:
                async with asyncio.timeout(self._settings.publish_deadline):
                    last = (await self._js.get_last_msg(AUDIT, subject)).seq or 0
            except NotFoundError:
                last = 0
            if last > self._seq:
                config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self._seq + 1)
                sub = await self._js.subscribe(subject, stream=AUDIT, ordered_consumer=True, config=config)
                try:
                    while self._seq < last:
                        msg = await sub.next_msg(timeout=self._settings.publish_deadline)
                        self._seq = msg.metadata.sequence.stream
                        self._add(msg.data)
                finally:
                    with quietly():
                        await sub.unsubscribe()
        if self.tree.size < size:
            raise TransportError(f"the chain reads back {self.tree.size} records, fewer than the checkpoint's "
                                 f"{size}")

    def _add(self, block: bytes) -> None:
        try:
            records = jws.unverified(block)[1].get("records")
        except InvalidEnvelope:
            return
        for record in records if isinstance(records, list) else ():
            if isinstance(record, dict) and record.get("n") == self.tree.size:
                self.tree.append(record_leaf(record))
