"""A fetched batch is decided together (issue 15), but each message in it fares alone: a bug, a
replay or a refusal in one never holds up or spoils the others, and the batch is acked only
after everything it produced is stored."""

from __future__ import annotations

import uuid

import pytest

from broker.config import Settings
from broker.pipeline.batch import Work
from broker.pipeline.outcomes import Ingress
from broker.pipeline.service import running_broker
from broker.transport.publisher import Outgoing
from tests.conftest import ClientFactory, make_settings
from tests.helpers import drain, eventually, referral, sharing
from tests.support.pipeline import Buggy, queued

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("short_naks")]  # redeliveries come at once


async def test_one_message_s_bug_replay_or_refusal_does_not_hold_up_its_batch(
        settings: Settings, topology: None, agency: ClientFactory) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    buggy = Buggy(times=1)  # the batch's first decision meets a bug
    async with running_broker(settings, settings.nats.url or "", policy=buggy) as broker:
        broker.pipeline.pause(True)  # the batch gathers in the stream
        sent = [police.build(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
                for _ in range(4)]
        for jti, token in sent:
            await police.publish(token, jti)
        replayed_jti, replayed_token = sent[1]
        await police.publish(replayed_token, str(uuid.uuid4()))  # the same bytes again, in the same batch
        refused_jti, refused = police.build(typ="referral", to=["police-met"], payload=referral(), sharing=sharing())
        await police.publish(refused, refused_jti)  # its own recipient: refused
        broker.pipeline.pause(False)

        async def all_counted() -> bool:
            return broker.pipeline.counters.received == 6
        await eventually(all_counted, what="every message of the batch decided")
        counters = broker.pipeline.counters
        assert counters.internal == 1 and counters.shared == 4
        assert counters.rejected == {"replayed": 1, "not-permitted": 1}
        assert broker.pipeline.in_flight == 0
    delivered = await drain(la, want=4)
    assert sorted(d.claims["origin"]["jti"] for d in delivered) == sorted(jti for jti, _ in sent)
    outcomes = await drain(police, want=6)
    by_message: dict[str, list[str]] = {}
    for outcome in outcomes:
        about = outcome.claims.get("re")
        by_message.setdefault(about, []).append(outcome.payload.get("code") or outcome.payload["status"])
    assert sorted(by_message[replayed_jti]) == ["replayed", "routed"]
    assert by_message[refused_jti] == ["not-permitted"]
    assert all(by_message[jti] == ["routed"] for jti, _ in sent if jti != replayed_jti)


async def test_an_output_that_is_never_stored_holds_back_its_own_message_only(
        settings: Settings, topology: None) -> None:
    quick = make_settings(settings.home, settings.nats.url or "", publish_deadline=0.2, publish_attempts=2)
    async with running_broker(quick, settings.nats.url or "") as broker:
        def work(seq: int, subject: str) -> Work:
            done = Work(Ingress("police-met", seq, 0.0, f"m{seq}"), b"", 1)
            done.outputs, done.outcome = [Outgoing(subject, b"x", f"test-{seq}")], "shared"
            return done

        fine, refused = work(1, "sg.out.la-camden"), work(2, "nowhere.x")  # no stream takes the second
        await broker.pipeline._store_batch([fine, refused])
        assert (fine.retry, refused.retry) == ("", "transport")
        assert await queued(broker.js, "la-camden") == 1
