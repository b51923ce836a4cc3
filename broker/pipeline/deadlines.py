"""Statutory and agreed deadlines, tracked per delivered message.

When a rule carries a deadline, the broker records ``<message id>.<recipient>`` in the KV
bucket ``SG_DEADLINES`` (``<message id>.<recipient>.<clock>`` for a rule's second and later
clocks), in the same acknowledged batch as the delivery; a clock the sender's
side owes (a rapid review after a serious incident notification) is recorded once under each
party that may answer it (:func:`open_group`). A reply of an
expected type from that party, answering that message (``re``), deletes the entry; a
``receipt`` does so only with one of the statuses the entry records (``receiptStatus``, from
the rule when the message was shared, so every instance applies the same rule).

Every broker instance runs a :class:`Scanner`, but only the one holding the lease
``deadline-scanner`` (:mod:`broker.transport.lease`) scans: the others' passes cost one KV read,
so the bucket is not re-read by every instance. The holder finds open entries past due, sends an
``overdue-notice`` to both sides, records an ``overdue`` audit record, and marks the entry overdue
with a compare-and-set, so that a former holder still finishing a pass cannot mark it twice
(duplicate notices are also absorbed by their deterministic message ids).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import orjson
import structlog
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from broker.errors import TransportError
from broker.policy.rulebook import DEFAULT_RECEIPT_STATUS
from broker.transport.errors import WRONG_LAST_SEQUENCE, nats_failures
from broker.transport.lease import Lease
from broker.transport.publisher import Outgoing
from broker.wire.subjects import DEADLINES_BUCKET

log = structlog.get_logger("sgb.deadlines")
BUCKET: Final = DEADLINES_BUCKET
_STREAM: Final = f"KV_{BUCKET}"


def key(message_id: str, recipient: str) -> str:
    return f"{message_id}.{recipient}"


def open_entry(message_id: str, recipient: str, entry: Mapping[str, Any]) -> Outgoing:
    """The KV put recording an open deadline, published with the delivery."""
    k = key(message_id, recipient)
    return Outgoing(f"$KV.{BUCKET}.{k}", orjson.dumps(dict(entry) | {"state": "open"}), f"deadline-{k}")


def open_group(message_id: str, owers: Sequence[str], entry: Mapping[str, Any], *, suffix: str = "") -> list[Outgoing]:
    """One clock owed by the sender's side (``owers``, the sender first): an entry under each, so a
    reply from any of them finds it with one read, but only the sender's is scanned for being overdue;
    the reply closes them all (e.g. a rapid review from any safeguarding partner of the area)."""
    sender = owers[0]
    return [open_entry(message_id, ower + suffix, dict(entry) | {"expectFrom": ower, "owedBy": list(owers),
                                                         "primary": ower == sender}) for ower in owers]


def answers(entry: Mapping[str, Any], typ: str, payload: Mapping[str, Any]) -> bool:
    """Whether a reply of type ``typ`` (its opened ``payload``) meets the deadline ``entry``: the
    entry is open or overdue, the type is expected and, for a receipt, its status is one the
    entry records. An entry written before statuses were recorded gets the rulebook's default."""
    if entry.get("state") not in ("open", "overdue") or typ not in entry.get("expect", ()):
        return False
    if typ != "receipt":
        return True
    return payload.get("status") in (entry.get("receiptStatus") or DEFAULT_RECEIPT_STATUS)


async def met_by(js: JetStreamContext, claims: Mapping[str, Any], payload: Mapping[str, Any],
                 later_clocks: Callable[[str], Sequence[str]]) -> tuple[str, ...]:
    """The deadline keys (after the message id) the message with ``claims`` meets on its ``re``
    (none if it meets none): its sender's, or every party's that owed the same clock (for a
    receipt, only with a status the entry counts, read from the opened ``payload``). A rule's first
    clock is looked up first, then those ``later_clocks(type)`` names (the key suffixes of the
    clocks the rulebook says a message of this type may close); a message that answers nothing
    costs no lookup."""
    if not claims.get("re"):
        return ()
    for suffix in ("", *later_clocks(claims["typ"])):
        with nats_failures("the deadline store"):
            try:
                last = await js.get_last_msg(_STREAM, f"$KV.{BUCKET}.{key(claims['re'], claims['iss'])}{suffix}")
            except NotFoundError:
                continue
        if not last.data:
            continue
        record = orjson.loads(last.data)
        if answers(record, claims["typ"], payload):
            return tuple(party + suffix for party in (record.get("owedBy") or (claims["iss"],)))
    return ()


def close_entry(message_id: str, recipient: str, reply_id: str) -> Outgoing:
    """A KV delete closing the deadline once the expected reply arrives."""
    k = key(message_id, recipient)
    return Outgoing(f"$KV.{BUCKET}.{k}", b"", f"deadline-met-{reply_id}.{recipient}", headers={"KV-Operation": "DEL"})


OverdueHandler = Callable[[Mapping[str, Any]], Awaitable[None]]
LEASE: Final = "deadline-scanner"  # the lease's key in SG_LEASES


class Scanner:
    """Finds passed deadlines. The holder of the lease remembers when each open entry falls due,
    so its pass costs one stream-info request plus a read of only the new or now-due entries; it
    forgets all that when it loses the lease (entries change while another holds it)."""

    def __init__(self, js: JetStreamContext, on_overdue: OverdueHandler, *, lease: Lease | None = None,
                 clock: Callable[[], float] = time.time, on_bug: Callable[[], object] = lambda: None) -> None:
        """Without a ``lease`` every pass scans (one instance alone). ``on_bug`` counts a bug met."""
        self._js = js
        self._on_overdue = on_overdue
        self._lease = lease
        self._clock = clock
        self._on_bug = on_bug
        self._known: dict[str, float | None] = {}  # subject -> due while open, None once closed or skipped
        self.reads = 0  # entries read so far: what the election saves, for tests

    async def run(self, *, interval: float, stop: asyncio.Event) -> None:
        """A pass every ``interval`` seconds until ``stop`` is set, then give the lease up so that
        another instance takes over at once. A NATS failure or a bug ends only its pass."""
        try:
            while not stop.is_set():
                try:
                    await self.step()
                except TransportError as exc:
                    log.warning("deadline scan failed; will retry", error=str(exc))
                except Exception:  # a bug must not stop the deadlines for good: the next pass tries again
                    self._on_bug()
                    log.exception("deadline scan failed (a bug); will retry")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
        finally:
            await self._release()

    async def step(self) -> int | None:
        """One pass: renew or take the lease, and scan if this instance holds it (the number of
        entries marked overdue), else None."""
        if self._lease is not None:
            was = self._lease.held
            if not await self._lease.hold():
                self._known.clear()
                if was:
                    log.info("deadline scanner lease lost to another instance")
                return None
            if not was:
                log.info("deadline scanner lease taken: this instance scans the deadlines")
        return await self.scan_once()

    async def scan_once(self) -> int:
        """One pass whether or not this instance holds the lease, with plain requests (no KV
        watcher: its subscription swallows cancellation in nats-py 2.16, which stalled shutdown)."""
        with nats_failures("the deadline store"):
            return await self._scan()

    async def _release(self) -> None:
        if self._lease is None:
            return
        try:
            await self._lease.release()
        except TransportError as exc:
            log.warning("deadline scanner lease not given up; another instance takes over when it expires",
                        error=str(exc))

    async def _scan(self) -> int:
        try:
            info = await self._js.stream_info(_STREAM, subjects_filter=f"$KV.{BUCKET}.>")
        except NotFoundError:
            return 0
        subjects = info.state.subjects or {}
        now, handled = self._clock(), 0
        for subject in list(self._known):
            if subject not in subjects:
                del self._known[subject]
        for subject in sorted(subjects):
            if subject in self._known and ((due := self._known[subject]) is None or due > now):
                continue  # closed, or not yet due
            try:
                with nats_failures("the deadline store"):
                    handled += await self._check(subject, now)
            except TransportError:
                raise  # NATS: the whole pass is tried again
            except Exception:  # a bug or a malformed entry: the other entries are still checked
                self._on_bug()
                self._known[subject] = None
                log.exception("deadline entry skipped (a bug) until the lease changes hands or the broker restarts",
                              key=subject.removeprefix(f"$KV.{BUCKET}."))
        return handled

    async def _check(self, subject: str, now: float) -> int:
        """Read one entry that is new or due; tell both sides and mark it if it is overdue (1)."""
        self.reads += 1
        try:
            msg = await self._js.get_last_msg(_STREAM, subject)
        except NotFoundError:
            return 0
        record = orjson.loads(msg.data) if msg.data and not (msg.headers or {}).get("KV-Operation") else {}
        if record.get("state") != "open" or record.get("primary") is False:  # closed, or another party's copy
            self._known[subject] = None
            return 0
        due = self._known[subject] = float(record["due"])
        if due > now:
            return 0
        await self._on_overdue(record)
        try:  # compare-and-set: a former holder still finishing its pass cannot mark it too
            await self._js.publish(subject, orjson.dumps(record | {"state": "overdue"}),
                                   headers={"Nats-Expected-Last-Subject-Sequence": str(msg.seq)})
        except APIError as exc:
            if exc.err_code != WRONG_LAST_SEQUENCE:
                raise
            self._known[subject] = None  # marked by another
            return 0
        self._known[subject] = None  # only once marked: a mark NATS did not take is tried again next pass
        return 1
