"""Steps 1–3 of the pipeline: authenticate, open, validate. Pure and synchronous.

Each check raises a :class:`~broker.errors.RejectedMessage` subclass with a stable code
and a reason that names a field and a rule, never a value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from broker.config import PipelineSettings
from broker.errors import (
    ConfigError,
    InvalidEnvelope,
    Malformed,
    NotPermitted,
    RejectedMessage,
    SchemaInvalid,
    SenderMismatch,
    Stale,
    TooLarge,
    Undecryptable,
    UnknownRecipient,
    UnknownType,
)
from broker.identity.keys import Identity
from broker.wire import hpke, jws, strictjson
from broker.wire.catalogue import Catalogue, MessageType
from broker.wire.registry import NOT_ADDRESSABLE, Agency, Registry

log = structlog.get_logger("sgb.intake")



@dataclass(frozen=True, slots=True)
class Authenticated:
    """A message whose signature, signer and freshness are good; payload still sealed."""

    token: bytes
    claims: dict[str, Any]
    sender: Agency


@dataclass(frozen=True, slots=True)
class Opened:
    auth: Authenticated
    mtype: MessageType
    payload: dict[str, Any]
    plaintext: bytes
    recipients: tuple[Agency, ...]


class Intake:
    def __init__(self, registry: Registry, catalogue: Catalogue, broker: Identity, settings: PipelineSettings) -> None:
        self.registry = registry
        self.catalogue = catalogue
        self.broker = broker
        self.settings = settings
        self._envelope = catalogue.validator("envelope.v1.json")

    def authenticate(self, subject_agency: str, token: bytes, stored_at: float) -> Authenticated:
        """Checks in an order that never does expensive work for an unauthenticated sender. Whatever
        goes wrong while reading the message is the message's fault: refused at once, never retried."""
        try:
            return self._authenticate(subject_agency, token, stored_at)
        except (RejectedMessage, ConfigError):
            raise
        except Exception as exc:
            log.warning("unreadable message refused", stage="authenticate", error=type(exc).__name__)
            raise Malformed("the message cannot be read", field="/", rule="readable") from exc

    def open(self, auth: Authenticated) -> Opened:
        """Open and validate; as for :meth:`authenticate`, a fault in reading the content is the message's."""
        try:
            return self._open(auth)
        except (RejectedMessage, ConfigError):
            raise
        except Exception as exc:
            log.warning("unreadable payload refused", stage="open", error=type(exc).__name__)
            raise SchemaInvalid("the payload cannot be read", field="/payload", rule="readable") from exc

    def _authenticate(self, subject_agency: str, token: bytes, stored_at: float) -> Authenticated:
        if len(token) > self.settings.max_message_bytes:
            raise TooLarge(f"message exceeds {self.settings.max_message_bytes} bytes", field="/",
                           rule="max-message-bytes")
        signed = jws.read(token)
        signer, key = self.registry.signer(signed.kid, stored_at)
        if signer.id != subject_agency:
            raise SenderMismatch("the signing key does not belong to the agency that published", field="/header/kid")
        claims = signed.verify(key)
        issue = self.catalogue.first_issue(self._envelope, claims)
        if issue is not None:
            raise Malformed(f"envelope '{issue.keyword}' check failed", field=issue.pointer or "/",
                            rule="envelope.v1.json")
        for name in ("iat", "ver"):  # the schema's "integer" also admits 1.0: one spelling per message
            if type(claims[name]) is not int:
                raise Malformed(f"{name} must be written as an integer", field=f"/{name}", rule="integer")
        if claims["iss"] != subject_agency:
            raise SenderMismatch("iss is not the agency that published", field="/iss")
        iat = claims["iat"]  # compared as given: an integer of any size, never converted to a float
        if iat < stored_at - self.settings.max_age:
            raise Stale(f"sent more than {int(self.settings.max_age)}s before it was received", field="/iat",
                        rule="max-age")
        if iat > stored_at + self.settings.max_future_skew:
            raise Stale("iat is in the future", field="/iat", rule="max-future-skew")
        if "origin" in claims:
            raise Malformed("only the broker sets origin", field="/origin")
        if not jws.canonical_b64u(claims["payload"]):
            raise Malformed("the payload is not canonical base64url", field="/payload", rule="canonical-base64")
        return Authenticated(token, claims, signer)

    def _open(self, auth: Authenticated) -> Opened:
        claims = auth.claims
        mtype = self.catalogue.message_type(claims["typ"], claims["ver"])
        if mtype is None:
            raise UnknownType("no schema for this type and version", field="/typ", rule="catalogue")
        kid = claims["enc"]["kid"]
        kem = self.broker.kem_key(kid)
        listed = any(k.kid == kid and k.use == "enc" for k in self.registry.broker.keys)  # not retired
        if kem is None or not listed or kem.suite != claims["enc"]["suite"]:
            raise Undecryptable("payload is not sealed to a current broker key", field="/enc/kid")
        try:
            plaintext = hpke.open_payload(claims, self.registry.broker_id, kem)
        except InvalidEnvelope as exc:
            raise Undecryptable("payload cannot be opened with the broker's key", field="/payload") from exc
        try:
            payload = strictjson.loads(plaintext)
        except strictjson.StrictJSONError as exc:
            raise SchemaInvalid(f"payload is not strict JSON: {exc.reason}", field=f"/payload{exc.where}",
                                rule="strict-json") from exc
        if not isinstance(payload, dict):
            raise SchemaInvalid("payload is not a JSON object", field="/payload", rule="json")
        self.catalogue.check_payload(mtype, payload)
        if mtype.name == "receipt" and claims.get("re") and payload.get("messageId") != claims["re"]:
            # the deadline and the trail go by ``re``, the audit record's receiptFor by messageId
            raise SchemaInvalid("a receipt's messageId must be the message it answers (re)",
                                field="/payload/messageId", rule="receipt.about-re")
        recipients = []
        for i, rid in enumerate(claims["to"]):
            agency = self.registry.get(rid)
            if agency is None or agency.kind in NOT_ADDRESSABLE:
                raise UnknownRecipient("recipient is not in the trust registry", field=f"/to/{i}", rule="registry")
            if agency.id == auth.sender.id:  # the broker would hand the sender its own message back
                raise NotPermitted("the sender cannot be its own recipient", field=f"/to/{i}", rule="to.not-sender")
            recipients.append(agency)
        return Opened(auth, mtype, payload, plaintext, tuple(recipients))
