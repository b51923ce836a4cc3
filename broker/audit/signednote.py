"""C2SP signed notes and tlog checkpoints, read and verified (issue 16; docs/transparency.md).

The one home of parsing and verifying them, witnesses' cosignatures too: :mod:`broker.audit.offline`
checks proofs and their cosignature quorum with it, and :mod:`broker.audit.notes` adds vkey formatting,
signing and co-signing on top. Standard library and ``cryptography`` only, nothing else of the broker:
it is packed with :mod:`~broker.audit.offline` into the verifier an auditor runs (``sgb audit
verifier``). Specs: C2SP at 5ba5ee8 (``signed-note``, ``tlog-checkpoint``, ``tlog-cosignature``);
reference code: golang.org/x/mod ``sumdb/note``. Ed25519 only: the log's keys (type 0x01,
:class:`VerifierKey`) and witnesses' (cosignature/v1, type 0x04, :class:`CosignatureKey`); lines of
other types are ignored like unknown keys'. Error messages are fixed text naming at most a key or an
origin, never a note line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Final, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ED25519: Final = 0x01  # signed-note.md, "Signature types"
COSIGNATURE_V1: Final = 0x04  # tlog-cosignature.md: timestamped Ed25519 checkpoint cosignature
MAX_TIMESTAMP: Final = 2**63 - 1  # tlog-cosignature.md: "It MUST NOT exceed 2^63 - 1"
MAX_SIGNATURES: Final = 100  # signed-note.md: at least 16; sumdb/note's limit. Bytes: room for 100 ML-DSA lines
MAX_NOTE_BYTES: Final = 1 << 20
_DASH: Final = "\u2014 "  # em dash, space
_SIZE: Final = re.compile(r"0|[1-9][0-9]{0,19}", re.ASCII)  # decimal, no leading zeroes
_VKEY_ID: Final = re.compile(r"[0-9a-f]{8}", re.ASCII)  # "fixed length lowercase Base 16"
_Key = TypeVar("_Key", bound="VerifierKey")  # parse gives the class it is called on (notes.VerifierKey)

class NoteError(ValueError):
    """A note, key or checkpoint refused. The message is fixed text and safe to log."""


class MalformedNote(NoteError):
    """Not a signed note by signed-note.md (syntax, encoding, limits)."""


class MalformedKey(NoteError):
    """A verifier key, key name or signing key that cannot be used."""


class MalformedCheckpoint(NoteError):
    """A note text that is not a checkpoint by tlog-checkpoint.md."""


class WrongOrigin(NoteError):
    """A well-formed checkpoint of another log than the one expected."""


class UnverifiedNote(NoteError):
    """No signature by a trusted key: the text must be ignored (signed-note.md)."""


class BadSignature(NoteError):
    """A signature that names a trusted key (name and key ID) and does not verify."""


def has_control(text: str) -> bool:
    return any(c < " " and c != "\n" for c in text)


def valid_name(name: str) -> bool:
    """signed-note.md: non-empty, without Unicode spaces (``str.isspace``, control characters too) or '+'."""
    return bool(name) and "+" not in name and not any(c.isspace() or c < " " for c in name)


def _b64decode(text: str, error: type[NoteError], what: str) -> bytes:
    """Standard base64, strict and canonical (Go's also takes non-zero padding bits; we don't)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{what} is not base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise error(f"{what} is not canonical base64")
    return raw


def key_id(name: str, sig_type: int, public_key: bytes) -> int:
    """SHA-256(key name || 0x0A || type || public key)[:4] (signed-note.md, tlog-cosignature.md)."""
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def note_text(text: str) -> bytes:
    """signed-note.md: UTF-8, a final newline, no control character but newline; empty lines may be."""
    if not text.endswith("\n"):
        raise MalformedNote("note text does not end with a newline")
    if has_control(text):
        raise MalformedNote("note holds a control character other than newline")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedNote("note text is not valid UTF-8") from None


def cosignature_message(text: bytes, timestamp: int) -> bytes:
    """tlog-cosignature.md, "Ed25519 signed message": the whole checkpoint text, extensions too."""
    return f"cosignature/v1\ntime {timestamp}\n".encode("ascii") + text


def cosignature_timestamp(signature: bytes) -> int | None:
    """Of ``u64 timestamp || 64-byte Ed25519 signature`` (tlog-cosignature.md); None if not that."""
    if len(signature) != 72:
        return None
    timestamp = int.from_bytes(signature[:8], "big")
    return timestamp if timestamp <= MAX_TIMESTAMP else None


@dataclass(frozen=True)
class VerifierKey:
    """A named Ed25519 public key of type 0x01, the log's, parsed from its vkey
    ``<name>+<hex key ID>+<base64(type || key)>`` (signed-note.md, "Verifier keys"). Subclasses
    admit type 0x04, whose lines this verifies as cosignature/v1: :class:`CosignatureKey` (only
    that) and :class:`broker.audit.notes.VerifierKey` (both, and formats vkeys)."""

    SIG_TYPES: ClassVar[tuple[int, ...]] = (ED25519,)
    name: str
    sig_type: int
    public_key: bytes
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not valid_name(self.name):
            raise MalformedKey("key name is empty or holds a space, '+' or control character")
        if self.sig_type not in self.SIG_TYPES:
            types = ", ".join(f"0x{t:02x}" for t in self.SIG_TYPES)
            raise MalformedKey(f"unsupported signature type (only Ed25519: {types})")
        if len(self.public_key) != 32:
            raise MalformedKey("an Ed25519 public key is 32 bytes")
        object.__setattr__(self, "_key", Ed25519PublicKey.from_public_bytes(self.public_key))

    @property
    def key_id(self) -> int:
        return key_id(self.name, self.sig_type, self.public_key)

    @classmethod
    def parse(cls: type[_Key], vkey: str) -> _Key:
        """A vkey string; the key ID must be the one the name and key give."""
        parts = vkey.split("+", 2)  # names hold no '+'; the base64 may
        if len(parts) != 3 or not _VKEY_ID.fullmatch(parts[1]):
            raise MalformedKey("verifier key is not <name>+<8 hex digits>+<base64>")
        material = _b64decode(parts[2], MalformedKey, "verifier key material")
        if not material:
            raise MalformedKey("verifier key has no key material")
        key = cls(parts[0], material[0], material[1:])
        if key.key_id != int(parts[1], 16):
            raise MalformedKey("verifier key ID does not match its name and key")
        return key

    def verify(self, text: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (the bytes after the key ID) signs ``text`` by this key; a
        cosignature signs its timestamp and the text (tlog-cosignature.md)."""
        if self.sig_type == COSIGNATURE_V1:
            stamp = cosignature_timestamp(signature)
            if stamp is None:
                return False
            text, signature = cosignature_message(text, stamp), signature[8:]
        try:
            self._key.verify(signature, text)
        except InvalidSignature:
            return False
        return True

    def timestamp(self, signature: bytes) -> int | None:
        """The time a signature by this key states: a cosignature's, a note signature none."""
        return cosignature_timestamp(signature) if self.sig_type == COSIGNATURE_V1 else None


class CosignatureKey(VerifierKey):
    """A witness's key, cosignature/v1 (type 0x04) only: what the offline verifier's ``--witness``
    takes, so a log's key cannot pass for a witness there, nor a witness's for the log (``--key``)."""

    SIG_TYPES: ClassVar[tuple[int, ...]] = (COSIGNATURE_V1,)


@dataclass(frozen=True)
class Signature:
    """One signature line: ``— <key name> base64(key ID || signature)``."""

    name: str
    key_id: int
    signature: bytes

    def line(self) -> str:
        raw = self.key_id.to_bytes(4, "big") + self.signature
        return f"{_DASH}{self.name} {base64.b64encode(raw).decode('ascii')}\n"

    @classmethod
    def parse_line(cls, line: str) -> Signature:
        """One line, with or without its final newline."""
        body = line.removesuffix("\n")
        if not body.startswith(_DASH) or body.count(" ") != 2:
            raise MalformedNote("signature line is not '\u2014 <name> <base64>'")
        name, encoded = body[len(_DASH) :].split(" ")
        if not valid_name(name) or has_control(body):
            raise MalformedNote("signature line has an invalid key name")
        raw = _b64decode(encoded, MalformedNote, "signature")
        if len(raw) < 5:
            raise MalformedNote("signature is shorter than a key ID and one byte")
        return cls(name, int.from_bytes(raw[:4], "big"), raw[4:])


@dataclass(frozen=True)
class Note:
    """A note text and its signature lines, verified or not. ``str()`` gives the signed note."""

    text: str
    signatures: tuple[Signature, ...]

    def __str__(self) -> str:
        note_text(self.text)
        if not self.signatures:
            raise MalformedNote("a signed note has at least one signature")
        return self.text + "\n" + "".join(s.line() for s in self.signatures)


def parse_note(data: bytes | str) -> Note:
    """signed-note.md, "Format", unverified: the text, the last empty line, signature lines."""
    try:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        if len(raw) > MAX_NOTE_BYTES:
            raise MalformedNote("note is larger than the limit")
        message = raw.decode("utf-8")
    except UnicodeError:
        raise MalformedNote("note is not valid UTF-8") from None
    if has_control(message):
        raise MalformedNote("note holds a control character other than newline")
    split = message.rfind("\n\n")
    if split < 0:
        raise MalformedNote("note has no empty line before its signatures")
    text, block = message[: split + 1], message[split + 2 :]
    if not block or not block.endswith("\n"):
        raise MalformedNote("note has no signature, or its last line has no final newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNote("note has more signatures than the limit")
    return Note(text, tuple(Signature.parse_line(line) for line in lines))


@dataclass(frozen=True)
class Verified:
    """A signature that verified, by which key; ``timestamp`` is a cosignature's time."""

    key: VerifierKey
    signature: Signature
    timestamp: int | None


@dataclass(frozen=True)
class OpenedNote:
    """A note whose text may be used: at least one trusted key signed it."""

    text: str
    verified: tuple[Verified, ...]
    unverified: tuple[Signature, ...]  # by keys not given: ignored, kept to pass on


def _index(keys: Iterable[VerifierKey]) -> dict[tuple[str, int], VerifierKey]:
    """Keys by (name, key ID), as signed-note.md identifies them; two keys under one are refused."""
    index: dict[tuple[str, int], VerifierKey] = {}
    for key in keys:
        if index.setdefault((key.name, key.key_id), key) != key:
            raise MalformedKey(f"two verifier keys share the name and key ID {key.name}+{key.key_id:08x}")
    return index


def open_note(data: bytes | str, keys: Iterable[VerifierKey]) -> OpenedNote:
    """signed-note.md, "Signatures": lines of unknown keys (name or ID differ) are ignored; every
    line of a known key is verified (Go's Open skips repeats) and one failing refuses the note
    (SHOULD); no verified line refuses it (MUST)."""
    note = parse_note(data)
    known = _index(keys)
    text = note.text.encode("utf-8")
    verified: list[Verified] = []
    unverified: list[Signature] = []
    for sig in note.signatures:
        key = known.get((sig.name, sig.key_id))
        if key is None:
            if sig not in unverified:
                unverified.append(sig)
        elif not key.verify(text, sig.signature):
            raise BadSignature(f"the signature by {key.name}+{key.key_id:08x} does not verify")
        elif all(v.key != key for v in verified):
            verified.append(Verified(key, sig, key.timestamp(sig.signature)))
    if not verified:
        raise UnverifiedNote("the note has no signature by a trusted key")
    return OpenedNote(note.text, tuple(verified), tuple(unverified))


@dataclass(frozen=True)
class Checkpoint:
    """tlog-checkpoint.md: origin, tree size, RFC 6962 root hash, extension lines (we write none)."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for line in (self.origin, *self.extensions):
            if not line or "\n" in line or has_control(line):
                raise MalformedCheckpoint("checkpoint lines are non-empty, without control characters")
        if not 0 <= self.size < 2**64:
            raise MalformedCheckpoint("checkpoint tree size is not a 64-bit unsigned integer")
        if len(self.root_hash) != 32:
            raise MalformedCheckpoint("checkpoint root hash is not 32 bytes")

    def text(self) -> str:
        root = base64.b64encode(self.root_hash).decode("ascii")
        return "".join(f"{line}\n" for line in (self.origin, str(self.size), root, *self.extensions))

    @classmethod
    def parse(cls, text: str, origin: str | None = None) -> Checkpoint:
        """The note text of a checkpoint; with ``origin``, also that it is that log's."""
        if not text.endswith("\n"):
            raise MalformedCheckpoint("checkpoint text does not end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3 or not all(lines):
            raise MalformedCheckpoint("checkpoint has fewer than three lines, or an empty line")
        if not _SIZE.fullmatch(lines[1]):
            raise MalformedCheckpoint("checkpoint tree size is not decimal without leading zeroes")
        root = _b64decode(lines[2], MalformedCheckpoint, "checkpoint root hash")
        checkpoint = cls(lines[0], int(lines[1]), root, tuple(lines[3:]))
        if origin is not None and checkpoint.origin != origin:
            raise WrongOrigin(f"the checkpoint is not of the log {origin}")
        return checkpoint


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint signed by the log, with the cosignatures of known witnesses that verified."""

    checkpoint: Checkpoint
    note: OpenedNote

    @property
    def cosignatures(self) -> tuple[Verified, ...]:
        return tuple(v for v in self.note.verified if v.timestamp is not None)


def open_checkpoint(data: bytes | str, *, origin: str, log_keys: Iterable[VerifierKey],
                    witness_keys: Iterable[VerifierKey] = ()) -> SignedCheckpoint:
    """A checkpoint of ``origin`` signed by one of ``log_keys`` (whose name SHOULD, not must, be the
    origin), with the cosignatures by ``witness_keys`` that verified; the quorum is the caller's.
    Witness keys must be cosignature/v1 keys: a witness's note key must not pass for its cosignatures."""
    logs, witnesses = tuple(log_keys), tuple(witness_keys)
    if any(k.sig_type != COSIGNATURE_V1 for k in witnesses):
        raise MalformedKey("witness keys are cosignature/v1 keys (signature type 0x04)")
    opened = open_note(data, logs + witnesses)
    if not any(v.key in logs for v in opened.verified):
        raise UnverifiedNote("the checkpoint has no signature by the log's key")
    return SignedCheckpoint(Checkpoint.parse(opened.text, origin), opened)
