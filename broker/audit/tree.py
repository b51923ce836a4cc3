"""Each audit chain's Merkle tree, as its blocks state it (issue 16; docs/transparency.md).

Leaf ``i`` of an instance's tree is ``leaf_hash`` of record ``n = i`` in canonical JSON (sorted
keys, with ``n`` and ``prev``): the exact bytes the block carries, and the bytes a verifier gets
again from the record it reads. Every block states the tree after it, ``"tree": {"size", "root",
"frontier"}``; the frontier (:class:`~broker.audit.merkle.Frontier`) is all a writer keeps.
"""

from __future__ import annotations

import orjson
import structlog
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from broker.audit.merkle import Frontier, leaf_hash
from broker.errors import InvalidEnvelope
from broker.transport.errors import nats_failures, quietly
from broker.wire import jws
from broker.wire.subjects import AUDIT, audit_subject

log = structlog.get_logger("sgb.audit")


def record_bytes(record: object) -> bytes:
    """A record's leaf data: its canonical JSON (sorted keys), as the block carries it."""
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def record_leaf(record: object) -> bytes:
    """The leaf hash of a record as read back from a block."""
    return leaf_hash(record_bytes(record))


def stated_frontier(tree: object, size: int) -> tuple[bytes, ...] | None:
    """The frontier a block states for the tree of ``size`` records; None if it states none that fits."""
    if not isinstance(tree, dict) or tree.get("size") != size or not isinstance(tree.get("frontier"), list):
        return None
    try:
        return Frontier([bytes.fromhex(h) for h in tree["frontier"]], size).hashes
    except (TypeError, ValueError):
        return None


async def rebuild_frontier(js: JetStreamContext, instance: str, count: int, seq: int) -> tuple[bytes, ...] | None:
    """The frontier of the tree of ``instance``'s chain, from its records up to stream sequence
    ``seq`` (``count`` of them). Read once, for a chain whose last block was written before blocks
    carried their tree; None if the chain does not read back whole (its blocks then carry no tree)."""
    tree = Frontier()
    if seq:
        with nats_failures("cannot read the audit chain"):
            sub = await js.subscribe(audit_subject(instance), stream=AUDIT, ordered_consumer=True,
                                     config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
            try:
                while True:
                    msg = await sub.next_msg(timeout=5.0)
                    try:
                        records = jws.unverified(msg.data)[1].get("records")
                    except InvalidEnvelope:  # not a block: the tree stops short, and says so below
                        records = None
                    for record in records if isinstance(records, list) else ():
                        if isinstance(record, dict) and record.get("n") == tree.size:
                            tree.append(record_leaf(record))
                    if msg.metadata.sequence.stream >= seq:
                        break
            finally:
                with quietly():
                    await sub.unsubscribe()
    if tree.size != count:
        log.error("audit chain does not read back whole; its blocks will carry no tree", instance=instance,
                  records=count, read=tree.size)
        return None
    log.info("audit chain tree rebuilt from its records", instance=instance, records=count)
    return tree.hashes
