"""Signed notes, checkpoints and cosignatures in the C2SP formats (issue 16): signing and co-signing.

Parsing and verifying notes, keys, checkpoints and cosignatures live in :mod:`broker.audit.signednote`,
packed into the verifier an auditor runs without the broker (standard library and ``cryptography``
only); they are imported here so that the broker uses one name for each. This module adds what only
the log and its witnesses do: format vkeys (:class:`VerifierKey`, either type), sign notes (type
0x01), co-sign checkpoints (cosignature/v1, type 0x04) and check one cosignature line a witness
returned (:func:`verify_cosignature`). Specs: github.com/C2SP/C2SP at 5ba5ee8, ``signed-note.md``,
``tlog-checkpoint.md``, ``tlog-cosignature.md``.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Sequence
from typing import ClassVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import signednote
from broker.audit.signednote import (
    COSIGNATURE_V1,
    ED25519,
    MAX_NOTE_BYTES,
    MAX_SIGNATURES,
    MAX_TIMESTAMP,
    BadSignature,
    Checkpoint,
    CosignatureKey,
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
    cosignature_message,
    cosignature_timestamp,
    key_id,
    note_text,
    open_checkpoint,
    open_note,
    parse_note,
    valid_name,
)

__all__ = [
    "COSIGNATURE_V1", "ED25519", "MAX_NOTE_BYTES", "MAX_SIGNATURES", "MAX_TIMESTAMP", "BadSignature", "Checkpoint",
    "CosignatureKey", "Cosigner", "MalformedCheckpoint", "MalformedKey", "MalformedNote", "Note", "NoteError",
    "NoteSigner", "OpenedNote", "Signature", "SignedCheckpoint", "UnverifiedNote", "Verified", "VerifierKey",
    "WrongOrigin", "cosignature_message", "cosignature_timestamp", "key_id", "open_checkpoint", "open_note",
    "parse_note", "sign_note", "valid_name", "verify_cosignature",
]

class VerifierKey(signednote.VerifierKey):
    """A log's key (type 0x01) or a witness's (type 0x04, cosignatures); ``str()`` is its vkey. The
    offline checker takes each type apart (``--key``, ``--witness``), the broker both here."""

    SIG_TYPES: ClassVar[tuple[int, ...]] = (ED25519, COSIGNATURE_V1)

    def __str__(self) -> str:
        material = base64.b64encode(bytes([self.sig_type]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id:08x}+{material}"


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
