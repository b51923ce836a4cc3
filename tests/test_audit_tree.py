"""Each audit chain is an RFC 9162 Merkle tree (issue 16): every block states the tree after it,
a restarted writer carries it on, a chain written before blocks stated it is read back once, the
transparency checkpoints (C2SP tlog-checkpoint notes on ``sg.audit.<instance>.tlog``) verify with
notes.py and the broker's key, and verification names a tree or a checkpoint that does not match
the records. A real nats-server throughout; tampering as in tests/test_audit_integrity.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from broker.audit import notes
from broker.audit.chain import AuditWriter, Head, Stored, build_block, is_block, is_tlog, read_stream
from broker.audit.checkpoints import build_tlog_checkpoint, tlog_origin
from broker.audit.export import verify_store
from broker.audit.merkle import MerkleTree
from broker.audit.tree import record_leaf
from broker.config import AuditSettings, Settings
from broker.identity.keys import Identity, load_identity
from broker.pipeline.service import Broker
from broker.wire.jws import unverified
from broker.wire.registry import Registry
from broker.wire.subjects import AUDIT, audit_subject, tlog_subject
from tests.conftest import ClientFactory
from tests.helpers import eventually, referral, sharing
from tests.support.cli import sgb
from tests.test_audit_integrity import _edit, kinds, tampered_copy, verify_copy

pytestmark = pytest.mark.timeout(90)
ORIGIN = "sgb.invalid/audit"


def _records(start: int, count: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "event": "shared", "decision": "share", "message": f"m{i}"}
            for i in range(start, start + count)]


async def _stored(js: JetStreamContext) -> list[Stored]:
    return [s async for s in read_stream(js, idle=0.5)]


def _chain(stored: list[Stored], instance: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The records and the block claims of ``instance``'s chain, in order."""
    blocks = [unverified(s.data)[1] for s in stored if s.subject == audit_subject(instance)]
    return [r for b in blocks for r in b["records"]], blocks


def _note_keys(registry: Registry, instance: str) -> list[notes.VerifierKey]:
    origin = f"{ORIGIN}/{instance}"
    return [notes.VerifierKey(origin, notes.ED25519, k.x) for k in registry.broker.keys if k.use == "sig"]


def _assert_blocks_state_the_tree(records: list[dict[str, Any]], blocks: list[dict[str, Any]]) -> MerkleTree:
    tree = MerkleTree(record_leaf(r) for r in records)
    assert [r["n"] for r in records] == list(range(len(records)))
    for block in blocks:
        size = block["first"] + block["count"]
        assert block["tree"]["size"] == size
        assert block["tree"]["root"] == tree.root(size).hex()
        assert len(block["tree"]["frontier"]) == size.bit_count()
    return tree


async def test_blocks_state_the_tree_and_a_restarted_writer_carries_it_on(
        js: JetStreamContext, identity: Identity, registry: Registry) -> None:
    audit = AuditSettings(checkpoint_interval=3600, publish_deadline=2.0, tlog_checkpoint_records=7)
    async with AuditWriter(js, identity, "tree", audit) as writer:
        for i in range(6):
            await writer.append(_records(2 * i, 2))
    first_records, first_blocks = _chain(await _stored(js), "tree")
    assert len(first_records) == 12
    _assert_blocks_state_the_tree(first_records, first_blocks)

    async with AuditWriter(js, identity, "tree", audit) as writer:  # restarted: the frontier from the last block
        assert writer.head.count == 12 and writer.head.frontier is not None
        for i in range(5):
            await writer.append(_records(12 + 3 * i, 3))
    stored = await _stored(js)
    records, blocks = _chain(stored, "tree")
    assert len(records) == 27 and records[:12] == first_records
    tree = _assert_blocks_state_the_tree(records, blocks)
    assert blocks[-1]["tree"]["root"] == tree.root().hex()

    # a transparency checkpoint at least every 7 records, and one when the writer closed
    signed = [notes.open_checkpoint(s.data, origin=f"{ORIGIN}/tree", log_keys=_note_keys(registry, "tree"))
              for s in stored if s.subject == tlog_subject("tree")]
    sizes = [c.checkpoint.size for c in signed]
    assert sizes == sorted(sizes) and sizes[-1] == 27 and 12 in sizes
    assert all(b - a <= 7 + 3 for a, b in zip([0, *sizes], sizes, strict=False))
    for c in signed:
        assert c.checkpoint.root_hash == tree.root(c.checkpoint.size)
    report = await verify_store(js, registry)
    assert report.ok, [str(p) for p in report.problems]
    assert report.tlog_checkpoints == len(signed)


async def test_a_chain_written_before_blocks_stated_their_tree_is_read_back_once(
        js: JetStreamContext, identity: Identity, registry: Registry) -> None:
    head = Head(frontier=None)  # as an older writer: its blocks state no tree
    for i in range(3):
        token, head = build_block(_records(2 * i, 2), head, identity, "legacy", 0.0)
        ack = await js.publish(audit_subject("legacy"), token)
        head = replace(head, seq=ack.seq)
    async with AuditWriter(js, identity, "legacy", AuditSettings(checkpoint_interval=3600)) as writer:
        assert writer.head.count == 6 and writer.head.frontier is not None  # rebuilt from the records
        await writer.append(_records(6, 3))
    records, blocks = _chain(await _stored(js), "legacy")
    assert ["tree" in b for b in blocks] == [False, False, False, True]
    _assert_blocks_state_the_tree(records, blocks[3:])
    report = await verify_store(js, registry)
    assert report.ok, [str(p) for p in report.problems]


async def test_the_broker_publishes_transparency_checkpoints_of_its_chain(
        broker: Broker, agency: ClientFactory, settings: Settings, registry: Registry) -> None:
    police = await agency("police-met")
    jti = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
    await police.wait_outcome(jti, timeout=10)
    instance = settings.instance

    async def checkpointed() -> notes.SignedCheckpoint | None:
        try:
            msg = await broker.js.get_last_msg(AUDIT, tlog_subject(instance))
        except NotFoundError:
            return None
        signed = notes.open_checkpoint(msg.data or b"", origin=tlog_origin(settings.audit, instance),
                                       log_keys=_note_keys(registry, instance))
        return signed if signed.checkpoint.size == broker.audit.head.count else None

    signed = await eventually(checkpointed, what="a transparency checkpoint of the whole chain", timeout=10)
    records, _ = _chain(await _stored(broker.js), instance)
    assert signed.checkpoint.size == len(records) >= 2
    assert signed.checkpoint.root_hash == MerkleTree(record_leaf(r) for r in records).root()


@pytest.fixture
async def written(js: JetStreamContext, identity: Identity) -> list[Stored]:
    async with AuditWriter(js, identity, "tree", AuditSettings(checkpoint_interval=3600)) as writer:
        for i in range(4):
            await writer.append(_records(2 * i, 2))
    return await _stored(js)


async def test_a_changed_tree_or_record_is_named(written: list[Stored], settings: Settings, registry: Registry,
                                                 tmp_path: Path) -> None:
    blocks = [s for s in written if is_block(s.subject)]

    def wrong_root(claims: dict[str, Any]) -> None:
        claims["tree"]["root"] = "00" * 32

    def changed_record(claims: dict[str, Any]) -> None:
        claims["records"][-1]["decision"] = "withhold"

    for name, change in (("tree", wrong_root), ("record", changed_record)):
        messages = [(s.subject, _edit(s.data, change) if s is blocks[1] else s.data) for s in written]
        async with tampered_copy(settings, tmp_path / name, messages, []) as url:
            report = await verify_copy(settings, registry, url)
            rc, out, _ = await sgb("audit", "verify", home=settings.home, url=url)
        assert "tree" in kinds(report), (name, [str(p) for p in report.problems])
        assert any("block 1 states a Merkle tree that is not the tree of the records" in p.detail
                   for p in report.problems)
        assert rc == 5 and "TAMPERED tree: chain tree" in out


async def test_a_transparency_checkpoint_with_another_root_is_a_fork(
        written: list[Stored], settings: Settings, registry: Registry, identity: Identity, home: Path,
        tmp_path: Path) -> None:
    records, _ = _chain(written, "tree")
    origin = f"{ORIGIN}/tree"
    forged = build_tlog_checkpoint(origin, len(records), b"\x01" * 32, identity)  # the key holder's other tree
    stranger = build_tlog_checkpoint(origin, len(records), MerkleTree(record_leaf(r) for r in records).root(),
                                     load_identity(home, "police-met"))
    messages = [(s.subject, s.data) for s in written if not is_tlog(s.subject)]
    messages += [(tlog_subject("tree"), forged), (tlog_subject("tree"), stranger)]
    async with tampered_copy(settings, tmp_path, messages, []) as url:
        report = await verify_copy(settings, registry, url)
        rc, out, _ = await sgb("audit", "verify", home=settings.home, url=url)
    assert kinds(report) == {"forked", "signature"}, [str(p) for p in report.problems]
    assert any(f"the transparency checkpoint of size {len(records)} has another root" in p.detail
               for p in report.problems)
    assert [p.detail for p in report.problems if p.kind == "signature"] == [
        "transparency checkpoint: the note has no signature by a trusted key"]  # the stranger's
    assert rc == 5 and "TAMPERED forked" in out
