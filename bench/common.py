"""What the benchmark's parts share: the padded referral, percentiles, a temporary home with an
embedded nats-server, and broker processes started and stopped around a run (``bench.fuzz`` too)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from broker.config import NatsSettings, Settings
from broker.identity.devkeys import init_dev_keys
from broker.transport.natsserver import embedded_nats
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry

PAYLOAD_BYTES = 2048
EXAMPLES = Path(__file__).resolve().parent.parent / "schemas" / "examples"


def referral_payload() -> dict[str, Any]:
    """The example referral padded to about 2 KiB of JSON."""
    payload: dict[str, Any] = orjson.loads((EXAMPLES / "referral.example.json").read_bytes())
    base = len(orjson.dumps(payload))
    payload["concern"]["details"] += " " + "x" * max(0, PAYLOAD_BYTES - base - 1)
    return payload


def referral_sharing() -> dict[str, Any]:
    return orjson.loads((EXAMPLES / "referral.sharing.example.json").read_bytes())  # type: ignore[no-any-return]


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return {"p50_ms": round(q[49], 2), "p95_ms": round(q[94], 2), "p99_ms": round(q[98], 2)}


async def start_brokers(home: Path, url: str, count: int, *args: str) -> list[asyncio.subprocess.Process]:
    procs = []
    for i in range(count):
        instance = f"bench-{i}-{uuid.uuid4().hex[:6]}"
        env = os.environ | {"SGB_NATS_URL": url, "SGB_HOME": str(home), "SGB_INSTANCE": instance}
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broker.cli", "serve", "--log-level", "ERROR", *args, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL))
    return procs


async def stop_brokers(procs: list[asyncio.subprocess.Process]) -> None:
    for p in procs:
        p.terminate()
    await asyncio.gather(*(asyncio.wait_for(p.wait(), 30) for p in procs))


@contextlib.asynccontextmanager
async def environment() -> AsyncIterator[tuple[Path, str, Settings, Registry, Catalogue]]:
    """A temporary home with development keys and an embedded nats-server (``bench.fuzz`` uses it too)."""
    with tempfile.TemporaryDirectory(prefix="sgb-bench-") as tmp:
        home, catalogue = Path(tmp), Catalogue()
        init_dev_keys(home, home / "registry.json")
        async with embedded_nats(home / "nats") as url:
            settings = Settings(home=home, registry_path=home / "registry.json", instance="bench-load",
                                nats=NatsSettings(url=url, request_timeout=10))
            yield home, url, settings, Registry.load(home / "registry.json", catalogue), catalogue


