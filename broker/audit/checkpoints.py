"""Checkpoints of an instance's audit chain, made by its writer (:class:`broker.audit.chain.AuditWriter`).

Two kinds, both signed with the broker's Ed25519 signing key:

* the **JWS checkpoint** (block count, record count, head hash, stream sequence, time), on
  ``sg.audit.<instance>.checkpoint`` and in the ``SG_AUDIT_HEADS`` bucket every
  ``[audit] checkpoint_interval`` seconds: a verifier that has seen one can tell when the tail of
  the chain was cut off;
* the **transparency checkpoint** (issue 16), a C2SP ``tlog-checkpoint`` signed note of the
  chain's Merkle tree (origin ``<[audit] tlog_origin>/<instance>``, size, root), on
  ``sg.audit.<instance>.tlog`` every ``[audit] tlog_checkpoint_records`` records or
  ``checkpoint_interval`` seconds, whichever comes first. The note bytes are stored as signed.

One key signs both safely: a JWS signing input (two base64url parts and a dot) never holds a
newline, and a note's text always ends with one, so neither signature can pass for the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

from nats.js import JetStreamContext

from broker.audit import notes
from broker.audit.merkle import Frontier
from broker.config import AuditSettings
from broker.identity.keys import Identity
from broker.timestamps import iso
from broker.transport.errors import nats_failures
from broker.wire import jws
from broker.wire.subjects import AUDIT_HEADS_BUCKET, checkpoint_subject, tlog_subject

CHECKPOINT_TYP: Final = "sg-audit-checkpoint+jwt"


class ChainHead(Protocol):
    """Where a chain stands (:class:`broker.audit.chain.Head`)."""

    @property
    def blocks(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def hash(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def frontier(self) -> tuple[bytes, ...] | None: ...


def build_checkpoint(head: ChainHead, identity: Identity, instance: str, now: float) -> bytes:
    claims = {"typ": "audit-checkpoint", "iss": identity.id, "instance": instance, "blocks": head.blocks,
              "count": head.count, "head": head.hash, "seq": head.seq, "at": iso(now)}
    return jws.sign(claims, identity.signing_key, identity.sig_kid, CHECKPOINT_TYP)


def tlog_origin(settings: AuditSettings, instance: str) -> str:
    """The origin line (and key name) of ``instance``'s transparency checkpoints: one log per chain."""
    return f"{settings.tlog_origin}/{instance}"


def tree_root(head: ChainHead) -> bytes | None:
    """The root of the chain's Merkle tree at ``head``; None when the head does not know its tree."""
    if head.frontier is None:
        return None
    try:
        return Frontier(head.frontier, head.count).root()
    except ValueError:  # a head made up without its tree
        return None


def build_tlog_checkpoint(origin: str, size: int, root: bytes, identity: Identity) -> bytes:
    """The C2SP tlog-checkpoint note of the tree (``size``, ``root``), signed by the broker's key
    under the name ``origin``."""
    text = notes.Checkpoint(origin, size, root).text()
    return notes.sign_note(text, [notes.NoteSigner(origin, identity.signing_key)]).encode("utf-8")


def broker_note_keys(origin: str, public_keys: list[bytes]) -> list[notes.VerifierKey]:
    """The verifier keys of ``origin``'s checkpoints: each Ed25519 public key of the broker, named ``origin``."""
    return [notes.VerifierKey(origin, notes.ED25519, key) for key in public_keys]


class Checkpointer:
    """Publishes one chain's checkpoints when they are due (the writer calls :meth:`maybe` after
    every block and when idle)."""

    def __init__(self, js: JetStreamContext, identity: Identity, instance: str, settings: AuditSettings,
                 clock: Callable[[], float], head: ChainHead, *,
                 on_tlog: Callable[[bytes, int], None] | None = None) -> None:
        self._js = js
        self._on_tlog = on_tlog  # told each stored transparency checkpoint (note, size): the witnesses' cue
        self._identity = identity
        self._instance = instance
        self._settings = settings
        self._clock = clock
        self._origin = tlog_origin(settings, instance)
        now = clock()
        self._checkpointed: ChainHead = head
        self._last = now
        self._tlog_size = head.count
        self._tlog_last = now

    async def maybe(self, head: ChainHead, *, closing: bool = False, force: bool = False) -> None:
        """Publish what is due at ``head``; raises TransportError if NATS did not take it."""
        now = self._clock()
        if head != self._checkpointed and (force or closing or now - self._last >= self._settings.checkpoint_interval):
            await self._jws(head, now)
        grown = head.count - self._tlog_size
        if grown > 0 and (force or closing or grown >= self._settings.tlog_checkpoint_records
                          or now - self._tlog_last >= self._settings.checkpoint_interval):
            await self._tlog(head, now)

    async def _jws(self, head: ChainHead, now: float) -> None:
        token = build_checkpoint(head, self._identity, self._instance, now)
        with nats_failures("checkpoint not stored"):
            await self._js.publish(checkpoint_subject(self._instance), token, timeout=self._settings.publish_deadline,
                                   headers={"Nats-Msg-Id": f"checkpoint-{self._instance}-{head.count}"})
            kv = await self._js.key_value(AUDIT_HEADS_BUCKET)
            await kv.put(self._instance, token)
        self._checkpointed, self._last = head, now

    async def _tlog(self, head: ChainHead, now: float) -> None:
        root = tree_root(head)
        if root is None:
            return
        note = build_tlog_checkpoint(self._origin, head.count, root, self._identity)
        with nats_failures("transparency checkpoint not stored"):
            await self._js.publish(tlog_subject(self._instance), note, timeout=self._settings.publish_deadline,
                                   headers={"Nats-Msg-Id": f"tlog-{self._instance}-{head.count}"})
        self._tlog_size, self._tlog_last = head.count, now
        if self._on_tlog is not None:
            self._on_tlog(note, head.count)
