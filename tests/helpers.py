"""Shared helpers for the integration tests."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson

from adapters.sdk import AgencyClient, Delivery

T = TypeVar("T")
EXAMPLES = Path(__file__).resolve().parent.parent / "schemas" / "examples"


def example(name: str) -> Any:
    return orjson.loads((EXAMPLES / name).read_bytes())


def referral() -> dict[str, Any]:
    return example("referral.example.json")  # type: ignore[no-any-return]


def sharing(typ: str = "referral") -> dict[str, Any]:
    return example(f"{typ}.sharing.example.json")  # type: ignore[no-any-return]


async def eventually(probe: Callable[[], Awaitable[T | None] | T | None], *, what: str, timeout: float = 10.0,
                     every: float = 0.05) -> T:
    """Poll ``probe`` (a coroutine function, or a plain function) until it returns something other
    than None (or False), within ``timeout``; fail naming ``what`` otherwise. The one way the tests
    wait for something to happen."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if inspect.isawaitable(result):
            result = await result
        if result is not None and result is not False:
            return result  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)


async def drain(client: AgencyClient, *, want: int, timeout: float = 10.0, ack: bool = True) -> list[Delivery]:
    """Collect at least ``want`` deliveries (acking them), then whatever else arrives within 0.3 s."""
    got: list[Delivery] = []

    async def enough() -> bool:
        async for delivery, msg in client.fetch(idle=0.3):
            assert delivery is not None, "a delivery failed verification"
            got.append(delivery)
            if ack:  # confirmed, so what a test reads next sees it; a loaded server may take seconds
                await msg.ack_sync(timeout=10)
        return len(got) >= want

    await eventually(enough, what=f"{client.agency} to receive {want} deliveries", timeout=timeout)
    return got


async def counted(broker: Any, received: int) -> None:
    """Until ``broker`` has counted ``received`` messages: an outcome or a delivery can reach an
    agency before the broker's own count of it, which follows JetStream's acknowledgement."""
    await eventually(lambda: broker.pipeline.counters.received >= received,
                     what=f"the broker to count {received} messages")
    assert broker.pipeline.counters.received == received
