"""One deadline scanner at a time: the instance holding the lease in SG_LEASES scans SG_DEADLINES,
the others only look at the lease; it passes on when the holder stops renewing or stops. And one
bad entry, or a bug, does not stop the deadlines. Real nats-server; time is the scanners' clock."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from nats.js import JetStreamContext

from broker import logs
from broker.config import Settings
from broker.pipeline import deadlines
from broker.pipeline.service import running_broker
from broker.transport.lease import Lease
from broker.wire.subjects import DEADLINES_BUCKET, LEASES_BUCKET
from tests.helpers import eventually

pytestmark = pytest.mark.timeout(60)
LENGTH = 10.0  # the lease, in the scanners' seconds
MARKER = "Zebedee-Okafor-9990001235"  # stands for personal data: never in a log


class Clock:
    """The scanners' time, moved by the test."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Instance:
    """A scanner as a broker instance runs it, with what it told both sides and its lease's changes."""

    def __init__(self, js: JetStreamContext, name: str, clock: Clock) -> None:
        self.told: list[str] = []
        self.changes: list[bool] = []
        self.bugs = 0
        self.lease = Lease(js, deadlines.LEASE, holder=name, length=LENGTH, clock=clock, on_change=self.changes.append)
        self.scanner = deadlines.Scanner(js, self.on_overdue, lease=self.lease, clock=clock, on_bug=self.bug)

    async def on_overdue(self, entry: Mapping[str, Any]) -> None:
        if entry.get("poison"):
            raise RuntimeError(f"a bug met on {MARKER}")
        self.told.append(entry["message"])

    def bug(self) -> None:
        self.bugs += 1


async def _open(js: JetStreamContext, message: str, due: float, **extra: Any) -> None:
    entry = deadlines.open_entry(message, "la-camden", {"message": message, "recipient": "la-camden", "due": due}
                                 | extra)
    await js.publish(entry.subject, entry.data)


async def _holder(js: JetStreamContext) -> str | None:
    last = await js.get_last_msg(f"KV_{LEASES_BUCKET}", f"$KV.{LEASES_BUCKET}.{deadlines.LEASE}")
    return orjson.loads(last.data)["holder"] if last.data else None


async def test_only_the_holder_reads_the_entries(js: JetStreamContext) -> None:
    clock = Clock()
    for n in range(3):
        await _open(js, f"m{n}", clock.now - 60)
    a, b = Instance(js, "broker-a", clock), Instance(js, "broker-b", clock)
    assert await a.scanner.step() == 3
    assert await b.scanner.step() is None
    clock.now += LENGTH / 2
    await _open(js, "m3", clock.now - 1)
    assert await b.scanner.step() is None
    assert await a.scanner.step() == 1  # the holder renews, and reads only the new entry
    assert (a.scanner.reads, b.scanner.reads) == (4, 0)
    assert (a.told, b.told) == (["m0", "m1", "m2", "m3"], [])
    assert (a.changes, b.changes) == ([True], [])
    assert await _holder(js) == "broker-a"


async def test_an_expired_lease_is_taken_over_by_one(js: JetStreamContext) -> None:
    clock = Clock()
    a, b, c = (Instance(js, f"broker-{x}", clock) for x in "abc")
    await _open(js, "m0", clock.now + 1.5 * LENGTH)
    assert await a.scanner.step() == 0
    clock.now += LENGTH - 1
    assert await a.scanner.step() == 0  # renewed: another LENGTH from now
    clock.now += LENGTH - 1
    assert await b.scanner.step() is None  # it would have expired had it not been renewed
    clock.now += 2  # the holder stopped renewing (hung, or cut off from NATS) and its lease ran out
    assert [await b.scanner.step(), await c.scanner.step()] == [1, None]  # the first to look takes it
    assert b.told == ["m0"] and await _holder(js) == "broker-b"
    assert await a.scanner.step() is None  # its renewal fails: it has been taken over
    assert (a.changes, b.changes, c.changes) == ([True, False], [True], [])
    await _open(js, "m1", clock.now - 1)
    assert await b.scanner.step() == 1 and await a.scanner.step() is None
    assert (a.scanner.reads, c.scanner.reads) == (1, 0) and a.told == []


async def test_a_stopping_holder_hands_over_at_once(js: JetStreamContext) -> None:
    clock = Clock()
    a, b = Instance(js, "broker-a", clock), Instance(js, "broker-b", clock)
    stop = asyncio.Event()
    running = asyncio.create_task(a.scanner.run(interval=0.05, stop=stop))
    await eventually(lambda: a.lease.held, what="the first instance to take the lease")
    assert await b.scanner.step() is None
    stop.set()
    await running
    assert a.changes == [True, False] and await _holder(js) is None
    await _open(js, "m0", clock.now - 1)
    assert await b.scanner.step() == 1  # the clock has not moved: released, not expired


async def test_a_bad_entry_is_skipped_and_the_pass_goes_on(js: JetStreamContext) -> None:
    out = io.StringIO()
    logs.configure(level="INFO", json=True, stream=out)
    clock = Clock()
    await js.publish(f"$KV.{DEADLINES_BUCKET}.m1.la-camden", f'{{"state": "open", "child": "{MARKER}'.encode())
    await _open(js, "m2", MARKER)  # type: ignore[arg-type]  # a due that is not a time
    await _open(js, "m3", clock.now - 1, poison=True)  # the handler meets a bug on it
    await _open(js, "m0", clock.now - 1)
    await _open(js, "m4", clock.now - 1)
    a = Instance(js, "broker-a", clock)
    assert await a.scanner.step() == 2
    assert a.told == ["m0", "m4"] and a.bugs == 3
    assert await a.scanner.step() == 0 and (a.bugs, a.scanner.reads) == (3, 5)  # skipped, not read again
    text = out.getvalue()
    assert text.count("deadline entry skipped (a bug)") == 3 and "m3.la-camden" in text
    assert MARKER not in text


async def test_the_scanner_survives_a_bug_outside_any_entry(js: JetStreamContext) -> None:
    clock, calls = Clock(), [0]

    def breaks_once() -> float:
        calls[0] += 1
        if calls[0] == 1:
            raise ArithmeticError("a bug of the scanner's own")
        return clock()

    a = Instance(js, "broker-a", clock)
    a.scanner = deadlines.Scanner(js, a.on_overdue, lease=Lease(js, deadlines.LEASE, holder="broker-a",
                                                                length=LENGTH, clock=breaks_once),
                                  clock=clock, on_bug=a.bug)
    await _open(js, "m0", clock.now - 1)
    stop = asyncio.Event()
    running = asyncio.create_task(a.scanner.run(interval=0.05, stop=stop))
    try:
        await eventually(lambda: a.told == ["m0"], what="the next pass after the bug")
        assert a.bugs == 1
    finally:
        stop.set()
        await running


async def test_a_broker_scans_under_the_lease_and_gives_it_up_when_it_stops(settings: Settings,
                                                                            js: JetStreamContext) -> None:
    async with running_broker(settings, settings.nats.url or "") as broker:
        def leading() -> bool:
            return broker.metrics.registry.get_sample_value("sgb_deadline_scanner_leader") == 1.0

        await eventually(leading, what="the only broker to hold the deadline lease")
        assert await _holder(js) == settings.instance
    assert await _holder(js) is None


async def test_an_instance_that_lost_its_own_answer_takes_its_lease_back_at_once(js: JetStreamContext) -> None:
    """A renewal stored whose answer was lost, or the instance restarted under its name: the lease
    in the bucket is its own, and it holds it again without waiting for it to expire."""
    clock = Clock()
    a, b = Instance(js, "broker-a", clock), Instance(js, "broker-b", clock)
    assert await a.scanner.step() == 0
    restarted = Instance(js, "broker-a", clock)  # knows no revision: as after a lost answer or a restart
    assert await restarted.scanner.step() == 0 and restarted.lease.held
    assert await b.scanner.step() is None and await _holder(js) == "broker-a"
