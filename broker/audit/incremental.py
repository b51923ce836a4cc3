"""The incremental integrity check (issue 16, item 3; docs/transparency.md).

Per instance chain it continues from the last transparency checkpoint it verified and *trusted*:
the chain's next block, the record hash at that size and the tree's frontier there (every block
states its frontier, so the trusted point is just the block the checkpoint's size ends). It reads
only the messages stored after that block, checks their blocks exactly as the full check does
(the same :class:`~broker.audit.verify.Verifier`: signatures, ``prev``/``n`` links, the stated
tree), carries the tree on from the trusted frontier, and checks every transparency checkpoint
stored since (the broker's signature, and its root against the recomputed tree).

The newest checkpoint is consistent with the trusted one by construction: its root is the root
of a tree grown leaf by leaf from the trusted tree's frontier, so the trusted tree is a prefix of
it (what an RFC 9162 consistency proof would show). On success the newest checkpoint of each chain
becomes the trusted point; on any problem nothing moves.

What it does not see: anything before the trusted point (that is what trusting it means), record
ids written twice across that boundary, and the JWS head checkpoints. ``sgb audit verify`` and the
IG page's "Verify the whole log" run the full check for those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext

from broker.audit.chain import is_checkpoint, is_cosigned, is_tlog, read_stream
from broker.audit.verify import Report, Verifier, broker_keys, broker_public_keys
from broker.config import AuditSettings
from broker.timestamps import iso
from broker.wire.registry import Registry
from broker.wire.subjects import AUDIT

TRUSTED = "integrity.trusted"  # the audit index's meta key: instance -> the trusted point


@dataclass(slots=True)
class Incremental:
    report: Report
    read: int                                  # records read and verified this run
    trusted_from: dict[str, dict[str, Any]]    # the points this run continued from
    trusted: dict[str, dict[str, Any]] = field(default_factory=dict)  # the points to trust now

    def summary(self) -> dict[str, Any]:
        def brief(points: dict[str, dict[str, Any]]) -> dict[str, Any]:
            return {i: {"size": p["size"], "at": p.get("at"), "root": p["root"]} for i, p in points.items()}

        return self.report.summary() | {"scope": "incremental", "recordsRead": self.read,
                                        "from": brief(self.trusted_from), "trusted": brief(self.trusted)}


async def verify_incremental(js: JetStreamContext, registry: Registry, trusted: dict[str, dict[str, Any]], *,
                             stream: str = AUDIT,
                             tlog_origin: str = AuditSettings().tlog_origin) -> Incremental:
    """Verify every chain from its trusted point (from genesis for a chain with none)."""
    verifier = Verifier(broker_keys(registry), note_keys=broker_public_keys(registry), tlog_origin=tlog_origin,
                        keep_states=True)
    for instance, point in trusted.items():
        verifier.resume(instance, block=point["block"], size=point["size"], head=point["head"],
                        frontier=[bytes.fromhex(h) for h in point["frontier"]])
    after = {instance: int(point["seq"]) for instance, point in trusted.items()}
    newest: dict[str, tuple[int, float, bytes]] = {}
    async for stored in read_stream(js, stream=stream, start=min(after.values(), default=0) + 1):
        if is_cosigned(stored.subject) or is_checkpoint(stored.subject):
            continue  # the cosigned copy's log signature is checked as .tlog; JWS heads: the full check
        if is_tlog(stored.subject):
            verifier.tlog(stored.seq, stored.subject, stored.data)
            newest[stored.subject.removeprefix("sg.audit.").removesuffix(".tlog")] = (
                stored.seq, stored.time, stored.data)
        elif stored.seq > after.get(stored.subject.removeprefix("sg.audit."), 0):
            verifier.block(stored.seq, stored.subject, stored.data)
    report = verifier.finish()
    result = Incremental(report, report.records, dict(trusted))
    if not report.ok:
        return result  # report it; the trusted points stay where they were
    result.trusted = dict(trusted)
    for instance, (seq, at, note) in newest.items():
        size = _size(note)
        state = verifier.states.get(instance, {}).get(size) if size is not None else None
        if state is not None:  # its root was checked against this very tree by finish()
            if state["seq"] is None:  # the trusted point itself: no block read since
                state = state | {"seq": trusted[instance]["seq"]}
            result.trusted[instance] = state | {"at": iso(at), "checkpointSeq": seq}
    return result


def _size(note: bytes) -> int | None:
    """The tree size a (verified) checkpoint note states: its second line."""
    try:
        return int(note.split(b"\n", 2)[1])
    except (IndexError, ValueError):
        return None
