"""A message processed twice (the first broker stored its outputs and died before the ack) records
its decision twice under the same record ids, in two chains. The stream cannot drop the copy (it
comes in another block), so the verifier counts it as a repeat and the readers keep one; the same
id with another decision is a problem (issue 12, item 3)."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.js import JetStreamContext

from broker.audit.export import verify_store
from broker.audit.index import AuditIndex, Indexer
from broker.audit.reading import read_audit
from broker.audit.verify import broker_keys
from broker.config import Settings
from broker.pipeline.outcomes import Ingress
from broker.pipeline.service import running_broker
from broker.transport.connection import connected, jetstream
from broker.wire.ids import derived_id
from broker.wire.registry import Registry
from broker.wire.subjects import AUDIT, BROKER_CONSUMER, INGRESS
from tests.conftest import ClientFactory, make_settings
from tests.helpers import drain, eventually, referral, sharing

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def settings(home: object, nats_url: str) -> Settings:
    return make_settings(home, nats_url, ack_wait=1.0)  # type: ignore[arg-type]


async def _crash_after_storing(settings: Settings, js: JetStreamContext) -> str:
    """Broker A takes the message, stores every output, and dies before acknowledging it."""
    async with running_broker(settings, settings.nats.url or "") as a:
        a.pipeline.pause(True)
        sub = await js.pull_subscribe_bind(BROKER_CONSUMER, INGRESS)
        (msg,) = await sub.fetch(1, timeout=10)
        meta = msg.metadata
        ingress = Ingress("police-met", meta.sequence.stream, meta.timestamp.timestamp(),
                          (msg.headers or {})["Nats-Msg-Id"])
        outputs, outcome = await a.pipeline._process(ingress, msg.data, meta.num_delivered)
        assert outcome == "shared"
        await a.pipeline.store(outputs)
        await sub.unsubscribe()  # no ack: as if the process died here
        return ingress.msg_id


async def test_a_message_processed_again_after_a_crash_is_one_decision(
        settings: Settings, agency: ClientFactory, registry: Registry, tmp_path: object) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    jti = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
    async with connected(settings, settings.nats.url or "", name="test") as nc:
        js = jetstream(nc, settings)
        assert await _crash_after_storing(settings, js) == jti
        b_settings = make_settings(settings.home, settings.nats.url or "", instance="test-2", ack_wait=1.0)
        async with running_broker(b_settings, settings.nats.url or "") as b:
            await eventually(lambda: _processed(b.pipeline.counters.received), what="broker B to process it again")
        assert len(await drain(la, want=1)) == 1  # the delivery was stored once (same id, deduplicated)

        report = await verify_store(js, registry)
        assert report.ok, report.problems
        mine = {derived_id("audit", jti, "received"), derived_id("audit", jti, "la-camden")}
        assert report.repeats == len(mine) and set(report.chains) == {"test-1", "test-2"}
        assert report.summary()["distinctRecords"] == report.records - len(mine)
        listed = [r["id"] async for r in read_audit(js)]
        assert sorted(r for r in listed if r in mine) == sorted(mine)  # each once

        index = AuditIndex(tmp_path / "index.sqlite")  # type: ignore[operator]
        await index.open(stream_created=str((await js.stream_info(AUDIT)).created))
        try:
            await Indexer(js, index, broker_keys(registry)).catch_up()
            for rid in mine:
                assert await index.record(rid) is not None
            assert len([r for r in await index.trail(jti) if r["id"] in mine]) == len(mine)
        finally:
            index.close()


async def _processed(count: int) -> bool:
    return count >= 1


def test_the_same_record_id_with_another_decision_is_a_problem(home: Path) -> None:
    """Two signed chains record one id: the same decision is a repeat; another decision (a share
    where the first said refuse) is reported as conflicting, naming the record."""
    import time

    from broker.audit.chain import GENESIS, Head, build_block
    from broker.audit.verify import Verifier
    from broker.identity.keys import load_identity
    from broker.wire.catalogue import Catalogue

    identity = load_identity(home, "sg-broker")
    registry = Registry.load(home / "registry.json", Catalogue())
    record = {"v": 1, "id": "rec-1", "event": "shared", "message": "m-1", "recipient": "la-camden",
              "decision": "share", "rules": ["referral.to-local-authority"]}

    def chain(instance: str, *records: dict[str, object]) -> tuple[str, bytes]:
        token, _ = build_block([r | {"at": f"2026-11-29T10:0{len(instance)}:00Z", "instance": instance}
                                for r in records], Head(0, 0, GENESIS, 0), identity, instance, time.time())
        return f"sg.audit.{instance}", token

    def verify(*blocks: tuple[str, bytes]) -> Verifier:
        verifier = Verifier(broker_keys(registry))
        for seq, (subject, token) in enumerate(blocks, start=1):
            verifier.block(seq, subject, token)
        verifier.finish()
        return verifier

    same = verify(chain("a", record), chain("bb", record))
    assert same.report.ok and same.report.repeats == 1
    other = verify(chain("a", record), chain("bb", record | {"decision": "refuse", "event": "refused"}))
    (problem,) = other.report.problems
    assert problem.kind == "conflicting" and problem.instance == "bb" and problem.record == 0
