"""The broker asks witnesses to cosign its transparency checkpoints (issue 16, part 4): a real
broker on a real nats-server, and a real ``sgb witness`` served in-process over HTTP."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.js.errors import NotFoundError

from broker.audit import notes
from broker.audit.checkpoints import build_tlog_checkpoint, tlog_origin
from broker.audit.export import verify_store
from broker.audit.merkle import verify_consistency
from broker.config import Settings
from broker.errors import ConfigError
from broker.pipeline.service import Broker, running_broker
from broker.web.app import audit_service, make_app
from broker.web.readiness import readiness
from broker.wire.registry import Registry
from broker.wire.subjects import AUDIT, cosigned_subject
from broker.witness.service import Witness
from broker.witness.state import WitnessState
from broker.witness_settings import AuditWitness
from tests.helpers import eventually
from tests.support.casesystem import free_port
from tests.support.web import sign_in

pytestmark = pytest.mark.timeout(60)


def _records(start: int, count: int) -> list[dict[str, Any]]:
    return [{"id": f"w{i}", "event": "shared", "decision": "share", "message": f"wm{i}"}
            for i in range(start, start + count)]


def _log_keys(registry: Registry, origin: str) -> tuple[notes.VerifierKey, ...]:
    return tuple(notes.VerifierKey(origin, notes.ED25519, k.x) for k in registry.broker.keys if k.use == "sig")


@pytest.fixture
def cosigner() -> notes.Cosigner:
    return notes.Cosigner("witness.example.test/w1", Ed25519PrivateKey.generate())


@contextlib.asynccontextmanager
async def served_witness(path: Path, cosigner: notes.Cosigner, origin: str,
                         log_keys: tuple[notes.VerifierKey, ...]) -> AsyncIterator[tuple[Witness, str]]:
    async with WitnessState(path) as state:
        witness = Witness(cosigner, {origin: log_keys}, state)
        server = TestServer(witness.make_app())
        await server.start_server()
        try:
            yield witness, str(server.make_url("/"))
        finally:
            await server.close()


@contextlib.asynccontextmanager
async def witnessed_broker(settings: Settings, url: str, cosigner: notes.Cosigner, *,
                           interval: float = 30.0) -> AsyncIterator[Broker]:
    """A broker asking the witness at ``url``; checkpoints only when a test forces them (or each
    ``interval`` seconds when its chain grew)."""
    audit = dataclasses.replace(settings.audit, witnesses=(AuditWitness(url, str(cosigner.key)),),
                                tlog_checkpoint_records=10_000, checkpoint_interval=interval, witness_deadline=3.0)
    async with running_broker(dataclasses.replace(settings, audit=audit), settings.nats.url or "") as broker:
        yield broker


async def _cosigned(broker: Broker, size: int) -> notes.Note | None:
    try:
        msg = await broker.js.get_last_msg(AUDIT, cosigned_subject(broker.settings.instance))
    except NotFoundError:  # not there yet
        return None
    note = notes.parse_note(msg.data or b"")
    return note if notes.Checkpoint.parse(note.text).size == size else None


def _unused_url() -> str:
    return f"http://127.0.0.1:{free_port()}/"


async def _witness_forks(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(url + "readyz") as response:
        return response.status, await response.json()


async def test_each_checkpoint_is_cosigned_with_a_consistency_proof_from_the_last(
        settings: Settings, topology: None, registry: Registry, tmp_path: Path, cosigner: notes.Cosigner) -> None:
    origin = tlog_origin(settings.audit, settings.instance)
    async with served_witness(tmp_path / "w.sqlite", cosigner, origin, _log_keys(registry, origin)) as (
            witness, url), witnessed_broker(settings, url, cosigner) as broker:
        assert (await readiness(broker, None))["witnesses"].state == "ok"  # nothing to witness yet
        await broker.audit.append(_records(0, 5))
        await broker.audit.checkpoint_now()
        first = await eventually(lambda: _cosigned(broker, 5), what="the cosigned checkpoint of size 5")
        opened = notes.open_checkpoint(str(first).encode(), origin=origin, log_keys=_log_keys(registry, origin),
                                       witness_keys=[cosigner.key])
        assert opened.checkpoint.size == 5 and len(opened.cosignatures) == 1
        assert notes.verify_cosignature(cosigner.key, first.text, first.signatures[-1].line().rstrip("\n"))
        check = (await readiness(broker, None))["witnesses"]
        assert check.state == "ok" and "1 of 1" in check.detail
        # the second checkpoint: the witness checks a consistency proof from 5 (it refuses a wrong one)
        await broker.audit.append(_records(5, 7))
        await broker.audit.checkpoint_now()
        second = await eventually(lambda: _cosigned(broker, 12), what="the cosigned checkpoint of size 12")
        latest = notes.Checkpoint.parse(second.text)
        proof = broker.witnesses.tree.consistency_proof(5, 12)
        assert proof and verify_consistency(5, 12, proof, opened.checkpoint.root_hash, latest.root_hash)
        assert (await witness.state.latest(origin))[0] == 12  # type: ignore[index]
        assert (await readiness(broker, None))["witnesses"].state == "ok"
        assert (await broker.witnesses.witness(str(second).encode(), 12)).cosigned  # equal size and root: again
        # other readers skip the cosigned notes: the chain verifies as before
        report = await verify_store(broker.js, registry)
        assert report.ok, report.problems
    # a restarted broker rebuilds the tree from its chain; it does not know the witness's size (asks from 0,
    # is told 12 with a 409, and proves from 12)
    async with served_witness(tmp_path / "w.sqlite", cosigner, origin, _log_keys(registry, origin)) as (
            witness, url), witnessed_broker(settings, url, cosigner) as broker:
        await broker.audit.append(_records(12, 3))
        await broker.audit.checkpoint_now()
        await eventually(lambda: _cosigned(broker, 15), what="the cosigned checkpoint of size 15 after a restart")
        assert broker.witnesses.tree.size == 15
        assert (await witness.state.latest(origin))[0] == 15  # type: ignore[index]


async def test_a_witness_that_is_down_is_a_warning_after_the_grace_and_the_broker_keeps_working(
        settings: Settings, topology: None, cosigner: notes.Cosigner) -> None:
    async with witnessed_broker(settings, _unused_url(), cosigner) as broker:
        await broker.audit.append(_records(0, 3))
        await broker.audit.checkpoint_now()
        latest = await eventually(lambda: broker.witnesses.latest if broker.witnesses.latest
                                  and broker.witnesses.latest.done else None, what="the witness to be asked")
        assert latest.size == 3 and latest.cosigned == ()
        now = time.time()
        assert broker.witnesses.check(now).state == "ok"  # type: ignore[union-attr]  # within the grace
        late = broker.witnesses.check(now + 2 * broker.settings.audit.checkpoint_interval + 1)
        assert late is not None and late.state == "warn" and "0 of 1" in late.detail
        await broker.audit.append(_records(3, 2))  # and the broker keeps writing its log
        assert broker.audit.head.count == 5 and broker.audit.running and not broker.task.done()
        checks = await readiness(broker, None)
        assert all(c.state != "fail" for c in checks.values())


async def test_readyz_and_the_integrity_page_warn_when_the_quorum_is_missing(
        settings: Settings, topology: None, cosigner: notes.Cosigner,
        aiohttp_client: Callable[..., Awaitable[TestClient]]) -> None:  # type: ignore[type-arg]
    async with witnessed_broker(settings, _unused_url(), cosigner, interval=0.3) as broker, \
            audit_service(broker) as service:
        client = await aiohttp_client(make_app(broker, service))
        await broker.audit.append(_records(0, 2))  # the writer checkpoints within 0.3 s; grace 0.6 s

        async def warned() -> dict[str, Any] | None:
            r = await client.get("/readyz")
            body = await r.json()
            assert r.status == 200  # a warning keeps the broker ready
            return body if body["checks"]["witnesses"]["state"] == "warn" else None

        body = await eventually(warned, what="/readyz to warn on witnesses")
        assert "0 of 1" in body["checks"]["witnesses"]["detail"]
        await sign_in(client, settings, "operator")
        page = await (await client.get("/ig/integrity")).text()
        assert "Witnesses: <strong>warning" in page and "not been cosigned by enough independent witnesses" in page


async def test_no_witnesses_no_check(broker: Broker) -> None:
    assert "witnesses" not in await readiness(broker, None)
    assert not broker.witnesses.enabled


async def test_the_fork_a_rewritten_history_signed_with_the_brokers_own_key_is_refused_and_reported(
        settings: Settings, topology: None, registry: Registry, tmp_path: Path, cosigner: notes.Cosigner) -> None:
    origin = tlog_origin(settings.audit, settings.instance)
    async with served_witness(tmp_path / "w.sqlite", cosigner, origin, _log_keys(registry, origin)) as (
            witness, url), witnessed_broker(settings, url, cosigner) as broker:
        await broker.audit.append(_records(0, 8))
        await broker.audit.checkpoint_now()
        await eventually(lambda: _cosigned(broker, 8), what="the cosigned checkpoint of size 8")
        status, body = await _witness_forks(url)
        assert status == 200 and body["checks"]["forks"]["state"] == "ok"
        # the key holder signs another tree of size 8 with the broker's own key, sent the same way
        forged = build_tlog_checkpoint(origin, 8, bytes(32), broker.identity)
        with structlog.testing.capture_logs() as logs:
            result = await broker.witnesses.witness(forged, 8)
        assert result.cosigned == ()
        errors = [e for e in logs if e["log_level"] == "error" and e.get("witness")]  # the broker's, not the witness's
        assert len(errors) == 1 and "fork" in errors[0]["event"] and errors[0]["witness"] == "witness.example.test/w1"
        assert broker.metrics.witness_refusals.labels("witness.example.test/w1")._value.get() == 1
        status, body = await _witness_forks(url)
        assert status == 503 and body["checks"]["forks"]["state"] == "fail" and origin in body["checks"]["forks"][
            "detail"]
        assert await witness.state.forks() == {origin: 1}
        # nothing of the fork was stored as cosigned: the last cosigned note is still the honest one
        honest = await _cosigned(broker, 8)
        assert honest is not None and notes.Checkpoint.parse(honest.text).root_hash != bytes(32)


def test_witness_settings_are_checked_at_load(tmp_path: Path, cosigner: notes.Cosigner) -> None:
    config = tmp_path / "sgb.toml"
    key = str(cosigner.key)
    config.write_text(f'[audit]\n[[audit.witnesses]]\nurl = "http://w.example.test/"\nkey = "{key}"\n')
    loaded = Settings.from_env({}, config_file=config, home=tmp_path)
    assert loaded.audit.witnesses == (AuditWitness("http://w.example.test/", key),) and loaded.audit.quorum == 1
    log_key = str(notes.NoteSigner("w", Ed25519PrivateKey.generate()).key)
    for body, named in [
        (f'witness_quorum = 2\n[[audit.witnesses]]\nurl = "http://w/"\nkey = "{key}"\n', "witness_quorum"),
        (f'[[audit.witnesses]]\nurl = "ftp://w/"\nkey = "{key}"\n', "witnesses[0] url"),
        (f'[[audit.witnesses]]\nurl = "http://w/"\nkey = "{log_key}"\n', "witnesses[0] key"),
        ('[[audit.witnesses]]\nurl = "http://w/"\n', "witnesses[0] must be a table"),
        ('witnesses = "http://w/"\n', "witnesses must be a list"),
    ]:
        config.write_text("[audit]\n" + body)
        with pytest.raises(ConfigError, match=re.escape(named)):
            Settings.from_env({}, config_file=config, home=tmp_path)
    config.write_text('[audit]\nwitness_quorum = 0\n')
    assert Settings.from_env({}, config_file=config, home=tmp_path).audit.quorum == 0
