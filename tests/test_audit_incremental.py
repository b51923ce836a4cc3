"""The incremental integrity check (issue 16, item 3): it continues from the last transparency
checkpoint it trusted, reads only what was stored after it, and names tampering after that point
as the full check does; tampering before it is the full check's to find. A real nats-server;
tampering in a copy, as in tests/test_audit_integrity.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from broker.audit.chain import AuditWriter, Stored, is_block
from broker.audit.checkpoints import build_tlog_checkpoint, tlog_origin
from broker.audit.export import verify_store
from broker.audit.incremental import TRUSTED, verify_incremental
from broker.audit.index import AuditIndex
from broker.config import AuditSettings, Settings
from broker.identity.keys import Identity
from broker.transport.connection import connected, jetstream
from broker.web.integrity import run_incremental
from broker.web.vocabulary import TAMPERED, VERIFIED
from broker.wire.registry import Registry
from broker.wire.subjects import tlog_subject
from tests.test_audit_integrity import _edit, kinds, tampered_copy, verify_copy
from tests.test_audit_tree import _records, _stored

pytestmark = pytest.mark.timeout(120)
INSTANCE = "inc"
FIRST, MORE, PER_BLOCK = 3000, 200, 100
SETTINGS = AuditSettings(checkpoint_interval=3600)  # a transparency checkpoint every 1000 records, and on close


async def _write(js: JetStreamContext, identity: Identity, start: int, count: int) -> None:
    async with AuditWriter(js, identity, INSTANCE, SETTINGS) as writer:  # closing writes a checkpoint
        for i in range(start, start + count, PER_BLOCK):
            await writer.append(_records(i, PER_BLOCK))


@pytest.fixture
async def two_runs(js: JetStreamContext, identity: Identity,
                   registry: Registry) -> tuple[dict[str, Any], dict[str, Any], list[Stored]]:
    """The trusted points after a first run over FIRST records and a second after MORE."""
    await _write(js, identity, 0, FIRST)
    first = await verify_incremental(js, registry, {})
    assert first.report.ok, [str(p) for p in first.report.problems]
    assert first.read == FIRST  # the first run reads everything
    assert first.trusted[INSTANCE]["size"] == FIRST
    await _write(js, identity, FIRST, MORE)
    second = await verify_incremental(js, registry, first.trusted)
    assert second.report.ok, [str(p) for p in second.report.problems]
    assert second.trusted[INSTANCE]["size"] == FIRST + MORE
    assert second.read == MORE  # only the new blocks: the measure of issue 16 item 3
    full = await verify_store(js, registry)
    assert full.ok and full.records == FIRST + MORE  # the full check reads all of them again
    return first.trusted, second.trusted, await _stored(js)


async def test_a_second_run_reads_only_the_new_records_and_trusts_the_new_checkpoint(
        two_runs: tuple[dict[str, Any], dict[str, Any], list[Stored]], js: JetStreamContext,
        registry: Registry) -> None:
    _, trusted, _ = two_runs
    third = await verify_incremental(js, registry, trusted)  # nothing new: nothing read, trust stays
    assert third.report.ok and third.read == 0 and third.trusted == trusted


async def _with_a_changed_record(stored: list[Stored], target: Stored, trusted: dict[str, Any], settings: Settings,
                                 registry: Registry, tmp_path: Path) -> tuple[Any, Any]:
    """The incremental check from ``trusted`` and the full check, on a copy of the stream in which
    one record of block ``target`` says another decision."""
    def changed(claims: dict[str, Any]) -> None:
        claims["records"][5]["decision"] = "withhold"

    messages = [(s.subject, _edit(s.data, changed) if s is target else s.data) for s in stored]
    async with tampered_copy(settings, tmp_path, messages, []) as url:
        full = await verify_copy(settings, registry, url)
        async with connected(settings, url, name="incremental") as nc:
            return await verify_incremental(jetstream(nc, settings), registry, trusted), full


async def test_tampering_after_the_trusted_point_is_named_and_trust_does_not_move(
        two_runs: tuple[dict[str, Any], dict[str, Any], list[Stored]], settings: Settings, registry: Registry,
        tmp_path: Path) -> None:
    trusted, _, stored = two_runs
    blocks = [s for s in stored if is_block(s.subject)]
    target = blocks[-1]  # a block of the records after the first trusted checkpoint

    result, full = await _with_a_changed_record(stored, target, trusted, settings, registry, tmp_path)
    assert not result.report.ok and "changed" in kinds(result.report)
    assert kinds(result.report) == kinds(full), ([str(p) for p in result.report.problems],
                                                [str(p) for p in full.problems])
    assert result.read == MORE and result.trusted == {}  # read only the new blocks; trusts nothing new


async def test_tampering_before_the_trusted_point_is_left_to_the_full_check(
        two_runs: tuple[dict[str, Any], dict[str, Any], list[Stored]], settings: Settings, registry: Registry,
        tmp_path: Path) -> None:
    _, trusted, stored = two_runs
    target = next(s for s in stored if is_block(s.subject))

    result, full = await _with_a_changed_record(stored, target, trusted, settings, registry, tmp_path)
    assert result.report.ok and result.read == 0  # that is what trusting the checkpoint means
    assert "changed" in kinds(full)


async def test_a_forged_checkpoint_is_a_fork_and_trust_does_not_move(
        two_runs: tuple[dict[str, Any], dict[str, Any], list[Stored]], settings: Settings, registry: Registry,
        identity: Identity, tmp_path: Path) -> None:
    trusted, _, stored = two_runs
    forged = build_tlog_checkpoint(tlog_origin(SETTINGS, INSTANCE), FIRST + MORE, b"\x01" * 32, identity)
    messages = [(s.subject, s.data) for s in stored] + [(tlog_subject(INSTANCE), forged)]
    async with tampered_copy(settings, tmp_path, messages, []) as url:
        full = await verify_copy(settings, registry, url)
        async with connected(settings, url, name="incremental") as nc:
            result = await verify_incremental(jetstream(nc, settings), registry, trusted)
    assert kinds(result.report) == kinds(full) == {"forked"}, [str(p) for p in result.report.problems]
    assert any(f"the transparency checkpoint of size {FIRST + MORE} has another root" in p.detail
               for p in result.report.problems)
    assert result.trusted == {}


async def test_the_badge_check_keeps_its_trusted_point_in_the_index(
        js: JetStreamContext, identity: Identity, registry: Registry, tmp_path: Path) -> None:
    await _write(js, identity, 0, 2 * PER_BLOCK)
    index = AuditIndex(tmp_path / "index.sqlite3")
    await index.open(stream_created="test")
    try:
        status = await run_incremental(js, registry, index)
        assert status["state"] == VERIFIED and status["recordsRead"] == 2 * PER_BLOCK
        assert (await index.meta(TRUSTED))[INSTANCE]["size"] == 2 * PER_BLOCK
        await _write(js, identity, 2 * PER_BLOCK, PER_BLOCK)
        status = await run_incremental(js, registry, index)
        assert status["state"] == VERIFIED and status["recordsRead"] == PER_BLOCK
        assert status["from"][INSTANCE]["size"] == 2 * PER_BLOCK
        assert status["trusted"][INSTANCE]["size"] == 3 * PER_BLOCK
        await index.set_meta("integrity", {"state": TAMPERED, "scope": "full", "problems": [{"kind": "changed"}]})
        status = await run_incremental(js, registry, index)  # a full check's finding stays on the badge
        assert status["state"] == TAMPERED and status["recordsRead"] == 0
    finally:
        index.close()
