"""The audit log is tamper-evident: tests change a real store and show that verification says
exactly what was done.

``SG_AUDIT`` refuses deletes and purges, so the attacker here is someone with the server's
files or admin rights: the stream is copied, record for record, into a second real
nats-server whose stream allows anything, with one change applied on the way; then
``sgb audit verify`` runs against that copy.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import APIError

from broker.audit.chain import (
    BLOCK_TYP,
    GENESIS,
    Stored,
    build_block,
    is_block,
    read_head,
    read_stream,
    record_hash,
    sign,
)
from broker.audit.export import export, head_checkpoints, verify_export, verify_store
from broker.audit.verify import Report
from broker.config import Settings
from broker.identity.keys import load_identity
from broker.pipeline.service import Broker
from broker.transport.connection import connected, jetstream
from broker.transport.natsserver import embedded_nats
from broker.wire.jws import unverified
from broker.wire.registry import Registry
from broker.wire.subjects import AUDIT, AUDIT_HEADS_BUCKET
from tests.conftest import ClientFactory
from tests.helpers import referral, sharing
from tests.support.cli import sgb

pytestmark = pytest.mark.timeout(120)
MESSAGES = 5


@pytest.fixture
async def history(broker: Broker, agency: ClientFactory, settings: Settings) -> list[Stored]:
    """Five referrals sent one after another (one block each at least), then a checkpoint."""
    police = await agency("police-met")
    for _ in range(MESSAGES):
        jti = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
        await police.wait_outcome(jti, timeout=10)
    await broker.audit.checkpoint_now()
    async with connected(settings, settings.nats.url or "", name="reader") as nc:
        return [s async for s in read_stream(jetstream(nc, settings))]


def blocks_of(stored: list[Stored]) -> list[Stored]:
    return [s for s in stored if is_block(s.subject)]


@contextlib.asynccontextmanager
async def tampered_copy(settings: Settings, tmp_path: Path, messages: list[tuple[str, bytes]],
                        heads: list[bytes]) -> AsyncIterator[str]:
    """A second real nats-server holding ``messages`` in an SG_AUDIT that permits anything."""
    async with embedded_nats(tmp_path / "attacker") as url, connected(settings, url, name="attacker") as nc:
        js = jetstream(nc, settings)
        await js.add_stream(StreamConfig(name=AUDIT, subjects=["sg.audit.>"], storage=StorageType.FILE))
        for subject, data in messages:
            await js.publish(subject, data)
        kv = await js.create_key_value(KeyValueConfig(bucket=AUDIT_HEADS_BUCKET, storage=StorageType.FILE))
        for token in heads:
            await kv.put(unverified(token)[1]["instance"], token)
        yield url


async def verify_copy(settings: Settings, registry: Registry, url: str) -> Report:
    async with connected(settings, url, name="verifier") as nc:
        return await verify_store(jetstream(nc, settings), registry)


async def source_heads(settings: Settings) -> list[bytes]:
    async with connected(settings, settings.nats.url or "", name="heads") as nc:
        return await head_checkpoints(jetstream(nc, settings))


def kinds(report: Report) -> set[str]:
    return {p.kind for p in report.problems}


async def test_intact_log_verifies_and_counts_every_record(history: list[Stored], settings: Settings,
                                                           registry: Registry) -> None:
    async with connected(settings, settings.nats.url or "", name="v") as nc:
        report = await verify_store(jetstream(nc, settings), registry)
    assert report.ok, [str(p) for p in report.problems]
    records = [r for b in blocks_of(history) for r in unverified(b.data)[1]["records"]]
    assert report.records == len(records) >= 2 * MESSAGES  # received + shared per message
    assert [r["n"] for r in records] == list(range(len(records)))
    assert all(records[i + 1]["prev"] == record_hash(records[i]) for i in range(len(records) - 1))
    assert records[0]["prev"] == GENESIS
    assert report.checkpoints >= 2  # in the stream and in the heads bucket
    rc, out, err = await sgb("audit", "verify", home=settings.home, url=settings.nats.url)
    assert rc == 0, out + err
    assert "verified" in out


async def test_audit_stream_refuses_delete_and_purge(history: list[Stored], settings: Settings) -> None:
    async with connected(settings, settings.nats.url or "", name="vandal") as nc:
        js = jetstream(nc, settings)
        with pytest.raises(APIError):
            await js.delete_msg(AUDIT, blocks_of(history)[0].seq)
        with pytest.raises(APIError):
            await js.purge_stream(AUDIT)
        assert (await js.stream_info(AUDIT)).state.messages == len(history)


def _edit(data: bytes, change: Callable[[dict[str, object]], None]) -> bytes:
    """Change a block's claims and re-encode them, keeping the original (now wrong) signature."""
    header_b64, _, rest = data.partition(b".")
    _, signature = rest.split(b".")
    claims = unverified(data)[1]
    change(claims)
    body = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=")
    return header_b64 + b"." + body + b"." + signature


async def test_a_changed_record_is_named(history: list[Stored], settings: Settings, registry: Registry,
                                         tmp_path: Path) -> None:
    blocks = blocks_of(history)
    victim = blocks[2]
    target = unverified(victim.data)[1]["records"][-1]

    def change(claims: dict[str, object]) -> None:
        records = claims["records"]
        assert isinstance(records, list)
        records[-1]["sender"] = "someone-else"

    messages = [(s.subject, _edit(s.data, change) if s is victim else s.data) for s in history]
    async with tampered_copy(settings, tmp_path, messages, await source_heads(settings)) as url:
        report = await verify_copy(settings, registry, url)
        rc, out, _ = await sgb("audit", "verify", home=settings.home, url=url)
    assert not report.ok
    assert {"signature", "changed"} <= kinds(report)
    changed = next(p for p in report.problems if p.kind == "changed")
    assert changed.record == target["n"]
    assert rc == 5 and "TAMPERED changed" in out and f"record {target['n']}" in out


async def test_a_removed_block_is_named(history: list[Stored], settings: Settings, registry: Registry,
                                        tmp_path: Path) -> None:
    blocks = blocks_of(history)
    victim = blocks[1]
    first = unverified(victim.data)[1]["first"]
    messages = [(s.subject, s.data) for s in history]
    async with tampered_copy(settings, tmp_path, messages, await source_heads(settings)) as url:
        async with connected(settings, url, name="vandal") as nc:  # a real delete on the copy
            await jetstream(nc, settings).delete_msg(AUDIT, history.index(victim) + 1)
        report = await verify_copy(settings, registry, url)
    assert kinds(report) == {"removed"}
    (removed,) = report.problems
    assert removed.record == first and "blocks 1..1" in removed.detail


async def test_reordered_blocks_are_named(history: list[Stored], settings: Settings, registry: Registry,
                                          tmp_path: Path) -> None:
    messages = [(s.subject, s.data) for s in history]
    i, j = history.index(blocks_of(history)[1]), history.index(blocks_of(history)[2])
    messages[i], messages[j] = messages[j], messages[i]
    async with tampered_copy(settings, tmp_path, messages, await source_heads(settings)) as url:
        report = await verify_copy(settings, registry, url)
    assert kinds(report) == {"reordered"}
    assert "block 1 is stored after block 2" in report.problems[0].detail


async def test_inserted_blocks_are_named(history: list[Stored], settings: Settings, registry: Registry,
                                         tmp_path: Path) -> None:
    """A replayed genuine block, and a block forged with another party's key."""
    blocks = blocks_of(history)
    forger = load_identity(settings.home, "police-met")
    head = await _head_before(settings, blocks[3])
    forged, _ = build_block([{"id": "x", "event": "shared", "message": "m"}], head, forger, "test-1", 0.0)
    messages = [(s.subject, s.data) for s in history]
    messages.insert(history.index(blocks[3]), ("sg.audit.test-1", forged))
    messages.append((blocks[0].subject, blocks[0].data))
    async with tampered_copy(settings, tmp_path, messages, await source_heads(settings)) as url:
        report = await verify_copy(settings, registry, url)
    assert "inserted" in kinds(report) and "signature" in kinds(report)
    assert any("block 0 appears twice" in p.detail for p in report.problems)
    assert any("not the broker's" in p.detail for p in report.problems)


async def _head_before(settings: Settings, block: Stored) -> object:
    from broker.audit.chain import Head

    claims = unverified(block.data)[1]
    return Head(claims["block"], claims["first"], claims["prev"], 0)


async def test_a_truncated_tail_is_caught_by_the_checkpoint(history: list[Stored], settings: Settings,
                                                            registry: Registry, tmp_path: Path) -> None:
    """Cutting the last blocks and the stream's checkpoints leaves a valid-looking chain; the
    signed checkpoint in the heads bucket (or a saved witness) shows the records are gone."""
    heads = await source_heads(settings)
    kept = [s for s in blocks_of(history)[:-2]]
    messages = [(s.subject, s.data) for s in kept]
    async with tampered_copy(settings, tmp_path, messages, heads) as url:
        report = await verify_copy(settings, registry, url)
    assert kinds(report) == {"truncated"}
    assert "the chain holds" in report.problems[0].detail

    # and without the heads bucket, a witness saved by an earlier verification
    rc, _, err = await sgb("audit", "verify", "--save-witness", str(tmp_path / "witness"), home=settings.home,
                           url=settings.nats.url)
    assert rc == 0, err
    async with tampered_copy(settings, tmp_path / "2", messages, []) as url:
        rc, out, _ = await sgb("audit", "verify", home=settings.home, url=url)
        assert rc == 0, "without any checkpoint the shortened chain looks whole"
        rc, out, _ = await sgb("audit", "verify", "--witness", str(tmp_path / "witness"), home=settings.home,
                               url=url)
    assert rc == 5 and "TAMPERED truncated" in out


async def test_two_writers_on_one_chain_never_fork_it(history: list[Stored], broker: Broker,
                                                      settings: Settings, registry: Registry) -> None:
    """A second writer with the same instance name (a misconfigured twin): the
    expected-last-subject-sequence guard makes the two take turns on one linear chain."""
    from broker.audit.chain import AuditWriter

    async with connected(settings, settings.nats.url or "", name="twin") as nc:
        js = jetstream(nc, settings)
        async with AuditWriter(js, broker.identity, settings.instance, settings.audit) as twin:
            await twin.append([{"id": "twin-1", "event": "test"}])
            await broker.audit.append([{"id": "main-1", "event": "test"}])  # its head is now stale
            await twin.append([{"id": "twin-2", "event": "test"}])
        head = await read_head(js, settings.instance)
        report = await verify_store(js, registry)
    assert report.ok, [str(p) for p in report.problems]
    assert report.chains[settings.instance].records == head.count


async def test_signed_export_verifies_offline_and_detects_edits(history: list[Stored], settings: Settings,
                                                                registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "audit-export.jsonl"
    rc, out, err = await sgb("audit", "export", "--since", "2000-01-01", "--until", "2100-01-01", str(path),
                             home=settings.home, url=settings.nats.url)
    assert rc == 0, err
    assert verify_export(path, registry).ok
    # offline: a home with nothing but the public registry
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "registry.json").write_bytes(settings.registry_path.read_bytes())
    rc, out, err = await sgb("audit", "verify", "--export", str(path), home=offline)
    assert rc == 0, out + err

    lines = path.read_bytes().splitlines(keepends=True)
    item = orjson.loads(lines[2])

    def change(claims: dict[str, object]) -> None:
        records = claims["records"]
        assert isinstance(records, list)
        records[0]["decision"] = "refuse"

    item["token"] = _edit(item["token"].encode(), change).decode()
    (tmp_path / "edited.jsonl").write_bytes(b"".join([*lines[:2], orjson.dumps(item) + b"\n", *lines[3:]]))
    report = verify_export(tmp_path / "edited.jsonl", registry)
    assert {"changed", "signature"} <= kinds(report)
    assert any(p.kind == "changed" and "does not match its signed manifest" in p.detail for p in report.problems)
    (tmp_path / "cut.jsonl").write_bytes(b"".join(lines[:-2]))
    assert "truncated" in kinds(verify_export(tmp_path / "cut.jsonl", registry))
    (tmp_path / "dropped.jsonl").write_bytes(b"".join(lines[:2] + lines[3:]))
    report = verify_export(tmp_path / "dropped.jsonl", registry)
    assert {"removed", "changed"} <= kinds(report)
    rc, out, _ = await sgb("audit", "verify", "--export", str(tmp_path / "dropped.jsonl"), home=offline)
    assert rc == 5


async def test_export_of_a_range_holds_only_that_range(history: list[Stored], settings: Settings,
                                                       registry: Registry, tmp_path: Path) -> None:
    identity = load_identity(settings.home, registry.broker_id)
    async with connected(settings, settings.nats.url or "", name="x") as nc:
        with (tmp_path / "empty.jsonl").open("wb") as out:
            lines = await export(jetstream(nc, settings), identity, out, since=0.0, until=1.0)
    assert lines == 1  # the header only
    assert verify_export(tmp_path / "empty.jsonl", registry).ok


def test_forged_block_needs_the_broker_key(settings: Settings, registry: Registry) -> None:
    """The block token type is pinned: a broker-signed wire message is not an audit block."""
    identity = load_identity(settings.home, registry.broker_id)
    token = sign({"instance": "x", "block": 0, "first": 0, "count": 0, "prev": GENESIS, "head": GENESIS,
                  "records": [], "at": "2026-01-01T00:00:00Z"}, identity, "sg+jwt")
    from broker.audit.verify import Verifier, broker_keys

    verifier = Verifier(broker_keys(registry))
    verifier.block(1, "sg.audit.x", token)
    assert "inserted" in kinds(verifier.finish())
    assert BLOCK_TYP != "sg+jwt"


@pytest.mark.parametrize("damage", ["edit", "truncate"])
async def test_damage_to_the_store_files_is_detected(damage: str, home: Path, registry: Registry,
                                                     tmp_path: Path) -> None:
    """Someone with the server's disk edits a byte of a stored block, or cuts the file short.
    nats-server drops what no longer matches its checksums, or never sees it; either way
    verification names the gap."""
    from dataclasses import replace

    from broker.audit.chain import AuditWriter
    from broker.transport.topology import ensure_topology
    from tests.conftest import make_settings

    store = tmp_path / "store"
    async with embedded_nats(store) as url:
        settings = make_settings(home, url, instance="disk")
        settings = replace(settings, audit=replace(settings.audit, checkpoint_interval=3600))
        async with connected(settings, url, name="w") as nc:
            js = jetstream(nc, settings)
            await ensure_topology(js, settings.streams, settings.pipeline, [])
            identity = load_identity(home, registry.broker_id)
            async with AuditWriter(js, identity, "disk", settings.audit) as writer:
                for i in range(4):
                    await writer.append([{"id": f"r{i}", "event": "shared", "decision": "share"}])
                await writer.checkpoint_now()  # to the stream and the heads bucket
    (block_file,) = (store / "jetstream").rglob("SG_AUDIT/msgs/*.blk")
    data = block_file.read_bytes()
    starts = [i for i in range(len(data)) if data.startswith(b"sg.audit.disk", i)]
    if damage == "edit":
        at = starts[2] + 300  # inside the third block's signed bytes
        data = data[:at] + (b"A" if data[at:at + 1] != b"A" else b"B") + data[at + 1:]
    else:
        data = data[:starts[3] - 30]  # the last block and the stream's checkpoint cut off
    block_file.write_bytes(data)
    async with embedded_nats(store) as url:
        settings = make_settings(home, url, instance="disk")
        async with connected(settings, url, name="v") as nc:
            report = await verify_store(jetstream(nc, settings), registry)
    expected = "removed" if damage == "edit" else "truncated"
    assert expected in kinds(report), [str(p) for p in report.problems]

