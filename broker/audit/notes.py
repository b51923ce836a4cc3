"""Signed notes, checkpoints and cosignatures in the C2SP formats (issue 16): signing and co-signing.

Parsing and verifying notes, keys and checkpoints live in :mod:`broker.audit.signednote`, packed into the
verifier an auditor runs without the broker (standard library and ``cryptography`` only); they are
imported here so that the broker uses one name for each. That file holds only what checking a proof
bundle needs, so this module adds what only the log and its witnesses do: format vkeys, sign notes
(type 0x01), co-sign checkpoints and verify cosignatures (cosignature/v1, type 0x04, with
:class:`VerifierKey`, :func:`open_checkpoint` and :func:`verify_cosignature`). Specs: github.com/C2SP/C2SP at
5ba5ee8, ``signed-note.md``, ``tlog-checkpoint.md``, ``tlog-cosignature.md``.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Sequence
from typing import ClassVar, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import signednote
from broker.audit.signednote import (
    ED25519,
    MAX_NOTE_BYTES,
    MAX_SIGNATURES,
    BadSignature,
    Checkpoint,
    MalformedCheckpoint,
    MalformedKey,
    MalformedNote,
    Note,
    NoteError,
    OpenedNote,
    Signature,
    SignedCheckpoint,
    UnverifiedNote,
    Verified,
    WrongOrigin,
    key_id,
    note_text,
    open_note,
    parse_note,
    valid_name,
)

__all__ = [
    "COSIGNATURE_V1", "ED25519", "MAX_NOTE_BYTES", "MAX_SIGNATURES", "MAX_TIMESTAMP", "BadSignature", "Checkpoint",
    "Cosigner", "MalformedCheckpoint", "MalformedKey", "MalformedNote", "Note", "NoteError", "NoteSigner",
    "OpenedNote", "Signature", "SignedCheckpoint", "UnverifiedNote", "Verified", "VerifierKey", "WrongOrigin",
    "cosignature_message", "cosignature_timestamp", "key_id", "open_checkpoint", "open_note",
    "parse_note", "sign_note", "valid_name", "verify_cosignature",
]

COSIGNATURE_V1: Final = 0x04  # tlog-cosignature.md: timestamped Ed25519 checkpoint cosignature
MAX_TIMESTAMP: Final = 2**63 - 1  # tlog-cosignature.md: "It MUST NOT exceed 2^63 - 1"


def cosignature_message(text: bytes, timestamp: int) -> bytes:
    """tlog-cosignature.md, "Ed25519 signed message": the whole checkpoint text, extensions too."""
    return f"cosignature/v1\ntime {timestamp}\n".encode("ascii") + text


def cosignature_timestamp(signature: bytes) -> int | None:
    """Of ``u64 timestamp || 64-byte Ed25519 signature`` (tlog-cosignature.md); None if not that."""
    if len(signature) != 72:
        return None
    timestamp = int.from_bytes(signature[:8], "big")
    return timestamp if timestamp <= MAX_TIMESTAMP else None


class VerifierKey(signednote.VerifierKey):
    """The offline verifier's key, with witnesses' keys (type 0x04, cosignatures) too; ``str()`` is
    its vkey. The offline checker trusts only the log's keys (0x01) and ignores cosignatures."""

    SIG_TYPES: ClassVar[tuple[int, ...]] = (ED25519, COSIGNATURE_V1)

    def __str__(self) -> str:
        material = base64.b64encode(bytes([self.sig_type]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id:08x}+{material}"

    def verify(self, text: bytes, signature: bytes) -> bool:
        if self.sig_type != COSIGNATURE_V1:
            return super().verify(text, signature)
        stamp = cosignature_timestamp(signature)
        return stamp is not None and super().verify(cosignature_message(text, stamp), signature[8:])

    def timestamp(self, signature: bytes) -> int | None:
        return cosignature_timestamp(signature) if self.sig_type == COSIGNATURE_V1 else None


def open_checkpoint(data: bytes | str, *, origin: str, log_keys: Iterable[signednote.VerifierKey],
                    witness_keys: Iterable[signednote.VerifierKey] = ()) -> SignedCheckpoint:
    """:func:`broker.audit.signednote.open_checkpoint`, once ``witness_keys`` are known to be
    cosignature/v1 keys: a witness's note key must not pass for its cosignatures."""
    witnesses = tuple(witness_keys)
    if any(k.sig_type != COSIGNATURE_V1 for k in witnesses):
        raise MalformedKey("witness keys are cosignature/v1 keys (signature type 0x04)")
    return signednote.open_checkpoint(data, origin=origin, log_keys=log_keys, witness_keys=witnesses)


class NoteSigner:
    """Signs note texts with an Ed25519 key (type 0x01), as the log signs its checkpoints.
    ``key`` is the verifier key to publish."""

    SIG_TYPE: ClassVar[int] = ED25519

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self.key = VerifierKey(name, self.SIG_TYPE, private_key.public_key().public_bytes_raw())
        self._private = private_key

    def sign(self, text: str) -> Signature:
        return Signature(self.key.name, self.key.key_id, self._private.sign(note_text(text)))


class Cosigner(NoteSigner):
    """cosignature/v1 (type 0x04): a witness states that at ``timestamp`` this is the largest
    consistent tree it saw of the log (it checks consistency; this only signs). One key per
    cosigner: the message names no cosigner (tlog-cosignature.md)."""

    SIG_TYPE: ClassVar[int] = COSIGNATURE_V1

    def sign(self, text: str, timestamp: int | None = None) -> Signature:
        Checkpoint.parse(text)  # type 0x04 is for checkpoints only (signed-note.md)
        when = int(time.time()) if timestamp is None else timestamp
        if not 0 <= when <= MAX_TIMESTAMP:
            raise NoteError("a cosignature timestamp is between 0 and 2^63 - 1")
        signed = self._private.sign(cosignature_message(note_text(text), when))
        return Signature(self.key.name, self.key.key_id, when.to_bytes(8, "big") + signed)


def sign_note(text: str, signers: Sequence[NoteSigner], existing: Iterable[Signature] = ()) -> str:
    """``existing`` lines but the signers' own, then new ones (the order of sumdb/note's Sign)."""
    signing = {(s.key.name, s.key.key_id) for s in signers}
    kept = tuple(s for s in existing if (s.name, s.key_id) not in signing)
    return str(Note(text, kept + tuple(s.sign(text) for s in signers)))


def verify_cosignature(key: VerifierKey, text: str, line: str) -> int:
    """One cosignature line, as a tlog-witness witness returns it, over a checkpoint text;
    returns its timestamp. A line of another key is refused here: the caller asked for this one."""
    if key.sig_type != COSIGNATURE_V1:
        raise MalformedKey("not a cosignature/v1 key (signature type 0x04)")
    sig = Signature.parse_line(line)  # exactly one line
    Checkpoint.parse(text)
    return open_note(text + "\n" + sig.line(), [key]).verified[0].timestamp or 0
