"""Shared helpers for the integration tests."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson

from adapters.sdk import AgencyClient, Delivery

EXAMPLES = Path(__file__).resolve().parent.parent / "schemas" / "examples"


def example(name: str) -> Any:
    return orjson.loads((EXAMPLES / name).read_bytes())


def referral() -> dict[str, Any]:
    return example("referral.example.json")  # type: ignore[no-any-return]


def sharing(typ: str = "referral") -> dict[str, Any]:
    return example(f"{typ}.sharing.example.json")  # type: ignore[no-any-return]


async def drain(client: AgencyClient, *, want: int, timeout: float = 10.0, ack: bool = True) -> list[Delivery]:
    """Collect at least ``want`` deliveries (acking them), then whatever else arrives within 0.3 s."""
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async for delivery, msg in client.fetch(idle=0.3):
            assert delivery is not None, "a delivery failed verification"
            got.append(delivery)
            if ack:
                await msg.ack_sync()
        if len(got) >= want:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"{client.agency}: wanted {want} deliveries, got {len(got)}")
