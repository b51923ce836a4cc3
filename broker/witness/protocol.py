"""The add-checkpoint request of C2SP tlog-witness (C2SP/C2SP at 5ba5ee8, ``tlog-witness.md``):
its body, and the statuses the spec gives each refusal.

Body: ``old <size>\\n``, at most 63 base64 hash lines, an empty line, then the signed checkpoint
note. Every refusal is a :class:`Refused` with its HTTP status and fixed text (never a line of
the request), safe to send and to log.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from broker.audit import merkle, notes
from broker.audit.witnessclient import MAX_PROOF_LINES as MAX_PROOF_LINES
from broker.audit.witnessclient import encode_request as encode_request

_SIZE: Final = re.compile(rb"0|[1-9][0-9]{0,19}")


class Refused(Exception):
    """A request the witness does not cosign: ``status`` and a fixed ``reason``."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason  # a short label for the refusal metric
        self.detail = detail


def malformed(detail: str) -> Refused:
    return Refused(400, "malformed", detail)


@dataclass(frozen=True)
class AddCheckpoint:
    """A parsed request: the old size, the proof, and the note (bytes as sent, not yet verified)."""

    old_size: int
    proof: tuple[bytes, ...]
    note: bytes
    checkpoint: notes.Checkpoint  # parsed from the unverified note text, for its origin


def parse_request(body: bytes) -> AddCheckpoint:
    """400 for anything that is not an add-checkpoint body by the spec."""
    head, sep, note = body.partition(b"\n")
    if not sep or not head.startswith(b"old ") or not _SIZE.fullmatch(head[4:]):
        raise malformed("the first line is not 'old <size>' (decimal, no leading zeroes)")
    old_size = int(head[4:])
    proof: list[bytes] = []
    while True:
        line, sep, rest = note.partition(b"\n")
        if not sep:
            raise malformed("no empty line before the checkpoint")
        note = rest
        if not line:
            break
        if len(proof) == MAX_PROOF_LINES:
            raise malformed(f"more than {MAX_PROOF_LINES} consistency proof lines")
        try:
            digest = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) != merkle.HASH_SIZE or base64.b64encode(digest) != line:
            raise malformed("a consistency proof line is not a base64 SHA-256 hash")
        proof.append(digest)
    try:
        checkpoint = notes.Checkpoint.parse(notes.parse_note(note).text)
    except notes.NoteError as exc:
        raise malformed(str(exc)) from None
    if checkpoint.size >= 2**63:  # SQLite's integers; no log is near it
        raise malformed("the checkpoint size is larger than this witness records")
    if old_size > checkpoint.size:
        raise malformed("the old size is larger than the checkpoint's")
    return AddCheckpoint(old_size, tuple(proof), note, checkpoint)


def open_signed(request: AddCheckpoint,
                log_keys: Mapping[str, tuple[notes.VerifierKey, ...]]) -> notes.SignedCheckpoint:
    """404 for an origin not witnessed; 403 when no trusted key signed it, or a line of a trusted
    key does not verify (the spec: signatures of unknown keys are ignored)."""
    keys = log_keys.get(request.checkpoint.origin)
    if keys is None:
        raise Refused(404, "unknown-origin", "this witness does not witness that log")
    try:
        return notes.open_checkpoint(request.note, origin=request.checkpoint.origin, log_keys=keys)
    except (notes.UnverifiedNote, notes.BadSignature):
        raise Refused(403, "signature", "the checkpoint is not signed by the log's key") from None
    except notes.NoteError as exc:
        raise malformed(str(exc)) from None


def proved_old_root(old_size: int, new_size: int, proof: tuple[bytes, ...], new_root: bytes) -> bytes | None:
    """The root of the first ``old_size`` leaves that ``proof`` binds the new tree to, when it is a
    valid consistency proof for *some* old root; None when it is not (or cannot say: a power-of-two
    old size, whose root the proof leaves out).

    RFC 9162 2.1.4.2 computes the old root ``fr`` from the proof alongside the new one; when the
    new one comes out right, ``fr`` is the log's own tree at the old size, so ``fr`` differing from
    a root the witness cosigned is evidence of a fork, not just a bad proof (which anyone could
    send with a real checkpoint). Confirmed with :func:`merkle.verify_consistency`.
    """
    if not 0 < old_size < new_size or not proof or old_size & (old_size - 1) == 0:
        return None
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            fr = merkle.node_hash(c, fr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        fn >>= 1
        sn >>= 1
    return fr if merkle.verify_consistency(old_size, new_size, proof, fr, new_root) else None
