"""The broker's one error tree.

::

    BrokerError
    ├── ConfigError                 settings, registry or key files unusable
    ├── KeyStoreError               a private key is missing or unreadable
    ├── RejectedMessage             a message the broker will not pass; carries a stable ``code``
    │   ├── Malformed               ``malformed``: not a JWS, bad JSON, envelope schema violation
    │   ├── TooLarge                ``too-large``
    │   ├── BadSignature            ``bad-signature``: signature or algorithm wrong
    │   ├── UnknownKey              ``unknown-key``
    │   ├── SenderMismatch          ``sender-mismatch``: signer is not the subject's agency
    │   ├── Stale                   ``stale``: iat too old or in the future
    │   ├── Replayed                ``replayed``
    │   ├── Undecryptable           ``undecryptable``
    │   ├── UnknownType             ``unknown-type``
    │   ├── SchemaInvalid           ``schema-invalid``
    │   ├── UnknownRecipient        ``unknown-recipient``
    │   ├── NotPermitted            ``not-permitted``
    │   ├── NoLawfulBasis           ``no-lawful-basis``
    │   ├── NoRecipientKey          ``no-recipient-key``: no recipient has a valid encryption key
    │   └── InternalFailure         ``internal``: a fault of ours; send it again
    ├── InvalidEnvelope             a delivery an adapter cannot verify or open (one error, no oracle)
    ├── StoreError                  a local SQLite store cannot be used (newer file, closed, past its deadline)
    └── TransportError              NATS unavailable or too slow
        └── PublishTimeout          JetStream did not acknowledge within the deadline

Reasons never contain personal data: they name a field (a JSON pointer) and a rule.
"""

from __future__ import annotations

from typing import ClassVar


class BrokerError(Exception):
    """Root of every error the project raises on purpose."""


class ConfigError(BrokerError):
    """Settings, the trust registry or a key file cannot be used."""


class KeyStoreError(BrokerError):
    """A private key is missing, unreadable or has unsafe permissions."""


class RejectedMessage(BrokerError):
    """A message the broker refuses. ``code`` is stable and part of the wire contract."""

    code: ClassVar[str] = "internal"
    retryable: ClassVar[bool] = False

    def __init__(self, reason: str, *, field: str | None = None, rule: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.rule = rule

    def __str__(self) -> str:
        parts = [f"{self.code}: {self.reason}"]
        if self.field:
            parts.append(f"field={self.field}")
        if self.rule:
            parts.append(f"rule={self.rule}")
        return " ".join(parts)


class Malformed(RejectedMessage):
    code = "malformed"


class TooLarge(RejectedMessage):
    code = "too-large"


class BadSignature(RejectedMessage):
    code = "bad-signature"


class UnknownKey(RejectedMessage):
    code = "unknown-key"


class SenderMismatch(RejectedMessage):
    code = "sender-mismatch"


class Stale(RejectedMessage):
    code = "stale"
    retryable = True


class Replayed(RejectedMessage):
    code = "replayed"


class Undecryptable(RejectedMessage):
    code = "undecryptable"


class UnknownType(RejectedMessage):
    code = "unknown-type"


class SchemaInvalid(RejectedMessage):
    code = "schema-invalid"


class UnknownRecipient(RejectedMessage):
    code = "unknown-recipient"


class NotPermitted(RejectedMessage):
    code = "not-permitted"


class NoLawfulBasis(RejectedMessage):
    code = "no-lawful-basis"


class NoRecipientKey(RejectedMessage):
    """Nothing can be sealed to any recipient: their encryption keys expired unrotated. Send it
    again once the operator has rotated them."""

    code = "no-recipient-key"
    retryable = True


REJECTION_CODES: tuple[str, ...] = tuple(
    sorted(
        cls.code
        for cls in (
            Malformed, TooLarge, BadSignature, UnknownKey, SenderMismatch, Stale, Replayed,
            Undecryptable, UnknownType, SchemaInvalid, UnknownRecipient, NotPermitted,
            NoLawfulBasis, NoRecipientKey,
        )
    )
)


class InvalidEnvelope(BrokerError):
    """A delivered message failed verification or opening at the adapter.

    Deliberately one class with a generic message, like Fernet's ``InvalidToken``.
    """


class StoreError(BrokerError):
    """A local store (:class:`broker.store.Store`) cannot be used: written by a newer version, closed,
    or silent past its deadline. SQLite's own errors (``sqlite3.Error``) pass through as they are."""


class TransportError(BrokerError):
    """NATS is unavailable, refused a request or did not answer in time."""


class PublishTimeout(TransportError):
    """JetStream did not acknowledge a publish within its deadline, after retries. ``failed``:
    the items not stored, where the publisher knows them (the rest of a batch was stored)."""

    def __init__(self, message: str, *, failed: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.failed = failed


class InternalFailure(RejectedMessage):
    """A fault of ours, not of the message: reported with a stable code, never internals."""

    code = "internal"
    retryable = True
