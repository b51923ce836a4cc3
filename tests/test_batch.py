"""A fetched batch is decided together (issue 15), but each message in it fares alone: a bug, a
replay or a refusal in one never holds up or spoils the others, and the batch is acked only
after everything it produced is stored."""

from __future__ import annotations

import uuid

import pytest

from broker.config import Settings
from broker.pipeline import loop
from broker.pipeline.service import running_broker
from tests.conftest import ClientFactory
from tests.helpers import drain, eventually, referral, sharing
from tests.support.pipeline import Buggy

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _short_naks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "_NAK_DELAY_MAX", 0.05)  # the redelivery comes at once


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
