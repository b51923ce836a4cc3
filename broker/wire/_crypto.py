"""The one module that touches ``cryptography.hazmat``.

Everything here is a thin, typed recipe over pyca/cryptography: Ed25519 signing keys, HPKE
(RFC 9180) base-mode seal/open with the two suites of the wire contract, and raw key
(de)serialisation. No primitive is implemented here; failures raise and never return a bool.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Final, Literal

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.hpke import (
    AEAD,
    KDF,
    KEM,
    MLKEM768X25519PrivateKey,
    MLKEM768X25519PublicKey,
    Suite,
)
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from broker.errors import InvalidEnvelope

SuiteName = Literal["X25519-SHA256-AES256GCM", "MLKEM768X25519-SHA256-AES256GCM"]
X25519_SUITE: Final[SuiteName] = "X25519-SHA256-AES256GCM"
HYBRID_SUITE: Final[SuiteName] = "MLKEM768X25519-SHA256-AES256GCM"
SUITES: Final[tuple[SuiteName, ...]] = (X25519_SUITE, HYBRID_SUITE)

_SUITES: Final[dict[str, Suite]] = {
    X25519_SUITE: Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM),
    HYBRID_SUITE: Suite(KEM.MLKEM768_X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM),
}

SigningKey = Ed25519PrivateKey
VerifyKey = Ed25519PublicKey
KemPrivateKey = x25519.X25519PrivateKey | MLKEM768X25519PrivateKey
KemPublicKey = x25519.X25519PublicKey | MLKEM768X25519PublicKey


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64u(text: str) -> bytes:
    """Strict base64url decode (no padding, no stray characters)."""
    if not isinstance(text, str):
        raise ValueError("base64url text expected")
    raw = text.encode("ascii")
    return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))


# --- signing keys -------------------------------------------------------------------------


def new_signing_key() -> SigningKey:
    return Ed25519PrivateKey.generate()


def signing_key_bytes(key: SigningKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def signing_key_from_bytes(raw: bytes) -> SigningKey:
    return Ed25519PrivateKey.from_private_bytes(raw)


def sign_bytes(key: SigningKey, data: bytes) -> bytes:
    """The Ed25519 signature of ``data`` (a JWS signing input)."""
    return key.sign(data)


def verify_signature(key: VerifyKey, signature: bytes, data: bytes) -> None:
    """Ed25519 verification; raises :class:`InvalidEnvelope` on a bad signature."""
    try:
        key.verify(signature, data)
    except InvalidSignature as exc:
        raise InvalidEnvelope("signature does not verify") from exc


def verify_key_bytes(key: VerifyKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def verify_key_from_bytes(raw: bytes) -> VerifyKey:
    return Ed25519PublicKey.from_public_bytes(raw)


# --- KEM keys (HPKE recipients) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KemKeyPair:
    """A recipient's HPKE key pair with the raw parts needed to store it.

    The hybrid key objects have no serialisation methods, so the components are kept:
    the X25519 half (32-byte private / public) and the ML-KEM-768 half (64-byte seed /
    1184-byte public key).
    """

    suite: SuiteName
    private: KemPrivateKey
    x_private: bytes
    x_public: bytes
    pq_seed: bytes | None
    pq_public: bytes | None


def new_kem_key(suite: SuiteName) -> KemKeyPair:
    xk = x25519.X25519PrivateKey.generate()
    if suite == X25519_SUITE:
        return kem_key_from_bytes(suite, xk.private_bytes_raw(), None)
    return kem_key_from_bytes(suite, xk.private_bytes_raw(), mlkem.MLKEM768PrivateKey.generate().private_bytes_raw())


def kem_key_from_bytes(suite: SuiteName, x_private: bytes, pq_seed: bytes | None) -> KemKeyPair:
    xk = x25519.X25519PrivateKey.from_private_bytes(x_private)
    x_public = xk.public_key().public_bytes_raw()
    if suite == X25519_SUITE:
        return KemKeyPair(suite, xk, x_private, x_public, None, None)
    if suite != HYBRID_SUITE or pq_seed is None:
        raise ValueError(f"unsupported suite or missing ML-KEM seed: {suite}")
    mk = mlkem.MLKEM768PrivateKey.from_seed_bytes(pq_seed)
    return KemKeyPair(
        suite, MLKEM768X25519PrivateKey(mk, xk), x_private, x_public, pq_seed,
        mk.public_key().public_bytes_raw(),
    )


def kem_public_from_bytes(suite: SuiteName, x_public: bytes, pq_public: bytes | None) -> KemPublicKey:
    xp = x25519.X25519PublicKey.from_public_bytes(x_public)
    if suite == X25519_SUITE:
        return xp
    if suite != HYBRID_SUITE or pq_public is None:
        raise ValueError(f"unsupported suite or missing ML-KEM public key: {suite}")
    return MLKEM768X25519PublicKey(mlkem.MLKEM768PublicKey.from_public_bytes(pq_public), xp)


# --- HPKE ---------------------------------------------------------------------------------


def seal(suite: SuiteName, public_key: KemPublicKey, plaintext: bytes, info: bytes) -> bytes:
    """HPKE base-mode single-shot encryption; ``info`` binds the ciphertext to its context."""
    return _SUITES[suite].encrypt(plaintext, public_key, info=info)


def open_sealed(suite: SuiteName, private_key: KemPrivateKey, ciphertext: bytes, info: bytes) -> bytes:
    """Inverse of :func:`seal`. Any failure is one :class:`InvalidEnvelope` (no oracle)."""
    try:
        return _SUITES[suite].decrypt(ciphertext, private_key, info=info)
    except (InvalidTag, TypeError, ValueError, KeyError) as exc:
        raise InvalidEnvelope("payload cannot be opened") from exc


# --- digests ------------------------------------------------------------------------------


def sha256_b64u(data: bytes) -> str:
    return b64u(hashlib.sha256(data).digest())


def keyed_digest(key: bytes, data: bytes) -> str:
    """HMAC-SHA256, for digests of personal data that must not be reversible by guessing."""
    return b64u(hmac.new(key, data, hashlib.sha256).digest())
