"""What goes wrong is told apart: what the NATS client raises becomes ``TransportError`` at one
boundary and is retried as NATS being away; a bug is reported as a bug, never as a transport
failure, and still loses no message (nak'ed, then refused as ``internal`` from its fifth delivery)."""

from __future__ import annotations

import pytest
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError

from broker.config import Settings
from broker.errors import TransportError
from broker.pipeline.batch import INTERNAL_GIVE_UP
from broker.pipeline.service import running_broker
from broker.transport.connection import connected, jetstream
from broker.transport.errors import describe, nats_failures, quietly
from tests.conftest import ClientFactory
from tests.helpers import drain, eventually, referral, sharing
from tests.support.pipeline import Buggy as _Buggy
from tests.support.pipeline import queued

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("short_naks")]  # redeliveries come at once


@pytest.mark.parametrize("raised", [NatsTimeoutError(), TimeoutError(), ConnectionClosedError(), NoRespondersError(),
                                    ConnectionResetError(), APIError(code=503, err_code=10008, description="down")])
def test_what_the_nats_client_raises_becomes_a_transport_error(raised: BaseException) -> None:
    with pytest.raises(TransportError, match=r"^the replay store: ") as caught, nats_failures("the replay store"):
        raise raised
    assert caught.value.__cause__ is raised


@pytest.mark.parametrize("raised", [KeyError("jti"), TypeError("bug"), TransportError("already ours")])
def test_anything_else_passes_the_boundary_as_it_is(raised: BaseException) -> None:
    with pytest.raises(type(raised)) as caught, nats_failures("the replay store"):
        raise raised
    assert caught.value is raised


def test_best_effort_calls_ignore_only_nats_failures() -> None:
    with quietly():
        raise NatsTimeoutError
    with pytest.raises(KeyError), quietly():
        raise KeyError("a bug is never swallowed")
    assert describe(APIError(code=400, err_code=10071, description="wrong last sequence")) == \
        "APIError 10071 (wrong last sequence)"


async def test_a_bug_is_not_a_transport_failure_and_the_message_survives_it(
        settings: Settings, topology: None, agency: ClientFactory) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    buggy = _Buggy(times=2)
    async with running_broker(settings, settings.nats.url or "", policy=buggy) as broker:
        jti = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
        assert (await police.wait_outcome(jti, timeout=10)).payload["status"] == "routed"
        (delivery,) = await drain(la, want=1)
        counters, metrics = broker.pipeline.counters, broker.pipeline.metrics
    assert delivery.claims["origin"]["jti"] == jti and buggy.calls == 3
    assert counters.internal == 2 and counters.retried == 0
    assert metrics.registry.get_sample_value("sgb_internal_errors_total") == 2
    assert metrics.registry.get_sample_value("sgb_messages_retried_total") == 0


async def test_a_message_that_always_meets_a_bug_is_refused_as_internal_at_its_fifth_delivery(
        settings: Settings, topology: None, agency: ClientFactory) -> None:
    police = await agency("police-met")
    await agency("la-camden")  # its queue exists, so a delivery to it would be stored
    buggy = _Buggy(times=1000)
    async with running_broker(settings, settings.nats.url or "", policy=buggy) as broker:
        jti = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
        outcome = await police.wait_outcome(jti, timeout=30)  # five deliveries on a loaded machine
        counters = broker.pipeline.counters
    assert outcome.type == "rejection" and outcome.payload["code"] == "internal"
    assert buggy.calls == INTERNAL_GIVE_UP
    assert counters.internal == INTERNAL_GIVE_UP and counters.retried == 0
    assert counters.rejected == {"internal": 1}
    async with connected(settings, settings.nats.url or "", name="check") as nc:  # the broker has stopped:
        assert await queued(jetstream(nc, settings), "la-camden") == 0  # all it made is stored, and none for la


async def test_a_transport_failure_is_retried_as_one(settings: Settings, topology: None,
                                                      agency: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    async with running_broker(settings, settings.nats.url or "") as broker:
        claim_all = broker.pipeline._decider.replay.claim_all
        failures = [NatsTimeoutError()]

        async def flaky(claims: list[tuple[str, int]]) -> list[BaseException | None]:
            if failures:  # the replay store times out for the whole first batch
                try:
                    with nats_failures("the replay store"):
                        raise failures.pop()
                except TransportError as exc:
                    return [exc for _ in claims]
            return await claim_all(claims)

        monkeypatch.setattr(broker.pipeline._decider.replay, "claim_all", flaky)
        jti = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
        assert (await police.wait_outcome(jti, timeout=10)).payload["status"] == "routed"
        await drain(la, want=1)

        async def counted() -> bool:
            return broker.pipeline.counters.received == 1

        await eventually(counted, what="the message counted")
        counters = broker.pipeline.counters
    assert counters.retried == 1 and counters.internal == 0 and counters.shared == 1
