"""The HPKE recipes of the wire contract: a payload sealed to one recipient.

The HPKE ``info`` binds each ciphertext to the message id, sender, type, version and recipient,
so a payload cannot be lifted into another envelope. Suites come from ``cryptography`` through
:mod:`broker.wire._crypto`; nothing here is written by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.wire import _crypto


def hpke_info(*, jti: str, iss: str, typ: str, ver: int, recipient: str) -> bytes:
    return b"sgb/v1\x00" + "\x00".join((jti, iss, typ, str(ver), recipient)).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Sealed:
    suite: _crypto.SuiteName
    kid: str
    payload: str  # base64url ciphertext


def seal_payload(
    plaintext: bytes, *, jti: str, iss: str, typ: str, ver: int, recipient: str,
    kid: str, suite: _crypto.SuiteName, public_key: _crypto.KemPublicKey,
) -> Sealed:
    info = hpke_info(jti=jti, iss=iss, typ=typ, ver=ver, recipient=recipient)
    return Sealed(suite, kid, _crypto.b64u(_crypto.seal(suite, public_key, plaintext, info)))


def open_payload(claims: Mapping[str, Any], recipient: str, key: _crypto.KemKeyPair) -> bytes:
    """Open the payload sealed to ``recipient``; raises :class:`InvalidEnvelope` on any failure."""
    info = hpke_info(jti=claims["jti"], iss=claims["iss"], typ=claims["typ"], ver=claims["ver"], recipient=recipient)
    try:
        ciphertext = _crypto.unb64u(claims["payload"])
    except ValueError:
        ciphertext = b""
    return _crypto.open_sealed(key.suite, key.private, ciphertext, info)
