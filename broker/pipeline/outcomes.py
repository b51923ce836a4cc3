"""Steps 5–6: what the broker publishes for one ingress message.

For an accepted message: one delivery per permitted recipient (minimised payload, sealed to
that recipient, signed by the broker, with ``origin``), a ``receipt`` to the sender and
audit records. For a refused one: a signed ``rejection`` to the sender and an audit record.
Ids are derived deterministically from the ingress message, so re-processing after a crash
republishes under the same ``Nats-Msg-Id`` and JetStream drops the copy.

What one message's outputs share is worked out once for all of them: one clock reading (the
deliveries' ``iat``, the records' and the receipt's ``at``, the recipient keys valid then), each
clock's due date, and each recipient's public key, made from the registry's bytes once per key
(:meth:`Outcomes.recipient_key`) rather than for every message.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog

from broker.errors import NoRecipientKey, RejectedMessage
from broker.identity.blindindex import SubjectIndex
from broker.identity.keys import Identity
from broker.pipeline import deadlines
from broker.pipeline.intake import Opened
from broker.policy import pointer
from broker.policy.engine import Decision, RecipientDecision
from broker.policy.rulebook import DeadlineSpec
from broker.timestamps import iso
from broker.transport.publisher import Outgoing
from broker.wire import _crypto, hpke, jws
from broker.wire.ids import ADMIN_SHARING, derived_id
from broker.wire.registry import PublicKey, Registry
from broker.wire.subjects import delivery_subject

log = structlog.get_logger("sgb.broker")

NO_KEY: Final = (NoRecipientKey.code, "registry.encryption-key")  # a recipient refused for want of a key


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit record, for the instance's hash chain (:mod:`broker.audit.chain`)."""

    record: dict[str, Any]


Output = Outgoing | AuditEntry


@dataclass(frozen=True, slots=True)
class Ingress:
    """Where a message came from in the ingress stream; the key for derived ids."""

    subject_agency: str
    seq: int
    stored_at: float
    msg_id: str  # Nats-Msg-Id header, or a derived id when absent


class Outcomes:
    def __init__(self, registry: Registry, broker: Identity, audit_key: bytes, instance: str,
                 subjects: SubjectIndex, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.broker = broker
        self.audit_key = audit_key
        self.instance = instance
        self.subjects = subjects
        self.clock = clock
        # by registry key (its bytes and validity, so a reloaded registry's keys are new entries)
        self._recipient_keys: dict[PublicKey, tuple[str, _crypto.SuiteName, _crypto.KemPublicKey]] = {}

    # -- sealing ----------------------------------------------------------------------

    def recipient_key(self, recipient: str, now: float) -> tuple[str, _crypto.SuiteName, _crypto.KemPublicKey]:
        """:meth:`Registry.recipient_key`, its key object made once per registry key: choosing the
        key valid ``now`` is cheap, making an ML-KEM public key from its bytes is not."""
        key = self.registry.agencies[recipient].enc_key(now)
        found = self._recipient_keys.get(key)
        if found is None:
            if len(self._recipient_keys) >= 1024:  # retired keys of many reloads: start again
                self._recipient_keys.clear()
            found = self._recipient_keys[key] = self.registry.recipient_key(recipient, now)
        return found

    def seal(self, *, jti: str, typ: str, ver: int, recipient: str, plaintext: bytes,
             sharing: Mapping[str, Any], re: str | None = None, thread: str | None = None,
             origin: Mapping[str, str] | None = None, now: float | None = None) -> bytes:
        """A delivery of ``plaintext`` sealed to ``recipient``; ``now`` the message's one clock reading."""
        now = self.clock() if now is None else now
        kid, suite, public = self.recipient_key(recipient, now)
        sealed = hpke.seal_payload(plaintext, jti=jti, iss=self.registry.broker_id, typ=typ, ver=ver,
                                   recipient=recipient, kid=kid, suite=suite, public_key=public)
        claims: dict[str, Any] = {
            "jti": jti, "iss": self.registry.broker_id, "iat": int(now), "typ": typ, "ver": ver,
            "to": [recipient], "sharing": dict(sharing), "enc": {"suite": sealed.suite, "kid": sealed.kid},
            "payload": sealed.payload,
        }
        if re:
            claims["re"] = re
        if thread:
            claims["thread"] = thread
        if origin:
            claims["origin"] = dict(origin)
        return jws.sign(claims, self.broker.signing_key, self.broker.sig_kid)

    def sealable(self, agency_id: str, now: float) -> bool:
        """Whether ``agency_id`` has an encryption key valid ``now``; if not, said to the operator."""
        agency = self.registry.get(agency_id)
        if agency is not None and agency.sealable(now):
            return True
        log.error("an agency has no valid encryption key: nothing can be sealed to it until its keys are "
                  "rotated (sgb keys rotate)", agency=agency_id)
        return False

    def keyed(self, decision: Decision, now: float, *, reply: bool = False, personal: bool = True) -> Decision:
        """``decision`` with each recipient that has no encryption key valid ``now`` refused
        (``no-recipient-key``; its keys expired unrotated), so that the others still receive the
        message and the sender hears at once which recipient did not, rather than the whole
        message failing at every delivery. With none left it is refused whole
        (:class:`NoRecipientKey`), unless it is a ``reply`` (a receipt or notice, or an answer that
        closes a clock): that is recorded, so the clock it answers stops on time. A message with
        ``personal`` data is flagged for the IG officer."""
        unkeyed = {rd.recipient for rd in decision.shared if not self.sealable(rd.recipient, now)}
        if not unkeyed:
            return decision
        code, rule = NO_KEY
        if len(unkeyed) == len(decision.shared) and not reply:  # nobody to receive it: a rejection
            raise NoRecipientKey("no recipient has a valid encryption key; its keys must be rotated before it "
                                 "can receive", field="/to", rule=rule)
        flags = (*decision.flags, "recipient-unreachable") if personal else decision.flags
        return dataclasses.replace(decision, flags=flags, recipients=tuple(
            rd if rd.recipient not in unkeyed else RecipientDecision(
                rd.recipient, False, (rule, *rd.rules), code=code,
                reason="the recipient has no valid encryption key; its keys must be rotated before it can receive")
            for rd in decision.recipients))

    # -- accepted ---------------------------------------------------------------------

    def accepted(self, ingress: Ingress, opened: Opened, decision: Decision, *,
                 closes: tuple[str, ...] = (), now: float | None = None) -> list[Output]:
        """``closes``: this message is the reply a deadline on ``re`` was waiting for, owed by these
        parties (its audit records say ``meetsDeadline``; every party's entry is closed). An agency's
        receipt's records carry its ``receiptStatus`` and ``receiptFor`` (the message it is about), so
        the trail shows where that message stands. ``decision`` has been :meth:`keyed` at ``now``."""
        claims = opened.auth.claims
        jti, sender = claims["jti"], opened.auth.sender.id
        now = self.clock() if now is None else now
        at = iso(now)
        origin = {"iss": sender, "jti": jti, "digest": jws.digest(opened.auth.token)}
        digest = _crypto.keyed_digest(self.audit_key, opened.plaintext)
        base = self._audit_base(ingress, jti, at) | {
            "type": claims["typ"], "version": claims["ver"], "sender": sender,
            "sharing": claims["sharing"], "payloadDigest": digest, "rules": list(decision.rules),
        }
        if decision.flags:
            base["flags"] = list(decision.flags)
        if decision.late_reason:  # why a late message was late: a code, for the IG officer
            base["lateReason"] = decision.late_reason
        if claims.get("thread"):
            base["thread"] = claims["thread"]
        if claims.get("re"):
            base["re"] = claims["re"]
        if claims["typ"] == "receipt":  # where the message it is about stands (metadata, no personal data)
            base["receiptStatus"] = opened.payload.get("status")
            base["receiptFor"] = opened.payload.get("messageId")
        if closes and claims.get("re"):
            base["meetsDeadline"] = True
        subjects = self.subjects.tokens_for(opened.payload)
        if subjects:
            base["subjects"] = subjects
        out: list[Output] = [self._audit(base | {"id": derived_id("audit", jti, "received"), "event": "received",
                                   "to": list(claims["to"])})]
        owed: dict[int, dict[str, Any]] = {}  # clocks the sender's side owes, by position: one entry each
        dues: dict[int, tuple[float | None, str | None]] = {}  # each clock's due date, for every recipient
        for rd in decision.recipients:
            record = base | {"id": derived_id("audit", jti, rd.recipient), "recipient": rd.recipient,
                             "rules": list(rd.rules)}
            if not rd.share:
                if opened.mtype.record_only:
                    event = {"event": "not-shared", "decision": "not-share"}
                    if decision.not_shared_reason:  # a code from the schema's list: not personal data
                        event["notSharedReason"] = decision.not_shared_reason
                else:
                    event = {"event": "refused", "decision": "refuse"}
                out.append(self._audit(record | event | {"code": rd.code, "reason": rd.reason}))
                continue
            payload = opened.payload if rd.fields is None else pointer.project(opened.payload, rd.fields)
            plaintext = opened.plaintext if rd.fields is None else jws.dumps(payload)
            delivery_id = derived_id("delivery", jti, rd.recipient)
            token = self.seal(jti=delivery_id, typ=claims["typ"], ver=claims["ver"], recipient=rd.recipient,
                              plaintext=plaintext, sharing=claims["sharing"], re=claims.get("re"),
                              thread=claims.get("thread"), origin=origin, now=now)
            out.append(Outgoing(delivery_subject(rd.recipient), token, delivery_id))
            shared = record | {"event": "shared", "decision": "share", "deliveryId": delivery_id,
                               "fields": sorted(payload) if rd.fields is None else list(rd.fields)}
            for i, spec in enumerate(decision.deadlines):
                if i not in dues:
                    dues[i] = _due(spec.due(ingress.stored_at, opened.payload))
                due, due_at = dues[i]
                if due is None or not self._owed_to(spec, rd.recipient) or (spec.from_sender and i in owed):
                    continue  # no date to count from, not this recipient's clock, or the sender's already opened
                shared.setdefault("due", due_at)
                entry: dict[str, Any] = {
                    "message": jti, "type": claims["typ"], "sender": sender, "recipient": rd.recipient, "due": due,
                    "expect": list(spec.expect), "rule": decision.deadline_rule, "says": spec.says,
                    "clock": spec.clock}
                if spec.key_suffix:
                    entry["keySuffix"] = spec.key_suffix
                if spec.receipt_status:  # recorded, so any instance applies the rule of the share
                    entry["receiptStatus"] = list(spec.receipt_status)
                if not spec.from_sender:
                    out.append(deadlines.open_entry(jti, rd.recipient + spec.key_suffix,
                                                    entry | {"expectFrom": rd.recipient}))
                else:
                    owed[i] = entry  # owed by the sender's side: one clock, to the recipient it is owed to
            if rd.withheld:
                shared["withheld"] = list(rd.withheld)
            out.append(self._audit(shared))
        for i, entry in owed.items():
            spec = decision.deadlines[i]
            owers = self.registry.partners_of(opened.auth.sender) if spec.expect_from == "partners" else (sender,)
            out += deadlines.open_group(jti, owers, entry, suffix=spec.key_suffix)
        if closes:
            out += [deadlines.close_entry(claims["re"], replier, jti) for replier in closes]
        receipt = {
            "messageId": jti, "status": "recorded" if opened.mtype.record_only else "routed", "at": at,
            "recipients": [r.recipient for r in decision.shared],
        }
        if decision.refused and not opened.mtype.record_only:
            receipt["refused"] = [{"recipient": r.recipient, "code": r.code, "rule": r.rules[0]}
                                  for r in decision.refused]
        if not self.sealable(sender, now):
            return out  # delivered, but no receipt can be sealed to the sender: said to the operator
        receipt_id = derived_id("receipt", jti)
        out.append(Outgoing(delivery_subject(sender), self.seal(
            jti=receipt_id, typ="receipt", ver=1, recipient=sender, plaintext=jws.dumps(receipt),
            sharing=ADMIN_SHARING, re=jti, now=now), receipt_id))
        return out

    def _owed_to(self, spec: DeadlineSpec, recipient: str) -> bool:
        """Whether a clock the sender's side owes runs to this recipient, or a clock the recipients owe
        is owed by this one (any, unless the rule names a kind)."""
        agency = self.registry.get(recipient)
        return spec.owed_to is None or (agency is not None and agency.kind == spec.owed_to)

    # -- rejected ---------------------------------------------------------------------

    def rejected(self, ingress: Ingress, error: RejectedMessage, claims: Mapping[str, Any] | None) -> list[Output]:
        """A signed rejection to the publishing agency, and an audit record. ``claims`` are given
        only once the signature was verified, so nothing unauthenticated is echoed."""
        message_id = claims["jti"] if claims else ingress.msg_id
        now = self.clock()
        at = iso(now)
        record = self._audit_base(ingress, message_id, at) | {
            "id": derived_id("audit", "rejected", ingress.seq, ingress.stored_at), "event": "rejected",
            "sender": ingress.subject_agency, "decision": "reject", "code": error.code, "reason": error.reason,
        }
        if error.field:
            record["field"] = error.field
        if error.rule:
            record["rule"] = error.rule
        if claims:
            record |= {"type": claims["typ"], "version": claims["ver"], "sharing": claims["sharing"]}
        out: list[Output] = [self._audit(record)]
        if self.registry.get(ingress.subject_agency) is None:
            return out  # nobody to tell: no such agency (only possible without NATS permissions)
        if not self.sealable(ingress.subject_agency, now):
            return out  # nobody can be told securely: said to the operator
        body: dict[str, Any] = {
            "messageId": message_id[:128], "code": error.code, "reason": error.reason[:500],
            "at": at, "retryable": error.retryable,
        }
        if error.field:
            body["field"] = error.field[:200]
        if error.rule:
            body["rule"] = error.rule[:100]
        rejection_id = derived_id("rejection", ingress.seq, ingress.stored_at)
        re = message_id if _is_uuid(message_id) else None
        out.append(Outgoing(delivery_subject(ingress.subject_agency), self.seal(
            jti=rejection_id, typ="rejection", ver=1, recipient=ingress.subject_agency,
            plaintext=jws.dumps(body), sharing=ADMIN_SHARING, re=re, now=now), rejection_id))
        return out

    # -- overdue ----------------------------------------------------------------------

    def overdue(self, entry: Mapping[str, Any]) -> list[Output]:
        """Overdue notices to both sides of a deadline that passed (and to every party that owed it
        with the sender; but none to a party nothing can be sealed to), and an audit record."""
        message, recipient, suffix = entry["message"], entry["recipient"], entry.get("keySuffix", "")
        now = self.clock()
        at, due = iso(now), iso(entry["due"])
        body = {"messageId": message, "messageType": entry["type"], "recipient": recipient, "due": due,
                "expected": entry["expect"], "at": at, "rule": entry["rule"], "says": entry["says"]}
        out: list[Output] = []
        for party in dict.fromkeys((entry["sender"], recipient, *entry.get("owedBy", ()))):
            if not self.sealable(party, now):
                continue
            notice_id = derived_id("overdue", message, recipient + suffix, party)
            out.append(Outgoing(delivery_subject(party), self.seal(
                jti=notice_id, typ="overdue-notice", ver=1, recipient=party, plaintext=jws.dumps(body),
                sharing=ADMIN_SHARING, re=message, now=now), notice_id))
        out.append(self._audit({"v": 1, "at": at, "instance": self.instance, "message": message,
                                "id": derived_id("audit", message, recipient + suffix, "overdue"), "event": "overdue",
                                "type": entry["type"], "sender": entry["sender"], "recipient": recipient,
                                "due": due, "rules": [entry["rule"]]}))
        return out

    # -- audit ------------------------------------------------------------------------

    def _audit_base(self, ingress: Ingress, message_id: str, at: str) -> dict[str, Any]:
        return {"v": 1, "at": at, "instance": self.instance, "message": message_id,
                "ingressSeq": ingress.seq, "receivedAt": iso(ingress.stored_at)}

    def _audit(self, record: dict[str, Any]) -> AuditEntry:
        return AuditEntry(record)


def _due(due: float | None) -> tuple[float | None, str | None]:
    """A clock's due time and its ISO spelling, worked out once for every recipient it runs to."""
    return due, None if due is None else iso(due)


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False
