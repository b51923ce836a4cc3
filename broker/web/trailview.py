"""What one message's trail says, per recipient: the decision (shared with these fields, refused,
or not shared and why), what happened after, and where the message stands with each recipient.

Built from the message's audit records alone (:meth:`broker.audit.index.AuditIndex.trail`), for
``GET /api/v1/messages/{message}/trail`` and the trail page.
"""

from __future__ import annotations

from typing import Any, Final

from broker.web import notshared

# Where a shared message stands with a recipient, in order; a later receipt of a lower rank (a
# "delivered" arriving after the "accepted") does not move it back.
STANDINGS: Final = ("shared", "not-delivered", "delivered", "accepted", "actioned")


def summarise(trail: list[dict[str, Any]], message: str) -> dict[str, Any]:
    """Per recipient of ``message``: the decision, the fields sent or withheld, what happened
    after (overdue, deadline met), and where it stands (shared, then delivered, accepted and
    actioned from the recipient's receipts, or not-delivered), each step with its time."""
    recipients: dict[str, dict[str, Any]] = {}
    for r in trail:
        who = r.get("recipient")
        if not who or r.get("message") != message:
            continue  # a reply's records name the original sender as their recipient
        entry = recipients.setdefault(who, {"recipient": who, "standing": None, "progress": []})
        event = r.get("event")
        if event in ("shared", "refused", "not-shared"):
            entry |= {"decision": r.get("decision"), "fields": r.get("fields", []),
                      "withheld": r.get("withheld", []), "rules": r.get("rules", []), "due": r.get("due"),
                      "code": r.get("code")}
            if r.get("notSharedReason"):  # a decision not to share: the practitioner's reason code
                entry |= {"notSharedReason": r["notSharedReason"],
                          "notSharedReasonLabel": notshared.label(r["notSharedReason"])}
            if r.get("lateReason"):  # sent after its clock ran out: the reason code it gave
                entry["lateReason"] = r["lateReason"]
            if event == "shared":
                _step(entry, "shared", r.get("at"))
        elif event == "overdue":
            entry["overdue"] = r.get("at")
        elif event == "expired":  # the broker removed it uncollected, and told the sender
            _step(entry, "not-delivered", r.get("at"))
    replies = []
    for r in trail:
        if r.get("event") != "received" or not r.get("re"):
            continue
        reply = {"message": r["message"], "type": r.get("type"), "sender": r.get("sender"), "at": r.get("at")}
        if r.get("receiptStatus"):
            reply["receiptStatus"] = r["receiptStatus"]
        replies.append(reply)
        replier = recipients.get(str(r.get("sender")))
        if r.get("re") != message or replier is None or replier.get("decision") != "share":
            continue
        if r.get("meetsDeadline"):
            replier.setdefault("deadlineMet", r.get("at"))
        if r.get("type") == "receipt" and r.get("receiptStatus") in STANDINGS:
            _step(replier, str(r["receiptStatus"]), r.get("at"))
    received = next((r for r in trail if r.get("event") in ("received", "rejected") and not r.get("re")), None)
    return {"received": received and {k: received.get(k) for k in ("at", "type", "sender", "event", "code")},
            "recipients": list(recipients.values()), "replies": replies}


def _step(entry: dict[str, Any], status: str, at: Any) -> None:
    """Add a step to a recipient's progress (the first time of each status) and move its standing on."""
    if any(step["status"] == status for step in entry["progress"]):
        return
    entry["progress"].append({"status": status, "at": at})
    entry["progress"].sort(key=lambda step: (str(step["at"]), STANDINGS.index(step["status"])))
    current = entry["standing"]
    if current is None or STANDINGS.index(status) > STANDINGS.index(current):
        entry["standing"] = status
