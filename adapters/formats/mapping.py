"""What every native-format mapper shares: the canonical message it produces, the one error it
raises, and the check of each message against its canonical schema before anything is sent.

A mapper is a function ``(body, context) -> list[Outbound]``. It maps a whole native document
(a FHIR Bundle, a PPN export, a case-system event) and returns every message it makes, each
already checked against its schema, or raises :class:`Unmappable` naming the field (a JSON
pointer, or a CSV row and column) and never a value. The adapter sends nothing unless the
whole document mapped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import jsonschema_rs

from adapters.sdk import Handed
from broker.errors import RejectedMessage
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry


class Unmappable(RejectedMessage):
    """A native record that cannot become canonical messages; ``field`` names where."""

    code = "unmappable"


@dataclass(frozen=True, slots=True)
class Outbound:
    """One canonical message a native record makes.

    ``sharing``: laid over the adapter's configured sharing block for ``typ`` (its information-sharing
    agreement's agency-wide default), so a mapper gives only what the record itself says (who
    decided, urgency) and, for a message with personal data, must give the case's consent facts
    (:mod:`adapters.formats.consent`): the default never supplies them. ``answers``: the id of a
    delivery (or of the original message) this replies to; the adapter then sets ``re`` and
    ``thread`` from what it handed over and, if ``to`` is empty, addresses the reply to the
    original sender. ``follows``: the id of a message this agency sent that this one follows up
    (a conference's outcome after the strategy discussion that opened its clock); the adapter sets
    ``re`` to it, so the broker closes the clock that message opened on the agency itself.
    """

    typ: str
    to: tuple[str, ...]
    payload: dict[str, Any]
    sharing: Mapping[str, Any] | None = None
    answers: str | None = None
    thread: str | None = None
    jti: str | None = None  # a message id of the mapper's own (e.g. one receipt per delivery and status)
    follows: str | None = None


@dataclass(frozen=True, slots=True)
class Sent:
    """A message this adapter published for its agency (ids and its type only, never content):
    ``re`` is the message it answered, if any."""

    message: str
    type: str
    thread: str | None = None
    re: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MapContext:
    """What a mapper may consult: who we are, the registry, the schemas, adapter options, what
    this adapter handed over before (to address replies) and what it sent (to follow up the
    agency's own messages; the :class:`~adapters.runtime.inbound.Submitter` supplies it)."""

    agency: str
    registry: Registry
    catalogue: Catalogue
    options: Mapping[str, Any] = field(default_factory=dict)
    handed: Callable[[str], Handed | None] = lambda _id: None
    sent: Callable[[str], Sent | None] = lambda _id: None


class Mapper(Protocol):
    def __call__(self, body: bytes, context: MapContext, /) -> list[Outbound]: ...


def local_authority(context: MapContext) -> str:
    """The local authority this adapter's referrals go to (``local_authority`` in its settings)."""
    la = context.options.get("local_authority")
    if not isinstance(la, str) or context.registry.get(la) is None:
        raise Unmappable("the adapter has no local authority configured for referrals", field="/",
                         rule="adapter.local_authority")
    return la


def checked(catalogue: Catalogue, typ: str, to: tuple[str, ...], payload: dict[str, Any], where: str,
            **extra: Any) -> Outbound:
    """``Outbound(typ, to, payload, **extra)`` once the payload matches its canonical schema."""
    mtype = catalogue.message_type(typ, 1)
    assert mtype is not None, typ
    issue = Catalogue.first_issue(mtype.validator, payload)
    if issue is not None:
        raise Unmappable(f"the record cannot make a valid {typ} ('{issue.keyword}' failed at {issue.pointer or '/'})",
                         field=where or "/", rule=f"{typ}.v1.json")
    return Outbound(typ, to, payload, **extra)


def check_native(validator: jsonschema_rs.Validator, record: Any, where: str, rule: str) -> None:
    """Raise :class:`Unmappable` at the first place ``record`` breaks its native schema; a missing
    member is named itself (its name is the schema's, never a value)."""
    issue = Catalogue.first_issue(validator, record)
    if issue is None:
        return
    missing = None
    if issue.keyword == "required":
        missing = next((getattr(e.kind, "property", None) for e in validator.iter_errors(record)), None)
    if isinstance(missing, str):
        name = missing.replace("~", "~0").replace("/", "~1")
        raise Unmappable(f"the record does not match {rule} (a required member is missing)",
                         field=f"{where}{issue.pointer}/{name}", rule=rule)
    raise Unmappable(f"the record does not match {rule} ('{issue.keyword}' failed)",
                     field=f"{where}{issue.pointer or '/'}", rule=rule)
