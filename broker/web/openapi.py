"""The OpenAPI 3.1 description of ``/api/v1`` (served at ``/api/openapi.json``).

Every enum in it comes from where the word is defined (:mod:`broker.web.vocabulary` says where),
never from a copy; the filters of the records are the audit index's (:data:`broker.audit.query.FILTERS`).
"""

from __future__ import annotations

from typing import Any, Final

from broker.audit.index import REVIEW_OUTCOMES
from broker.audit.query import FILTERS
from broker.pipeline.retention import HOLD_REASONS
from broker.web import notshared, traceability
from broker.web.params import MAX_LIMIT
from broker.web.reviews import PRIORITY_CHOICES, REASONS
from broker.web.trailview import STANDINGS
from broker.web.vocabulary import (
    DECISIONS,
    EVENTS,
    INTEGRITY_STATES,
    NOT_SHARED_REASONS,
    RECEIPT_STATUSES,
    REVIEW_STATES,
    VOLUMES_BY,
)

_PROBLEM = {"$ref": "#/components/responses/Problem"}
_ERRORS = {"400": _PROBLEM, "401": _PROBLEM, "403": _PROBLEM, "500": _PROBLEM, "503": _PROBLEM}


def _q(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


def _enum(values: Any) -> dict[str, Any]:
    return {"enum": list(values)}


_WHEN: Final = {"type": "string", "anyOf": [{"format": "date"}, {"format": "date-time"}]}
# what each filter of the audit index means (a filter the index adds is documented as a plain string)
_FILTER_DOCS: Final[dict[str, tuple[str, dict[str, Any] | None]]] = {
    "agency": ("sending agency id", None), "recipient": ("recipient agency id", None),
    "type": ("message type", None), "event": ("what the record is of", _enum(EVENTS)),
    "decision": ("the decision recorded", _enum(DECISIONS)),
    "lawfulBasis": ("UK GDPR / DPA 2018 basis code", None), "consentStatus": ("consent status code", None),
    "message": ("message id", None), "code": ("rejection code", None),
    "notSharedReason": ("decisions not to share with this reason code", _enum(NOT_SHARED_REASONS)),
}
_FILTERS = [
    *(_q(name, *_FILTER_DOCS.get(name, (name, None))) for name in FILTERS),
    _q("flagged", "only records flagged (or not) for IG review", {"type": "boolean"}),
    _q("since", "from this date or time (UTC), inclusive", _WHEN),
    _q("until", "before this date or time (UTC)", _WHEN),
]
_PAGING = [_q("limit", "page size", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}),
           _q("cursor", "the `next` value of the previous page")]


def _ok(schema_ref: str, description: str) -> dict[str, Any]:
    return {"200": {"description": description,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}},
            **_ERRORS}


def _op(summary: str, roles: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "description": f"Roles: {roles}.", "security": [{"bearer": []}],
            "responses": responses, **extra}


_REASON: Final = {"enum": list(NOT_SHARED_REASONS), "description": "on a decision not to share: the "
                   "practitioner's reason code (schemas/decision-not-to-share.v1.json); never their own words"}
_REASON_LABELS: Final = {"type": "object", "description": "each reason code not to share and its label",
                         "properties": {code: {"const": label} for code, label in notshared.LABELS.items()}}
_STRINGS: Final = {"type": "array", "items": {"type": "string"}}
_COVERAGE: Final = {
    "Coverage": {"type": "object", "required": ["rulebook", "scenarios", "total", "gaps", "rows", "rules", "failing"],
                 "properties": {
        "rulebook": {"type": "object", "properties": {"edition": {"type": "string"}, "title": {"type": "string"},
                                                      "file": {"type": "string"}}},
        "scenarios": {"type": "object", "description": "the scenario file beside the rulebook; when missing or "
                      "invalid, no item counts as tested", "properties": {
            "state": _enum(traceability.SCENARIO_STATES), "file": {"type": "string"},
            "count": {"type": "integer"}, "failing": {"type": "integer"}, "detail": {"type": ["string", "null"]}}},
        "computedAt": {"type": "string", "format": "date-time"},
        "total": {"type": "integer", "description": "items traced"},
        "gaps": {"type": "integer", "description": "items without a rule or a passing scenario"},
        "rows": {"type": "array", "items": {"$ref": "#/components/schemas/CoverageRow"}},
        "rules": {"type": "object", "description": "each rule named in a row: what it says and its citations",
                  "additionalProperties": {"type": "object", "properties": {"says": {"type": "string"},
                                                                            "cite": _STRINGS}}},
        "failing": {"type": "array", "items": {"type": "object", "properties": {
            "scenario": {"type": "string"}, "rule": {"type": ["string", "null"]}, "problems": _STRINGS}}}}},
    "CoverageRow": {"type": "object", "required": ["kind", "id", "label", "rules", "scenarios", "gap"], "properties": {
        "kind": _enum(kind for kind, _ in traceability.KINDS), "id": {"type": "string"},
        "label": {"type": "string"}, "source": {"type": "string", "description": "citation or edition"},
        "note": {"type": "string"}, "rules": _STRINGS, "scenarios": {**_STRINGS, "description": "passing only"},
        "gap": {"oneOf": [{"enum": ["no rule", "no scenario"]}, {"type": "null"}]},
        "failing": {**_STRINGS, "description": "failing scenarios that would test this item"}}},
}
_MESSAGE = {"name": "message", "in": "path", "required": True, "schema": {"type": "string"}}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Safeguarding Broker audit API", "version": "1.0.0",
                 "description": "The lawful-basis audit log of every sharing decision: metadata only, never "
                                "personal data. Bearer JWTs (EdDSA) with roles ig-officer, auditor, operator."},
        "servers": [{"url": "/"}],
        "paths": {
            "/api/v1/records": {"get": _op("List audit records, newest first", "ig-officer, auditor",
                                           _ok("RecordPage", "a page of records"), parameters=_FILTERS + _PAGING)},
            "/api/v1/records.csv": {"get": _op(
                "Export the filtered records as CSV (streamed; the export is itself audited)", "ig-officer, auditor",
                {"200": {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}}, **_ERRORS},
                parameters=_FILTERS)},
            "/api/v1/messages/{message}/trail": {"get": _op(
                "Everything recorded about one message and its replies", "ig-officer, auditor",
                _ok("Trail", "the trail") | {"404": _PROBLEM},
                parameters=[{"name": "message", "in": "path", "required": True, "schema": {"type": "string"}}])},
            "/api/v1/subject-search": {"post": _op(
                "Find the records about one child by NHS number, or by name and date of birth "
                "(matched through a keyed blind index; the search is audited without the identifier)", "ig-officer",
                _ok("SubjectResult", "messages and records about that child"),
                requestBody={"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/SubjectSearch"}}}})},
            "/api/v1/subjects/proof": {"post": _op(
                "Everything recorded about one child (found as by the subject search) as an sgb-audit-proof/1 "
                "bundle: the records, their inclusion proofs and the signed checkpoints, for the ICO or a court to "
                "check offline (docs/transparency.md). It names the messages, never the child; the download is "
                "audited with counts only", "ig-officer",
                {"200": {"description": "the proof bundle, as an attachment", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ProofBundle"}}}}, "404": _PROBLEM, **_ERRORS},
                requestBody={"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/SubjectSearch"}}}})},
            "/api/v1/reviews": {
                "get": _op("Items awaiting IG review, highest priority first (the rulebook's triage), or reviewed, "
                           "or escalated to the DPO; filtered", "ig-officer, auditor", _ok("ReviewPage", "items"),
                           parameters=[_q("state", " or ".join(REVIEW_STATES), _enum(REVIEW_STATES)),
                                       _q("agency", "sending agency id"), _q("type", "message type"),
                                       _q("priority", "triage priority", _enum(PRIORITY_CHOICES)),
                                       _q("reason", "a reason the item gives", _enum(list(REASONS))),
                                       _q("reviewer", "who reviewed it"),
                                       _q("outcome", "review outcome", _enum(list(REVIEW_OUTCOMES))), *_PAGING]),
                "post": _op("Record a review outcome (an audit record in its turn)", "ig-officer",
                            {"201": {"description": "the audit record of the review", "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Record"}}}},
                             "404": _PROBLEM, "409": _PROBLEM, **_ERRORS},
                            requestBody={"required": True, "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/ReviewOutcome"}}}}),
            },
            "/api/v1/reviews/bulk": {"post": _op(
                "One outcome for up to 200 items an officer has read: the items listed, or every open item "
                "matching the queue's filters (refused if more than 200 match); each an audit record saying how "
                "many the decision covered; items reviewed meanwhile are skipped", "ig-officer",
                {"201": {"description": "the audit records, and how many items were skipped", "content": {
                    "application/json": {"schema": {"type": "object", "properties": {
                        "recorded": {"type": "array", "items": {"$ref": "#/components/schemas/Record"}},
                        "skipped": {"type": "integer"}}}}}}, **_ERRORS},
                requestBody={"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["outcome"], "oneOf": [{"required": ["items"]},
                                                                          {"required": ["filters"]}], "properties": {
                        "items": {"type": "array", "minItems": 1, "maxItems": 200, "items": {"type": "string"}},
                        "filters": {"type": "object", "description": "the GET /api/v1/reviews filters of the view",
                                    "additionalProperties": {"type": "string"}},
                        "outcome": {"enum": list(REVIEW_OUTCOMES)},
                        "reference": {"type": "string", "maxLength": 40, "pattern": "^[A-Za-z0-9/-]+$"}}}}}})},
            "/api/v1/integrity": {"get": _op("The last verification of the log", "ig-officer, auditor, operator",
                                             _ok("Integrity", "integrity status"))},
            "/api/v1/integrity/verify": {"post": _op("Verify every chain now", "ig-officer, auditor, operator",
                                                     _ok("Integrity", "integrity status"))},
            "/api/v1/volumes": {"get": _op(
                "Decisions per day by lawful basis, agency or decision", "ig-officer, auditor, operator",
                _ok("Volumes", "counts"), parameters=[
                    _q("by", "grouping", _enum(VOLUMES_BY)),
                    _q("since", "from (default 30 days ago)", _WHEN), _q("until", "until (default tomorrow)", _WHEN)])},
            "/api/v1/holds": {"get": _op("Legal holds in force", "ig-officer, auditor", _ok("Holds", "holds"))},
            "/api/v1/holds/{message}": {
                "put": _op("Place a legal hold on a message (audited)", "ig-officer",
                           {"201": {"description": "the hold", "content": {"application/json": {
                               "schema": {"$ref": "#/components/schemas/Hold"}}}}, "404": _PROBLEM, **_ERRORS},
                           parameters=[_MESSAGE], requestBody={"required": True, "content": {"application/json": {
                               "schema": {"$ref": "#/components/schemas/HoldRequest"}}}}),
                "delete": _op("Release a legal hold (audited)", "ig-officer",
                              _ok("Released", "released") | {"404": _PROBLEM}, parameters=[_MESSAGE]),
            },
            "/api/v1/maintenance": {"put": _op(
                "Maintenance mode: stop (or resume) taking new work; /readyz answers 503 meanwhile", "operator",
                {"200": {"description": "the mode now", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"maintenance": {"type": "boolean"}}}}}}, **_ERRORS},
                requestBody={"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["on"], "properties": {"on": {"type": "boolean"}}}}}})},
            "/api/v1/rulebook/coverage": {"get": _op(
                "The rulebook in force traced to the guidance: for each golden rule, clock and lawful-basis code, "
                "the rules that implement it (with their citations) and the passing scenarios that test it; gaps "
                "and failing scenarios named. Computed once per rulebook load.", "ig-officer, auditor, operator",
                _ok("Coverage", "the traceability table") | {"404": _PROBLEM})},
            "/api/v1/retention": {"get": _op("Retention periods and what they affect (counts)",
                                             "ig-officer, auditor, operator", _ok("Retention", "retention"))},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "responses": {"Problem": {"description": "an error (RFC 9457)", "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}},
            "schemas": {
                "Problem": {"type": "object", "required": ["code", "status", "detail"], "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                    "code": {"type": "string", "description": "stable error code"},
                    "detail": {"type": "string"}}},
                "Record": {"type": "object", "required": ["id", "at", "event"], "additionalProperties": True,
                           "description": "one audit record (metadata only)", "properties": {
                               "id": {"type": "string"}, "at": {"type": "string", "format": "date-time"},
                               "event": {"type": "string"}, "message": {"type": "string"},
                               "type": {"type": "string"}, "sender": {"type": "string"},
                               "recipient": {"type": "string"}, "decision": {"type": "string"},
                               "rules": {"type": "array", "items": {"type": "string"}},
                               "fields": {"type": "array", "items": {"type": "string"}},
                               "withheld": {"type": "array", "items": {"type": "string"}},
                               "flags": {"type": "array", "items": {"type": "string"}},
                               "lateReason": {"type": "string", "description": "a message sent after its clock "
                                              "ran out: the reason code it gave"},
                               "sharing": {"type": "object"}, "n": {"type": "integer"},
                               "prev": {"type": "string"}, "instance": {"type": "string"},
                               "re": {"type": "string", "description": "the message this one answers"},
                               "due": {"type": "string", "format": "date-time"},
                               "receiptStatus": {"enum": list(RECEIPT_STATUSES), "description":
                                                 "on an agency's receipt: where the message it is about "
                                                 "stands with that agency"},
                               "receiptFor": {"type": "string", "description":
                                              "on an agency's receipt: the message it is about"},
                               "meetsDeadline": {"type": "boolean", "description":
                                                 "this reply stopped the deadline on the message it answers"},
                               "code": {"type": "string", "description": "the stable code of a refusal, "
                                        "rejection or decision not to share"},
                               "notSharedReason": _REASON}},
                "RecordPage": {"type": "object", "required": ["items"], "properties": {
                    "items": {"type": "array", "items": {"$ref": "#/components/schemas/Record"}},
                    "next": {"type": ["string", "null"]}, "notSharedReasons": _REASON_LABELS}},
                "Trail": {"type": "object", "required": ["message", "records", "summary"], "properties": {
                    "message": {"type": "string"},
                    "records": {"type": "array", "items": {"$ref": "#/components/schemas/Record"}},
                    "summary": {"$ref": "#/components/schemas/TrailSummary"}}},
                "TrailSummary": {"type": "object", "required": ["recipients", "replies"], "properties": {
                    "received": {"type": ["object", "null"]},
                    "recipients": {"type": "array", "items": {"$ref": "#/components/schemas/RecipientStanding"}},
                    "replies": {"type": "array", "items": {"type": "object", "properties": {
                        "message": {"type": "string"}, "type": {"type": "string"}, "sender": {"type": "string"},
                        "at": {"type": "string", "format": "date-time"},
                        "receiptStatus": {"enum": list(RECEIPT_STATUSES)}}}}}},
                "RecipientStanding": {
                    "type": "object", "required": ["recipient", "standing", "progress"],
                    "description": "one recipient's decision and where the message stands with it",
                    "properties": {
                        "recipient": {"type": "string"}, "decision": {"type": ["string", "null"]},
                        "code": {"type": ["string", "null"]},
                        "notSharedReason": _REASON,
                        "notSharedReasonLabel": {"type": "string", "description": "the reason in words"},
                        "lateReason": {"type": "string", "description": "sent late: the reason code it gave"},
                        "fields": {"type": "array", "items": {"type": "string"}},
                        "withheld": {"type": "array", "items": {"type": "string"}},
                        "rules": {"type": "array", "items": {"type": "string"}},
                        "due": {"type": ["string", "null"]}, "overdue": {"type": "string"},
                        "deadlineMet": {"type": "string", "description": "when the recipient's reply stopped the "
                                        "deadline"},
                        "standing": {"oneOf": [{"enum": list(STANDINGS)}, {"type": "null"}], "description":
                                     "shared, then delivered, accepted, actioned (from the recipient's "
                                     "receipts), or not-delivered; null when not shared"},
                        "progress": {"type": "array", "description": "each status reached, with its time",
                                     "items": {"type": "object", "required": ["status", "at"], "properties": {
                                         "status": {"enum": list(STANDINGS)},
                                         "at": {"type": "string", "format": "date-time"}}}}}},
                "SubjectSearch": {"type": "object", "anyOf": [
                    {"required": ["nhsNumber"]}, {"required": ["familyName", "dateOfBirth"]}], "properties": {
                    "nhsNumber": {"type": "string", "minLength": 1}, "givenName": {"type": "string"},
                    "familyName": {"type": "string", "minLength": 1},
                    "dateOfBirth": {"type": "string", "format": "date"},
                    "limit": {"type": "integer"}, "cursor": {"type": "string"}}},
                "SubjectResult": {"type": "object", "required": ["messages", "items"], "properties": {
                    "messages": {"type": "array", "items": {"type": "string"}},
                    "items": {"type": "array", "items": {"$ref": "#/components/schemas/Record"}},
                    "next": {"type": ["string", "null"]}}},
                "ProofBundle": {"type": "object", "required": ["format", "query", "records", "checkpoints", "keys"],
                                "properties": {
                    "format": {"const": "sgb-audit-proof/1"},
                    "query": {"oneOf": [{"type": "string"}, _STRINGS], "description": "the message ids proved"},
                    "records": {"type": "array", "items": {"type": "object", "properties": {
                        "id": {"type": "string"}, "message": {"type": "string"}, "instance": {"type": "string"},
                        "index": {"type": "integer"}, "record": {"type": "string", "contentEncoding": "base64"},
                        "checkpoint": {"type": "integer"}, "proof": _STRINGS}}},
                    "checkpoints": {"type": "array", "items": {"type": "object", "properties": {
                        "instance": {"type": "string"}, "note": {"type": "string"}}}},
                    "keys": _STRINGS,
                    "pending": {"type": "object", "description": "records no checkpoint of their instance covers "
                                "yet, left out (a later download covers them)", "properties": {
                                    "records": _STRINGS, "detail": {"type": "string"}}}}},
                "ReviewItem": {"type": "object", "required": ["item", "kind", "message", "reasons"], "properties": {
                    "item": {"type": "string"}, "kind": {"enum": ["flagged", "overdue", "reviewed"]},
                    "priority": _enum(PRIORITY_CHOICES), "rank": {"type": "integer"},
                    "point": {"type": ["number", "null"], "description": "a sampled item's SHA-256(record id) / 2^256"},
                    "message": {"type": "string"}, "recipient": {"type": ["string", "null"]},
                    "reasons": {"type": "array", "items": {"type": "string"}},
                    "outcome": {"type": ["string", "null"]}, "reviewer": {"type": ["string", "null"]}}},
                "ReviewPage": {"type": "object", "required": ["items"], "properties": {
                    "items": {"type": "array", "items": {"$ref": "#/components/schemas/ReviewItem"}},
                    "next": {"type": ["string", "null"]}, "matching": {"type": "integer"},
                    "reasons": {"type": "object"}, "outcomes": {"type": "object"}}},
                "ReviewOutcome": {"type": "object", "required": ["item", "outcome"], "properties": {
                    "item": {"type": "string", "minLength": 1}, "outcome": {"enum": list(REVIEW_OUTCOMES)},
                    "reference": {"type": "string", "maxLength": 40, "pattern": "^[A-Za-z0-9/-]+$",
                                  "description": "a case or ticket number; never a name"}}},
                "Integrity": {"type": "object", "required": ["state"], "properties": {
                    "state": _enum(INTEGRITY_STATES),
                    "at": {"type": "string"}, "records": {"type": "integer"},
                    "problems": {"type": "array", "items": {"type": "object"}}}},
                "HoldRequest": {"type": "object", "required": ["reason"], "properties": {
                    "reason": {"enum": list(HOLD_REASONS)},
                    "reference": {"type": "string", "maxLength": 40, "pattern": "^[A-Za-z0-9/-]+$"}}},
                "Hold": {"type": "object", "required": ["message", "reason", "by", "at"], "properties": {
                    "message": {"type": "string"}, "reason": {"type": "string"}, "by": {"type": "string"},
                    "at": {"type": "string"}, "reference": {"type": "string"}}},
                "Holds": {"type": "object", "required": ["items"], "properties": {
                    "items": {"type": "array", "items": {"$ref": "#/components/schemas/Hold"}}}},
                "Released": {"type": "object", "properties": {"message": {"type": "string"},
                                                              "released": {"type": "boolean"}}},
                "Retention": {"type": "object", "properties": {
                    "deliveryRetentionDays": {"type": "number"}, "auditRetentionYears": {"type": "number"},
                    "deliveriesWaiting": {"type": "integer"}, "legalHolds": {"type": "integer"},
                    "auditRecordsPastRetention": {"type": "integer"}, "expiredDeliveries": {"type": "integer"},
                    "auditRecordsAreDeleted": {"const": False}}},
                **_COVERAGE,
                "Volumes": {"type": "object", "required": ["rows"], "properties": {
                    "by": {"type": "string"}, "rows": {"type": "array", "items": {"type": "object", "properties": {
                        "day": {"type": "string"}, "key": {"type": "string"}, "count": {"type": "integer"}}}}}},
            },
        },
    }
